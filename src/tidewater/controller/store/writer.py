"""The group-commit writer both backends share: an ordered queue, one writer task.

Writers never touch the database themselves. They hand the writer a
:class:`WriteOp` (semantic writes plus an ``on_commit`` callback) through an
ordered queue; when more than ``queue_size`` ops wait, ``write`` blocks its
caller, so a lagging disk slows the readers of sockets down instead of
growing memory. The writer drains every op that is waiting (at most
``max_batch``), hands them to the backend's ``apply`` as one transaction,
then calls each ``on_commit`` in order, then ``after_batch``:
acknowledgements and notifications are only ever sent for committed work.
``on_batch``, when set, hears each committed batch's commit time and size
(one call per batch, for ``/metrics``).

Inside a batch, writes are grouped per :class:`~.base.Op` and the buckets
are ordered by :data:`~.schema.OP_ORDER` (ties keep the order in which the
batch first used them); updates write absolute values, so the result equals
running the ops one by one, in far fewer round trips.

An ``apply`` that raises (it must raise :class:`~tidewater.errors.StoreError`)
ends the writer with that error, and so the task group that owns it: memory
and disk disagree, and nothing more is acknowledged.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskStatus

from ...errors import StoreError
from .base import Op, Write
from .schema import OP_ORDER

log = logging.getLogger("tidewater.store")

Buckets = list[tuple[Op, list[Sequence[Any]]]]
"""A batch's writes: each Op with all its parameter rows, in commit order."""


@dataclass
class WriteOp:
    writes: list[Write]
    on_commit: Callable[[], None] | None = None
    done: anyio.Event | None = field(default=None)


def buckets(batch: Sequence[WriteOp]) -> Buckets:
    """Group a batch's writes per Op, in :data:`OP_ORDER` (a stable sort: ties keep first use)."""
    grouped: dict[Op, list[Sequence[Any]]] = {}
    for op in batch:
        for kind, params in op.writes:
            grouped.setdefault(kind, []).append(params)
    return sorted(grouped.items(), key=lambda kv: OP_ORDER[kv[0]])


class GroupCommit:
    """The ordered write queue and the writer loop; ``apply`` commits one batch.

    ``apply(buckets)`` runs one transaction and raises StoreError if it did
    not commit. It must not be abandoned half way when the writer is
    cancelled (the SQLite backend runs it in a thread that is not abandoned;
    the PostgreSQL one shields it), so a commit that started always finishes
    before the writer stops.
    """

    def __init__(self, apply: Callable[[Buckets], Awaitable[None]], *, queue_size: int,
                 max_batch: int) -> None:
        self._apply = apply
        self._queue_size = queue_size
        self._max_batch = max_batch
        # Ops wait here in the order they were queued. Queuing never awaits,
        # so the order of writes is exactly the order of the code that made
        # them (ids allocated in memory reach the disk, and the callbacks, in
        # that order); only the backpressure wait that follows is async.
        self._ops: deque[WriteOp] = deque()
        self._has_ops = anyio.Event()
        self._has_room = anyio.Event()
        self.open_for_writes = False
        self.after_batch: Callable[[], None] | None = None
        self.on_batch: Callable[[float, int], None] | None = None
        """Called with (seconds ``apply`` took, ops in the batch) after each commit."""
        self.batches = 0
        self.ops_committed = 0

    def close(self) -> None:
        """No more writes; the writer drains what is queued, then ends."""
        self.open_for_writes = False
        self._has_ops.set()

    def abandon(self) -> int:
        """Take no more writes and drop those queued, uncommitted: how many were dropped.

        Their callbacks never run, so nothing dropped is acknowledged. For a
        controller that may no longer write (it lost the leader's lock); a
        commit already under way still finishes or fails.
        """
        dropped = len(self._ops)
        self._ops.clear()
        self.close()
        self._has_room.set()
        return dropped

    def write_nowait(self, writes: list[Write], on_commit: Callable[[], None] | None = None,
                     done: anyio.Event | None = None) -> None:
        """Queue a write at once, in order, without waiting for room. Raises StoreError if closed."""
        if not self.open_for_writes:
            raise StoreError("the store is closed")
        self._ops.append(WriteOp(writes, on_commit, done))
        self._has_ops.set()

    async def write(self, writes: list[Write],
                    on_commit: Callable[[], None] | None = None) -> None:
        """Queue a write (committed later, ``on_commit`` called after); wait while the queue is full.

        The op is queued before the first await, so writes keep the order in
        which callers made them. Cancel-safe: if cancelled while waiting for
        room, the op stays queued and is committed.
        """
        self.write_nowait(writes, on_commit)
        while len(self._ops) > self._queue_size:
            self._has_room = anyio.Event() if self._has_room.is_set() else self._has_room
            await self._has_room.wait()

    async def commit(self, writes: list[Write]) -> None:
        """Queue a write and wait until it is committed."""
        done = anyio.Event()
        self.write_nowait(writes, None, done)
        await done.wait()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The writer: commit batches until closed and drained. Raises StoreError on a failed commit."""
        task_status.started()
        ops = self._ops
        while True:
            if not ops:
                if not self.open_for_writes:
                    return
                self._has_ops = anyio.Event()
                await self._has_ops.wait()
                continue
            batch = [ops.popleft() for _ in range(min(len(ops), self._max_batch))]
            self._has_room.set()
            began = time.perf_counter()
            await self._apply(buckets(batch))
            took = time.perf_counter() - began
            self.batches += 1
            self.ops_committed += len(batch)
            for op in batch:
                if op.on_commit is not None:
                    try:
                        op.on_commit()
                    except Exception:
                        log.exception("on_commit callback failed")
                if op.done is not None:
                    op.done.set()
            if self.after_batch is not None:
                try:
                    self.after_batch()
                except Exception:
                    log.exception("after_batch callback failed")
            if self.on_batch is not None:
                try:
                    self.on_batch(took, len(batch))
                except Exception:
                    log.exception("on_batch callback failed")


class QueuedWrites:
    """What every backend's writes are: a :class:`GroupCommit` queue, ``self._queue``.

    A backend sets ``self._queue`` to a GroupCommit running its own
    transaction function, and inherits the Store protocol's write side.
    """

    _queue: GroupCommit
    _tg: anyio.abc.TaskGroup | None

    async def _start_writer(self) -> None:
        """Open for writes and start the writer task (once the connections are open)."""
        self._queue.open_for_writes = True
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        await self._tg.start(self._queue.run)

    async def _stop_writer(self) -> None:
        """Take no more writes; the writer drains what is queued, then ends."""
        assert self._tg is not None
        self._queue.close()
        await self._tg.__aexit__(None, None, None)

    def abandon(self) -> int:
        """Take no more writes and drop the queued ones (see :meth:`GroupCommit.abandon`)."""
        return self._queue.abandon()

    @property
    def after_batch(self) -> Callable[[], None] | None:
        """Called after the ``on_commit`` callbacks of every committed batch."""
        return self._queue.after_batch

    @after_batch.setter
    def after_batch(self, cb: Callable[[], None] | None) -> None:
        self._queue.after_batch = cb

    @property
    def on_batch(self) -> Callable[[float, int], None] | None:
        """Called with (seconds the commit took, ops in the batch) after each commit."""
        return self._queue.on_batch

    @on_batch.setter
    def on_batch(self, cb: Callable[[float, int], None] | None) -> None:
        self._queue.on_batch = cb

    @property
    def batches(self) -> int:
        return self._queue.batches

    @property
    def ops_committed(self) -> int:
        return self._queue.ops_committed

    def write_nowait(self, writes: list[Write], on_commit: Callable[[], None] | None = None,
                     done: anyio.Event | None = None) -> None:
        """Queue a write at once, in order, without waiting for room. Raises StoreError if closed."""
        self._queue.write_nowait(writes, on_commit, done)

    async def write(self, writes: list[Write],
                    on_commit: Callable[[], None] | None = None) -> None:
        """Queue a write (committed later, ``on_commit`` called after); wait while the queue is full.

        The op is queued before the first await, so writes keep the order in
        which callers made them. Cancel-safe: if cancelled while waiting for
        room, the op stays queued and is committed.
        """
        await self._queue.write(writes, on_commit)

    async def commit(self, writes: list[Write]) -> None:
        """Queue a write and wait until it is committed."""
        await self._queue.commit(writes)
