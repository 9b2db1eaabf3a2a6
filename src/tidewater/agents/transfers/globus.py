"""``globus://``: one Globus Transfer task per batch, through the site's own collection.

The site is reached through its Globus collection ``[transfers]
globus_endpoint``, whose view of the work root is ``globus_work_root``. A
batch of items that share a remote collection becomes one transfer task per
direction: inputs (``in``) go from the remote collection to partial names
beside their final paths on the site collection; outputs (``out``) go from
the site collection to their remote paths. The SDK is synchronous, so every
call runs in a worker thread.

What happens to one batch:

1. A submission id is asked for: a refused token or an unreachable API fails
   the whole batch at once. Each input's source is then stat'ed on its
   collection (files and directories are submitted differently); a missing
   path fails that item with Globus's own message and is not submitted.
   Outputs are checked on local disk.
2. One task is submitted (under that submission id, so a retried request
   cannot start it twice) with ``verify_checksum`` (when ``checksum`` is on),
   ``skip_source_errors`` (a source path that vanishes or is refused fails
   only its own item) and a deadline of :data:`TASK_DEADLINE` seconds.
3. The task is polled every ``globus_poll_interval`` seconds until it
   SUCCEEDED or FAILED. A task still running after :data:`TASK_DEADLINE`
   (which Globus itself should have expired), suspended (INACTIVE) or whose
   status cannot be read :data:`POLL_ERRORS` times running is cancelled and
   its items fail; so does a task whose ``run`` is cancelled.
4. SUCCEEDED: items with skipped errors fail with Globus's error code and
   details; the others landed. FAILED: a file listed among the task's
   successful transfers landed; every other item fails with the task's fatal
   error and, where the event list has one, the error event's details.
5. An input that landed is sized and hashed in its partial place, then
   renamed into its final path (:func:`~.base.place`). An output that landed
   is described by the local source's digest. Partials of items that did not
   land are removed.

Outputs are written by Globus straight to their remote paths (Globus has no
write-then-rename of its own), so a failed output task may leave a partial
file at the remote path; the next attempt overwrites it.

Globus errors never escape: API errors become :class:`~tidewater.errors.TransferError`
(401, 403, 404 and other 4xx are not retryable; 409, 429, 5xx and network
errors are), with Globus's code and message.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import posixpath
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import globus_sdk
from globus_sdk.transport import RetryConfig

from ...errors import TransferError
from .base import Backend, Item, Moved, digest, discard, partial_path, place, tree_files

if TYPE_CHECKING:
    from ..settings import SiteSettings

T = TypeVar("T")
Doc = dict[str, Any]

TASK_DEADLINE = 12 * 3600.0
"""Seconds one batch's task may take, from submission: Globus is given this as
the task's deadline, and the backend cancels the task itself if it is still
running then. Not a setting: a batch larger than this moves in 12 h should be
split (``max_batch``)."""
HTTP_TIMEOUT = 60.0
"""Seconds one request to the Transfer API may take."""
CANCEL_TIMEOUT = 15.0
"""Seconds allowed to cancel an abandoned task (shielded from cancellation)."""
POLL_ERRORS = 5
"""Consecutive failed status polls (network, 5xx) after which a task is abandoned."""
API_RETRIES = 1
"""Retries of one API request inside the SDK; the engine retries batches with backoff."""

PERMANENT = frozenset({
    "PERMISSION_DENIED", "AMBIGUOUS_PATH", "INVALID_PATH_NAME",
    "IS_A_DIRECTORY", "IS_A_FILE", "NOT_A_DIRECTORY", "NOT_A_FILE", "INVALID_SYMLINK",
    "NOT_A_SYMLINK", "QUOTA_EXCEEDED", "CANCELED", "EXTERNAL_CHECKSUM_MISMATCH",
    "GSI_DN_MISMATCH", "NO_CREDENTIALS", "INVALID_SERVICE_CREDENTIAL",
})
"""Globus event codes that another attempt will meet again."""

MAX_MESSAGE = 2000


# ---------------------------------------------------------------- pure helpers


def collection_path(local: Path, local_root: Path, collection_root: str) -> str:
    """``local`` (under the work root) as the site's collection sees it.

    Raises a non-retryable TransferError when ``local`` is not under the work root.
    """
    candidates = [(Path(os.path.abspath(local)), Path(os.path.abspath(local_root)))]
    candidates.append((Path(os.path.realpath(local.parent)) / local.name,
                       Path(os.path.realpath(local_root))))
    for path, root in candidates:
        try:
            rel = path.relative_to(root)
        except ValueError:
            continue
        return posixpath.join(collection_root, rel.as_posix()) if rel.parts else collection_root
    raise TransferError(local.as_uri(), f"{local} is outside the work root {local_root}, the "
                        "only part of this site the Globus collection is known to reach",
                        retryable=False)


def api_error(url: str, status: int, code: str | None, message: str | None,
              *, token_file: Path) -> TransferError:
    """A Transfer API error response as a TransferError, with what to do where known."""
    said = _clip(f"{code or 'Error'}: {message or '(no message)'}")
    if status == 401:
        return TransferError(url, f"Globus refused the access token in {token_file} (HTTP 401 "
                             f"{said}): it is expired, revoked or not a Transfer API token; "
                             "write a valid one there", retryable=False)
    if status == 403:
        return TransferError(url, f"Globus denied access (HTTP 403 {said})", retryable=False)
    if status == 404:
        # A missing path is retried (data from an instrument may still be on its way);
        # a missing collection is not.
        return TransferError(url, f"not found at Globus (HTTP 404 {said})",
                             retryable="Endpoint" not in (code or ""))
    if status in (409, 429) or status >= 500:
        return TransferError(url, f"Globus Transfer API is unavailable (HTTP {status} {said})")
    return TransferError(url, f"Globus refused the request (HTTP {status} {said})",
                         retryable=False)


def under(path: str, root: str) -> bool:
    """Whether collection path ``path`` is ``root`` or inside it (``/~/x`` counts as ``/x``)."""
    p, r = (q.removeprefix("/~").rstrip("/") or "/" for q in (path, root))
    return p == r or p.startswith(r if r.endswith("/") else r + "/")


def mentions(text: str, path: str) -> bool:
    """Whether an event's text names ``path`` (not merely a longer path starting with it)."""
    p = path.rstrip("/")
    return bool(p) and re.search(re.escape(p) + r"(?=$|[\s/'\"\\,;:)])", text) is not None


@dataclass
class Plan:
    """One item as submitted: its paths on the two collections."""

    index: int
    item: Item
    source: str
    destination: str
    recursive: bool
    partial: Path | None = None
    """For an input: where it lands on local disk before :func:`place`."""
    size: int | None = None
    """The source file's size when Globus reported it (inputs that are files)."""


def task_outcomes(plans: Sequence[Plan], task: Doc, skipped: Sequence[Doc],
                  transferred: set[str], events: Sequence[Doc]) -> dict[int, TransferError | None]:
    """What became of each planned item of a finished task: None if it landed.

    ``skipped`` are the task's skipped errors, ``transferred`` the destination
    paths of its successful transfers (only read for a FAILED task),
    ``events`` its event list (newest first).
    """
    out: dict[int, TransferError | None] = {}
    task_id = task.get("task_id", "?")
    for plan in plans:
        own = [s for s in skipped
               if under(str(s.get("source_path", "")), plan.source)
               or under(str(s.get("destination_path", "")), plan.destination)]
        if own:
            s = own[0]
            code = str(s.get("error_code") or "UNKNOWN")
            details = str(s.get("error_details") or "").strip()
            where = s.get("source_path", plan.source)
            out[plan.index] = TransferError(
                plan.item.remote.url,
                _clip(f"Globus skipped {where} ({code}){': ' + details if details else ''}"),
                retryable=code not in PERMANENT)
        else:
            out[plan.index] = None
    if task.get("status") == "SUCCEEDED":
        return out

    fatal = task.get("fatal_error") or {}
    code = str(fatal.get("code") or "UNKNOWN")
    said = f"Globus task {task_id} failed ({code}: {fatal.get('description') or 'no description'})"
    event = next((e for e in events if e.get("is_error") and e.get("code") == code), None)
    event = event or next((e for e in events if e.get("is_error")), None)
    details = str(event.get("details") or "").strip() if event else ""
    if details:
        said += f": {details}"
    said = _clip(said)
    pending = [p for p in plans if out[p.index] is None
               and (p.recursive or p.destination not in transferred)]
    culprits = [p for p in pending
                if details and (mentions(details, p.source) or mentions(details, p.destination))]
    for plan in pending:
        if culprits and plan not in culprits:
            out[plan.index] = TransferError(
                plan.item.remote.url, _clip(f"not transferred: {said}"), retryable=True)
        else:
            out[plan.index] = TransferError(plan.item.remote.url, said,
                                            retryable=code not in PERMANENT)
    return out


def _clip(text: str) -> str:
    text = text.strip()
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def _measure(path: Path, *, checksum: bool) -> Moved:
    """Size and (with ``checksum``) SHA-256 of a file or tree on local disk."""
    if checksum:
        return digest(path)
    if path.is_dir() and not path.is_symlink():
        return Moved(sum(p.stat().st_size for _, p in tree_files(path)), "")
    return Moved(path.stat().st_size, "")


# ---------------------------------------------------------------------- backend


class GlobusBackend(Backend):
    """Moves ``globus://COLLECTION/path`` items with Globus Transfer tasks."""

    scheme = "globus"
    task_deadline: float = TASK_DEADLINE

    def __init__(self, settings: SiteSettings) -> None:
        t = settings.transfers
        if not t.globus_endpoint:
            raise TransferError("globus://", "globus:// needs this site's own Globus collection: "
                                "set [transfers] globus_endpoint in settings.toml",
                                retryable=False)
        if not t.globus_token_file:
            raise TransferError("globus://", "globus:// needs a Globus Transfer access token: "
                                "set [transfers] globus_token_file in settings.toml",
                                retryable=False)
        self.endpoint = t.globus_endpoint
        self.local_root = Path(os.path.abspath(settings.path(settings.site.work_root)))
        self.collection_root = t.globus_work_root or self.local_root.as_posix()
        if not self.collection_root.startswith("/"):
            raise TransferError("globus://", f"[transfers] globus_work_root "
                                f"{t.globus_work_root!r} must be an absolute path on the "
                                "collection (like /~/work or /scratch/work)", retryable=False)
        self.token_file = settings.path(t.globus_token_file)
        base = t.globus_base_url.rstrip("/")
        self.base_url = base.removesuffix("/v0.10") + "/" if base else None
        self.poll_interval = max(0.01, t.globus_poll_interval)
        self.checksum = t.checksum
        self.label = re.sub(r"\s+", " ", f"tidewater site {settings.site.name}").strip()[:128]
        self.limiter = anyio.CapacityLimiter(max(1, t.max_concurrency))

    # ------------------------------------------------------------------ run

    async def run(self, items: Sequence[Item]) -> list[Moved | TransferError]:
        """Move one batch; one result per item. Cancel-safe: a cancelled run cancels
        its Globus tasks (shielded, bounded) and removes partial inputs."""
        results: list[Moved | TransferError | None] = [None] * len(items)
        if not items:
            return []
        try:
            token = await anyio.to_thread.run_sync(self._read_token)
            client = self._client(token)
        except TransferError as exc:
            return [_for(item, exc) for item in items]
        try:
            groups: dict[tuple[str, str], list[int]] = {}
            for i, item in enumerate(items):
                ends = ((item.remote.host, self.endpoint) if item.direction == "in"
                        else (self.endpoint, item.remote.host))
                groups.setdefault(ends, []).append(i)
            async with anyio.create_task_group() as tg:
                for (src, dst), indices in groups.items():
                    tg.start_soon(self._group, client, src, dst,
                                  [(i, items[i]) for i in indices], results)
        finally:
            client.close()
        return [r if r is not None else TransferError(items[i].remote.url, "not transferred")
                for i, r in enumerate(results)]

    async def _group(self, client: globus_sdk.TransferClient, src: str, dst: str,
                     members: list[tuple[int, Item]],
                     results: list[Moved | TransferError | None]) -> None:
        plans: list[Plan] = []
        try:
            sid = await self._call(members[0][1].remote.url, _submission_id, client)
        except TransferError as exc:
            for i, item in members:
                results[i] = _for(item, exc)
            return

        async def plan_one(i: int, item: Item) -> None:
            try:
                plans.append(await self._plan(client, i, item))
            except TransferError as exc:
                results[i] = _for(item, exc)
            except OSError as exc:
                results[i] = TransferError(item.remote.url, _os_message(exc))

        async with anyio.create_task_group() as tg:
            for i, item in members:
                tg.start_soon(plan_one, i, item)
        if not plans:
            return
        plans.sort(key=lambda p: p.index)
        landed: set[int] = set()
        try:
            try:
                outcomes = await self._transfer(client, src, dst, sid, plans)
            except TransferError as exc:
                outcomes = {p.index: _for(p.item, exc) for p in plans}
            for plan in plans:
                error = outcomes.get(plan.index)
                if error is None:
                    try:
                        results[plan.index] = await anyio.to_thread.run_sync(self._land, plan)
                        landed.add(plan.index)
                    except TransferError as exc:
                        results[plan.index] = _for(plan.item, exc)
                    except OSError as exc:
                        results[plan.index] = TransferError(plan.item.remote.url,
                                                            _os_message(exc))
                else:
                    results[plan.index] = error
        finally:
            leftovers = [p.partial for p in plans
                         if p.partial is not None and p.index not in landed]
            if leftovers:
                with anyio.move_on_after(CANCEL_TIMEOUT, shield=True):
                    await anyio.to_thread.run_sync(_discard_all, leftovers)

    async def _plan(self, client: globus_sdk.TransferClient, i: int, item: Item) -> Plan:
        if item.direction == "in":
            partial = partial_path(item.local)
            destination = await anyio.to_thread.run_sync(
                collection_path, partial, self.local_root, self.collection_root)
            doc = await self._call(item.remote.url, _stat, client, item.remote.host,
                                   item.remote.path)
            kind = doc.get("type")
            if kind not in ("file", "dir"):
                raise TransferError(item.remote.url, f"{item.remote.path} is a {kind}, not a "
                                    "regular file or directory", retryable=False)
            size = doc.get("size") if kind == "file" else None
            return Plan(i, item, item.remote.path, destination, kind == "dir", partial,
                        size if isinstance(size, int) else None)
        source = await anyio.to_thread.run_sync(
            collection_path, item.local, self.local_root, self.collection_root)
        is_dir = await anyio.to_thread.run_sync(_local_source, item)
        return Plan(i, item, source, item.remote.path, is_dir)

    async def _transfer(self, client: globus_sdk.TransferClient, src: str, dst: str, sid: str,
                        plans: Sequence[Plan]) -> dict[int, TransferError | None]:
        url = plans[0].item.remote.url
        deadline = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.task_deadline)
        data = globus_sdk.TransferData(
            src, dst, label=self.label, submission_id=sid, verify_checksum=self.checksum,
            skip_source_errors=True, fail_on_quota_errors=True,
            deadline=deadline.strftime("%Y-%m-%d %H:%M:%S+00:00"),
            notify_on_succeeded=False, notify_on_failed=False,
        )
        for plan in plans:
            data.add_item(plan.source, plan.destination, recursive=plan.recursive)
        task_id = await self._call(url, _submit, client, data)
        finished = False
        try:
            task = await self._wait(client, url, task_id)
            finished = True
        finally:
            if not finished:
                with anyio.move_on_after(CANCEL_TIMEOUT, shield=True):
                    await self._cancel(client, url, task_id)

        skipped: list[Doc] = []
        if task.get("subtasks_skipped_errors", 1):  # absent: ask
            skipped = await self._call(url, _all, client.paginated.task_skipped_errors, task_id)
        transferred: set[str] = set()
        events: list[Doc] = []
        if task.get("status") != "SUCCEEDED":
            # Best effort: without these, items fail with the bare fatal error.
            try:
                done = await self._call(url, _all, client.paginated.task_successful_transfers,
                                        task_id)
                transferred = {str(d.get("destination_path")) for d in done}
            except TransferError:
                pass
            try:
                events = await self._call(url, _events, client, task_id)
            except TransferError:
                pass
        return task_outcomes(plans, task, skipped, transferred, events)

    async def _wait(self, client: globus_sdk.TransferClient, url: str, task_id: str) -> Doc:
        failures = 0
        last = "not yet polled"
        with anyio.move_on_after(self.task_deadline):
            while True:
                try:
                    task = await self._call(url, _task, client, task_id)
                except TransferError as exc:
                    failures += 1
                    if not exc.retryable or failures >= POLL_ERRORS:
                        raise TransferError(url, f"lost track of Globus task {task_id}, so "
                                            f"cancelled it: {exc.message}",
                                            retryable=exc.retryable) from None
                    last = exc.message
                else:
                    failures = 0
                    status = task.get("status")
                    if status in ("SUCCEEDED", "FAILED"):
                        return task
                    last = f"{status}, {task.get('nice_status') or 'no details'}"
                    if status == "INACTIVE":
                        raise TransferError(url, f"Globus suspended task {task_id} ({last}); "
                                            "it was cancelled. Renew the collections' "
                                            "credentials or consents, then retry",
                                            retryable=False)
                await anyio.sleep(self.poll_interval)
        raise TransferError(url, f"Globus task {task_id} did not finish within "
                            f"{self.task_deadline:g} s (last status: {last}); it was cancelled")

    async def _cancel(self, client: globus_sdk.TransferClient, url: str, task_id: str) -> None:
        try:
            await self._call(url, client.cancel_task, task_id)
        except TransferError:
            pass  # it may have just finished; its partial inputs are removed either way

    def _land(self, plan: Plan) -> Moved:
        """Check, measure and place what one item put on local disk (runs in a thread)."""
        item = plan.item
        if plan.partial is None:
            return _measure(item.local, checksum=self.checksum)
        if not plan.partial.exists():
            raise TransferError(item.remote.url, f"Globus reported {plan.destination} written "
                                f"on collection {self.endpoint}, but {plan.partial} does not "
                                "exist here. If every input fails like this, set [transfers] "
                                "globus_work_root to the path through which that collection "
                                f"reaches {self.local_root}", retryable=False)
        moved = _measure(plan.partial, checksum=self.checksum)
        if plan.size is not None and moved.size != plan.size:
            raise TransferError(item.remote.url, f"{moved.size} bytes arrived, but Globus "
                                f"reported {plan.size} for the source")
        place(plan.partial, item.local)
        return moved

    # ------------------------------------------------------------ SDK access

    def _read_token(self) -> str:
        f = self.token_file
        try:
            mode = f.stat().st_mode
            token = f.read_text().strip()
        except FileNotFoundError:
            raise TransferError("globus://", f"the Globus token file {f} does not exist: write "
                                "a Transfer API access token there (mode 0600)",
                                retryable=False) from None
        except OSError as exc:
            raise TransferError("globus://", f"cannot read the Globus token file: "
                                f"{_os_message(exc)}", retryable=False) from None
        if mode & 0o077:
            raise TransferError("globus://", f"the Globus token file {f} is readable by other "
                                f"users: chmod 600 {f}", retryable=False)
        if not token:
            raise TransferError("globus://", f"the Globus token file {f} is empty",
                                retryable=False)
        return token

    def _client(self, token: str) -> globus_sdk.TransferClient:
        try:
            client = globus_sdk.TransferClient(
                authorizer=globus_sdk.AccessTokenAuthorizer(token), base_url=self.base_url,
                app_name="tidewater",
                retry_config=RetryConfig(max_retries=API_RETRIES, max_sleep=1),
            )
        except (globus_sdk.GlobusError, ValueError) as exc:  # e.g. GLOBUS_SDK_ENVIRONMENT
            raise TransferError("globus://", f"cannot set up the Globus client: {exc}",
                                retryable=False) from None
        client.transport.http_timeout = HTTP_TIMEOUT
        return client

    async def _call(self, url: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in a worker thread, its Globus errors as TransferError."""
        try:
            return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs),
                                                  limiter=self.limiter)
        except globus_sdk.GlobusAPIError as exc:
            raise api_error(url, exc.http_status, exc.code, exc.message,
                            token_file=self.token_file) from None
        except globus_sdk.NetworkError as exc:
            where = self.base_url or "transfer.api.globus.org"
            raise TransferError(url, f"cannot reach the Globus Transfer API at {where}: "
                                f"{exc.underlying_exception}") from None
        except globus_sdk.GlobusError as exc:
            raise TransferError(url, f"Globus SDK error: {exc}", retryable=False) from None
        except (KeyError, TypeError, ValueError) as exc:  # an answer without the expected fields
            where = self.base_url or "transfer.api.globus.org"
            raise TransferError(url, f"unexpected answer from the Globus Transfer API at {where} "
                                f"({type(exc).__name__}: {exc}): check [transfers] "
                                "globus_base_url", retryable=False) from None


# Each SDK call with its answer reduced to plain data, all inside the worker thread.


def _doc(resp: globus_sdk.GlobusHTTPResponse) -> Doc:
    data = resp.data
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {resp.text[:200]!r}")
    return data


def _submission_id(client: globus_sdk.TransferClient) -> str:
    return str(_doc(client.get_submission_id())["value"])


def _stat(client: globus_sdk.TransferClient, endpoint: str, path: str) -> Doc:
    return _doc(client.operation_stat(endpoint, path))


def _submit(client: globus_sdk.TransferClient, data: globus_sdk.TransferData) -> str:
    return str(_doc(client.submit_transfer(data))["task_id"])


def _task(client: globus_sdk.TransferClient, task_id: str) -> Doc:
    return _doc(client.get_task(task_id))


def _events(client: globus_sdk.TransferClient, task_id: str) -> list[Doc]:
    return [dict(e) for e in _doc(client.task_event_list(task_id, limit=20))["DATA"]]


def _all(paginated: Callable[..., Any], *args: Any) -> list[Doc]:
    """Every item of every page of a paginated Transfer call."""
    return [dict(d) for d in paginated(*args).items()]


def _local_source(item: Item) -> bool:
    """Whether an output's local source is a directory; TransferError if it cannot go."""
    p = item.local
    if p.is_symlink() or not (p.is_file() or p.is_dir()):
        what = "no such file or directory" if not p.exists() and not p.is_symlink() else (
            "a symbolic link" if p.is_symlink() else "not a regular file or directory")
        raise TransferError(item.remote.url, f"{p}: {what}", retryable=False)
    if p.is_dir():
        tree_files(p)  # refuses trees with links, before anything is sent
        return True
    return False


def _discard_all(paths: Sequence[Path]) -> None:
    for p in paths:
        discard(p)


def _for(item: Item, exc: TransferError) -> TransferError:
    """A batch-wide error as this item's own."""
    if exc.url == item.remote.url:
        return exc
    return TransferError(item.remote.url, exc.message, retryable=exc.retryable)


def _os_message(exc: OSError) -> str:
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}"
