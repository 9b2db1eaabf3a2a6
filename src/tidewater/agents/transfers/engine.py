"""The agent's transfer engine: lanes per remote, batches, bounded concurrency, retries.

Every item of every task's stage goes to the *lane* of its remote (one per
``scheme://user@host:port``: one SFTP server, one Globus endpoint, the local
filesystem). A lane hands its backend whatever has queued up, up to
``max_batch`` items at once, with at most :data:`BATCHES_PER_LANE` batches in
flight: when idle an item starts at once, under load items share
connections and Globus tasks.

An item that fails with a retryable error goes back to its lane after
``retry_delay`` seconds, doubling each time up to :data:`MAX_DELAY`, at most
``retries`` more times. Each item is reported as soon as it has succeeded
or failed for good (so the user sees a stage of many items progress); an
item that failed for good ends its stage: what has not started is dropped,
since the task fails anyway.

Paths on the site are confined to the task's work directory (and, for a
parent's output, to the work root); anything leading outside is refused
before a byte moves.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ... import proto as P
from ...errors import TransferError
from ...paths import PathEscape, confine
from . import make_backend
from .base import Backend, Item, Moved, Remote, discard, discard_stale_partials, parse_url

if TYPE_CHECKING:
    from ..settings import SiteSettings

log = logging.getLogger("tidewater.agent.transfers")

BATCHES_PER_LANE = 2
MAX_DELAY = 60.0


@dataclass
class _Job:
    """One item of a stage, through its attempts."""

    stage: _Stage
    spec: P.StageItem
    item: Item | None
    attempts: int = 0
    result: P.ItemResult | None = None


@dataclass
class _Stage:
    stage: P.Stage
    jobs: list[_Job] = field(default_factory=list)
    cancelled: bool = False
    left: int = 0


class Engine:
    """``await tg.start(engine.run)``; then :meth:`submit` stages, results go to ``report``."""

    def __init__(
        self, settings: SiteSettings, report: Callable[[P.StageResult], None],
        backend_factory: Callable[[str, SiteSettings], Backend] = make_backend,
    ) -> None:
        self.s = settings
        self.t = settings.transfers
        self.root = settings.path(settings.site.work_root)
        self.report = report
        self._factory = backend_factory
        self.backends: dict[str, Backend] = {}
        self.stages: dict[tuple[int, str], _Stage] = {}
        self._lanes: dict[str, tuple[MemoryObjectSendStream[_Job], anyio.Semaphore]] = {}
        self._tg: TaskGroup | None = None
        self.batches = 0  # batches handed to backends (for tests and metrics)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                task_status.started()
                await anyio.sleep_forever()
        finally:
            for send, _slots in self._lanes.values():
                send.close()
            self._lanes.clear()
            with anyio.CancelScope(shield=True):
                for b in self.backends.values():
                    try:
                        await b.aclose()
                    except Exception as exc:  # closing must not hide why we stopped
                        log.debug("closing a transfer backend: %s", exc)

    # ------------------------------------------------------------------ intake

    def submit(self, stage: P.Stage) -> None:
        """Start moving a stage, unless the same stage is already under way."""
        key = (stage.task_id, stage.direction)
        if key in self.stages:
            return
        st = _Stage(stage)
        self.stages[key] = st
        for spec in stage.items:
            job = _Job(st, spec, None)
            st.jobs.append(job)
            try:
                job.item = self._item(stage, spec)
            except TransferError as exc:
                job.result = P.ItemResult(path=spec.path, ok=False, error=exc.message,
                                          attempts=0)
        refused = [j.result for j in st.jobs if j.result is not None]
        if refused:
            self._report(st, refused)
            self._finish(st)
            return
        st.left = len(st.jobs)
        for job in st.jobs:
            if job.result is None:
                self._enqueue(job)

    def cancel(self, task_id: int) -> None:
        """Drop a task's transfers that have not started; send no result for them."""
        for key in [k for k in self.stages if k[0] == task_id]:
            self.stages.pop(key).cancelled = True

    def _item(self, stage: P.Stage, spec: P.StageItem) -> Item:
        try:
            wd = confine(self.root, stage.workdir)
            local = confine(wd, spec.path)
        except PathEscape as exc:
            raise TransferError(spec.path, f"refused: {exc}", retryable=False) from None
        if spec.url:
            remote = parse_url(spec.url)
        elif spec.site_path:
            try:
                src = confine(self.root, spec.site_path)
            except PathEscape as exc:
                raise TransferError(spec.site_path, f"refused: {exc}", retryable=False) from None
            remote = Remote(url=src.as_uri(), scheme="file", path=str(src))
        else:
            raise TransferError(spec.path, "the item names no source or destination",
                                retryable=False)
        return Item(stage.direction, remote, local, spec.sha256)

    # ------------------------------------------------------------------ lanes

    def _enqueue(self, job: _Job) -> None:
        assert job.item is not None and self._tg is not None
        key = job.item.remote.key
        lane = self._lanes.get(key)
        if lane is None:
            send, recv = anyio.create_memory_object_stream[_Job](max_buffer_size=1 << 30)
            lane = (send, anyio.Semaphore(BATCHES_PER_LANE))
            self._lanes[key] = lane
            self._tg.start_soon(self._lane, job.item.remote.scheme, recv, lane[1])
        lane[0].send_nowait(job)

    async def _lane(self, scheme: str, recv: MemoryObjectReceiveStream[_Job],
                    slots: anyio.Semaphore) -> None:
        assert self._tg is not None
        async with recv:
            async for first in recv:
                batch = [first]
                while len(batch) < max(1, self.t.max_batch):
                    try:
                        batch.append(recv.receive_nowait())
                    except anyio.WouldBlock:
                        break
                batch = [j for j in batch if not j.stage.cancelled]
                if not batch:
                    continue
                await slots.acquire()
                self._tg.start_soon(self._run_batch, scheme, batch, slots)

    async def _run_batch(self, scheme: str, batch: list[_Job], slots: anyio.Semaphore) -> None:
        try:
            try:
                backend = self.backends.get(scheme)
                if backend is None:
                    backend = self.backends[scheme] = self._factory(scheme, self.s)
                for j in batch:
                    j.attempts += 1
                fresh = [j.item.local for j in batch
                         if j.attempts == 1 and j.item is not None and j.item.direction == "in"]
                if fresh:
                    await anyio.to_thread.run_sync(_discard_stale, fresh)
                self.batches += 1
                items = [j.item for j in batch if j.item is not None]
                results: list[Moved | TransferError] = await backend.run(items)
            except TransferError as exc:
                results = [exc] * len(batch)
            except Exception as exc:  # a backend bug must fail items, not the agent
                log.exception("transfer backend %s failed", scheme)
                results = [TransferError(scheme, f"internal error: {exc!r}")] * len(batch)
        finally:
            slots.release()
        for job, res in zip(batch, results, strict=True):
            self._settle(job, res)

    def _settle(self, job: _Job, res: Moved | TransferError) -> None:
        assert job.item is not None
        if isinstance(res, Moved) and job.item.sha256 and res.sha256 and (
            res.sha256 != job.item.sha256
        ):
            if job.item.direction == "in":
                discard(job.item.local)
            res = TransferError(job.item.remote.url, f"SHA-256 mismatch: expected "
                                f"{job.item.sha256}, got {res.sha256}")
        if job.stage.cancelled:
            return
        if isinstance(res, Moved):
            job.result = P.ItemResult(path=job.spec.path, ok=True, size=res.size,
                                      sha256=res.sha256, attempts=job.attempts)
        elif res.retryable and job.attempts <= self.t.retries:
            delay = min(MAX_DELAY, self.t.retry_delay * 2 ** (job.attempts - 1))
            log.info("transfer %s (%s) failed, retrying in %.1fs: %s", job.spec.path,
                     job.item.remote.url, delay, res.message)
            assert self._tg is not None
            self._tg.start_soon(self._retry_later, job, delay)
            return
        else:
            suffix = f" (after {job.attempts} attempts)" if job.attempts > 1 else ""
            job.result = P.ItemResult(path=job.spec.path, ok=False,
                                      error=f"{res.message}{suffix}", attempts=job.attempts)
        self._report(job.stage, [job.result])
        job.stage.left -= 1
        if job.stage.left == 0 or not job.result.ok:
            self._finish(job.stage)

    async def _retry_later(self, job: _Job, delay: float) -> None:
        await anyio.sleep(delay)
        if not job.stage.cancelled:
            self._enqueue(job)

    def _report(self, st: _Stage, items: list[P.ItemResult]) -> None:
        self.report(P.StageResult(task_id=st.stage.task_id, direction=st.stage.direction,
                                  items=items))

    def _finish(self, st: _Stage) -> None:
        """The stage is over: all its items moved, or one failed (the rest are dropped)."""
        st.cancelled = True
        key = (st.stage.task_id, st.stage.direction)
        if self.stages.get(key) is st:
            del self.stages[key]


def _discard_stale(paths: list[Path]) -> None:
    for p in paths:
        if n := discard_stale_partials(p):
            log.info("removed %d partial copies of %s left by an earlier attempt", n, p)


def read_chunk(root: Path, rel: str, offset: int, length: int) -> P.FileChunk:
    """Part of a file under the work root, for a client's download (run in a thread)."""
    try:
        path = confine(root, rel)
    except PathEscape as exc:
        return P.FileChunk(req_id=0, error=f"refused: {exc}", code="bad_request")
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(offset)
            data = f.read(length)
            digest = ""
            if offset + len(data) >= size:
                h = hashlib.sha256()
                f.seek(0)
                while chunk := f.read(1 << 22):
                    h.update(chunk)
                digest = h.hexdigest()
    except IsADirectoryError:
        return P.FileChunk(req_id=0, error=f"{rel} is a directory: download its files one "
                           "by one, or give the output a url", code="bad_request")
    except FileNotFoundError:
        return P.FileChunk(req_id=0, error=f"{rel} is no longer on the site",
                           code="not_found")
    except OSError as exc:
        return P.FileChunk(req_id=0, error=f"{rel}: {exc.strerror or exc}",
                           code="bad_request")
    return P.FileChunk(req_id=0, offset=offset, data=data, size=size, sha256=digest)
