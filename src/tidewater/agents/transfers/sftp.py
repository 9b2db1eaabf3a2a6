"""``sftp://user@host[:port]/abs/path``: files and trees over SSH, with asyncssh.

One SSH connection and SFTP session per remote (:attr:`Remote.key`) is kept
between batches and made again when it has died; :meth:`SftpBackend.aclose`
closes them. Authentication is by key only (``sftp_identity``, or the user's
``~/.ssh`` keys and agent), and host keys are always checked against
``sftp_known_hosts`` (or ``~/.ssh/known_hosts``).

Speed comes from keeping many SFTP requests of the server's largest block
size in flight per file (``DEPTH``), from preferring AES-GCM (which
``cryptography`` runs in OpenSSL) and no compression, and from moving files
of a batch or tree at once, at most ``max_concurrency`` files per remote.
Local reads, writes and SHA-256 run in worker threads in large chunks, so the
event loop only decrypts and dispatches. With ``checksum`` on, each file is
hashed in the same single pass that writes or reads it.

Inputs land in :func:`~.base.partial_path` and are :func:`~.base.place`\\ d
once complete and size-checked; outputs are written to a ``.tw-partial-*``
name beside the remote destination and renamed into place (``posix-rename``
where the server has it). A failed item leaves no partial behind, except on
a remote that became unreachable mid-write.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import posixpath
import warnings
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, TypeVar, cast

import anyio

with warnings.catch_warnings():
    # asyncssh still offers DSA keys; newer cryptography warns when that support is
    # touched at import. Nothing here uses DSA, and the warning would reach every user.
    warnings.filterwarnings("ignore", message="DSA is deprecated", category=UserWarning)
    import asyncssh
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ...errors import TransferError
from .base import (
    Backend,
    Item,
    Moved,
    Remote,
    discard,
    partial_path,
    place,
    tree_digest,
    tree_walk,
)

if TYPE_CHECKING:
    from ..settings import SiteSettings

# AES-GCM first: OpenSSL does it in hardware, while asyncssh's chacha20-poly1305
# is assembled from separate primitives and runs at about 60 % of the speed.
CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com",
           "aes128-ctr", "aes192-ctr", "aes256-ctr")
BLOCK = 255 * 1024
"""Largest SFTP read/write request; capped by the server's limits (OpenSSH: 255 KiB)."""
DEPTH = 16
"""SFTP requests in flight per file."""
WINDOW = 16 * 1024 * 1024
"""SSH channel receive window: room for every file's requests in flight (default 2 MiB)."""
IO_CHUNK = 2 * 1024 * 1024
"""Bytes handed to a worker thread at once for local reads, writes and hashing."""
CLEANUP_TIMEOUT = 10.0
DEFAULT_PORT = 22
_T = TypeVar("_T")


@dataclass
class _Session:
    conn: asyncssh.SSHClientConnection
    sftp: asyncssh.SFTPClient
    read_len: int
    write_len: int
    limiter: anyio.CapacityLimiter
    """Files moved at once to or from this remote, over all batches."""
    lost: bool = False

    def alive(self) -> bool:
        return not self.lost and not self.conn.is_closed()


class SftpBackend(Backend):
    scheme = "sftp"

    def __init__(self, settings: SiteSettings) -> None:
        t = settings.transfers
        self.checksum = t.checksum
        self.identity = str(settings.path(t.sftp_identity)) if t.sftp_identity else ""
        self.known_hosts = str(settings.path(t.sftp_known_hosts or "~/.ssh/known_hosts"))
        self.connect_timeout = t.sftp_connect_timeout
        self.max_concurrency = max(1, t.max_concurrency)
        self._limiters: dict[str, anyio.CapacityLimiter] = {}
        self._sessions: dict[str, _Session] = {}
        self._connecting: dict[str, anyio.Lock] = {}

    # ------------------------------------------------------------------ batches

    async def run(self, items: Sequence[Item]) -> list[Moved | TransferError]:
        """Move one batch (items of one remote); one result per item, never raises.

        Cancel-safe: partial files are removed on the way out.
        """
        if not items:
            return []
        try:
            session = await self._session(items[0].remote)
        except TransferError as exc:
            return [TransferError(it.remote.url, exc.message, retryable=exc.retryable)
                    for it in items]
        results: list[Moved | TransferError] = [TransferError("", "not run")] * len(items)

        async def one(i: int, item: Item) -> None:
            try:
                if item.direction == "in":
                    results[i] = await self._get(session, item)
                else:
                    results[i] = await self._put(session, item)
            except Exception as exc:
                path = item.remote.path
                if isinstance(exc, _At):
                    path, exc = exc.path, exc.error
                results[i] = _translate(exc, item.remote, path)
                if _connection_lost(exc):
                    session.lost = True

        async with anyio.create_task_group() as tg:
            for i, item in enumerate(items):
                tg.start_soon(one, i, item)
        if session.lost:
            await self._forget(items[0].remote.key, session)
        return results

    async def aclose(self) -> None:
        """Close every kept connection. Cancel-safe (closing is shielded and bounded)."""
        for key, session in list(self._sessions.items()):
            await self._forget(key, session)

    # --------------------------------------------------------------- connections

    async def _session(self, remote: Remote) -> _Session:
        lock = self._connecting.setdefault(remote.key, anyio.Lock())
        async with lock:
            session = self._sessions.get(remote.key)
            if session is not None and session.alive():
                return session
            if session is not None:
                await self._forget(remote.key, session)
            session = await self._connect(remote)
            self._sessions[remote.key] = session
            return session

    async def _connect(self, remote: Remote) -> _Session:
        where = f"{remote.host}:{remote.port or DEFAULT_PORT}"
        options: dict[str, object] = {
            "known_hosts": self.known_hosts,
            "encryption_algs": list(CIPHERS),
            "compression_algs": None,
            "window": WINDOW,
            "preferred_auth": "publickey",
            "password_auth": False,
            "kbdint_auth": False,
            "gss_auth": False,
            "host_based_auth": False,
        }
        if self.identity:
            options["client_keys"] = [self.identity]
            options["agent_path"] = None
        if remote.user:
            options["username"] = remote.user
        conn: asyncssh.SSHClientConnection | None = None
        try:
            with anyio.fail_after(self.connect_timeout):
                conn = await asyncssh.connect(remote.host, remote.port or DEFAULT_PORT,
                                              **options)
                sftp = await conn.start_sftp_client()
        except TimeoutError:
            await _close(conn)
            raise TransferError(remote.url, f"timed out after {self.connect_timeout:g} s "
                                f"connecting to {where} (sftp_connect_timeout)") from None
        except Exception as exc:
            await _close(conn)
            raise self._connect_error(exc, remote, where) from None
        limits = sftp.limits
        limiter = self._limiters.setdefault(remote.key,
                                            anyio.CapacityLimiter(self.max_concurrency))
        return _Session(conn, sftp, read_len=min(BLOCK, limits.max_read_len or BLOCK),
                        write_len=min(BLOCK, limits.max_write_len or BLOCK), limiter=limiter)

    def _connect_error(self, exc: Exception, remote: Remote, where: str) -> TransferError:
        url = remote.url
        user = remote.user or "the local user name"
        if isinstance(exc, asyncssh.HostKeyNotVerifiable):
            return TransferError(url, f"the host key of {where} is not trusted ({exc.reason}): "
                                 f"it is not in {self.known_hosts}, or differs from the one "
                                 f"there. If this is the right host, add its key: "
                                 f"{self._keyscan(remote)} (and check its fingerprint), or set "
                                 "[transfers] sftp_known_hosts", retryable=False)
        if isinstance(exc, asyncssh.PermissionDenied):
            key = self.identity or "the keys in ~/.ssh and the SSH agent"
            return TransferError(url, f"{where} refused the key for {user} ({key}): add its "
                                 "public key to that account's authorized_keys, or set "
                                 "[transfers] sftp_identity", retryable=False)
        if isinstance(exc, asyncssh.KeyImportError):
            return TransferError(url, f"cannot use the key {self.identity or '~/.ssh'}: {exc} "
                                 "(keys with a passphrase need the SSH agent)", retryable=False)
        if isinstance(exc, asyncssh.ChannelOpenError):
            return TransferError(url, f"{where} has no SFTP service: {exc.reason}",
                                 retryable=False)
        if isinstance(exc, asyncssh.DisconnectError):
            return TransferError(url, f"SSH connection to {where} failed: {exc.reason}")
        if isinstance(exc, ConnectionRefusedError):
            why = os.strerror(exc.errno) if exc.errno else str(exc)
            return TransferError(url, f"connection refused by {where}: {why} "
                                 "(is sshd running there, on that port?)")
        if isinstance(exc, FileNotFoundError) and exc.filename == self.known_hosts:
            return TransferError(url, f"known_hosts file {self.known_hosts} not found: host "
                                 f"keys are always checked. Add the host's key: "
                                 f"{self._keyscan(remote)} (and check its fingerprint), or set "
                                 "[transfers] sftp_known_hosts", retryable=False)
        if isinstance(exc, OSError) and exc.filename:
            return TransferError(url, f"cannot read {exc.filename} (sftp_identity?): "
                                 f"{exc.strerror or exc}", retryable=False)
        if isinstance(exc, OSError):
            return TransferError(url, f"cannot connect to {where}: {exc.strerror or exc}")
        return TransferError(url, f"cannot connect to {where}: {type(exc).__name__}: {exc}")

    def _keyscan(self, remote: Remote) -> str:
        port = f"-p {remote.port} " if remote.port else ""
        return f"ssh-keyscan {port}{remote.host} >> {self.known_hosts}"

    async def _forget(self, key: str, session: _Session) -> None:
        if self._sessions.get(key) is session:
            del self._sessions[key]
        with anyio.move_on_after(CLEANUP_TIMEOUT, shield=True):
            with contextlib.suppress(Exception):
                session.sftp.exit()
            await _close(session.conn)

    # -------------------------------------------------------------------- inputs

    async def _get(self, s: _Session, item: Item) -> Moved:
        src = item.remote.path
        attrs = await s.sftp.stat(src)
        final = item.local
        await anyio.to_thread.run_sync(lambda: final.parent.mkdir(parents=True, exist_ok=True))
        tmp = partial_path(final)
        try:
            if attrs.type == asyncssh.FILEXFER_TYPE_DIRECTORY:
                moved = await self._get_tree(s, item.remote, tmp)
            elif attrs.type == asyncssh.FILEXFER_TYPE_REGULAR:
                moved = await self._get_file(s, item.remote, src, tmp, attrs.size or 0)
            else:
                raise TransferError(item.remote.url, f"{src} is not a regular file or directory",
                                    retryable=False)
            await anyio.to_thread.run_sync(place, tmp, final)
        except BaseException:
            with anyio.move_on_after(CLEANUP_TIMEOUT, shield=True):
                await anyio.to_thread.run_sync(discard, tmp)
            raise
        return moved

    async def _get_tree(self, s: _Session, remote: Remote, tmp: Path) -> Moved:
        files, dirs = await _remote_tree(s.sftp, remote)

        def make_dirs() -> None:
            tmp.mkdir()
            for rel in dirs:
                (tmp / rel).mkdir(parents=True, exist_ok=True)

        await anyio.to_thread.run_sync(make_dirs)
        entries: list[tuple[str, Moved]] = []

        async def one(rel: str, size: int) -> None:
            path = posixpath.join(remote.path, rel)
            try:
                entries.append((rel, await self._get_file(s, remote, path, tmp / rel, size)))
            except (TransferError, _At):
                raise
            except Exception as exc:
                raise _At(path, exc) from None

        await self._each(s, files, one)
        return self._total(entries)

    async def _get_file(self, s: _Session, remote: Remote, path: str, dst: Path,
                        size: int) -> Moved:
        """Read remote ``path``, ``size`` bytes by its stat, into a new local ``dst``."""
        sink = _LocalWriter(dst, self.checksum)
        try:
            async with s.limiter, s.sftp.open(path, "rb", encoding=None, block_size=0) as f:
                got = await _download(f, size, s.read_len, sink)
        finally:
            if sink.file is not None:  # only on error: the last write closes it
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(sink.close)
        if got != size or sink.moved is None:
            grew = "or more " if got > size else ""
            raise TransferError(remote.url, f"{path} changed while it was read: {size} bytes "
                                f"by its stat, {got} {grew}read")
        return sink.moved

    # ------------------------------------------------------------------- outputs

    async def _put(self, s: _Session, item: Item) -> Moved:
        src, final = item.local, item.remote.path
        if not await anyio.Path(src).exists():
            raise TransferError(item.remote.url, f"{src}: No such file or directory (the "
                                "output to send)", retryable=False)
        is_dir = await anyio.Path(src).is_dir()
        if not is_dir and not await anyio.Path(src).is_file():
            raise TransferError(item.remote.url, f"{src} is not a regular file or directory",
                                retryable=False)
        parent = posixpath.dirname(final)
        tmp = posixpath.join(parent, partial_path(Path(posixpath.basename(final))).name)
        try:
            await s.sftp.makedirs(parent, exist_ok=True)
            if is_dir:
                moved = await self._put_tree(s, item.remote, src, tmp)
            else:
                moved = await self._put_file(s, item.remote, src, tmp, final)
            await _install(s.sftp, tmp, final, is_dir)
        except BaseException:
            with anyio.move_on_after(CLEANUP_TIMEOUT, shield=True):
                with contextlib.suppress(Exception):
                    if is_dir:
                        await s.sftp.rmtree(tmp, ignore_errors=True)
                    else:
                        await s.sftp.remove(tmp)
            raise
        return moved

    async def _put_tree(self, s: _Session, remote: Remote, src: Path, tmp: str) -> Moved:
        try:
            files, dirs = await anyio.to_thread.run_sync(tree_walk, src)
        except TransferError as exc:
            raise TransferError(remote.url, f"{src}: {exc.message}",
                                retryable=exc.retryable) from None
        await s.sftp.mkdir(tmp)
        for rel in dirs:  # sorted: parents first
            await s.sftp.mkdir(posixpath.join(tmp, rel))
        entries: list[tuple[str, Moved]] = []

        async def one(rel: str, path: Path) -> None:
            entries.append((rel, await self._put_file(s, remote, path, posixpath.join(tmp, rel),
                                                      posixpath.join(remote.path, rel),
                                                      verify=False)))

        await self._each(s, files, one)
        # What landed, by one listing per directory rather than a stat per file.
        landed, _ = await _remote_tree(s.sftp, dataclasses.replace(remote, path=tmp))
        sent = sorted((rel, m.size) for rel, m in entries)
        if landed != sent:
            rel, size = sorted(set(sent) - set(landed))[0]
            got = dict(landed).get(rel, 0)
            raise TransferError(remote.url, f"{posixpath.join(remote.path, rel)}: {got} bytes "
                                f"landed of {size} sent")
        return self._total(entries)

    async def _put_file(self, s: _Session, remote: Remote, src: Path, dst: str, name: str,
                        *, verify: bool = True) -> Moved:
        """Write local ``src`` to a new remote file ``dst`` (``name`` once in place); with
        ``verify``, its size there is checked here (trees check theirs at once)."""
        source = _LocalReader(src, self.checksum)
        landed = -1
        try:
            async with s.limiter, s.sftp.open(dst, "xb", encoding=None, block_size=0) as f:
                sent = await _upload(f, source, s.write_len)
                if verify:
                    landed = (await f.stat()).size or 0
        except (TransferError, _At):
            raise
        except Exception as exc:
            raise _At(name, exc) from None
        finally:
            if source.file is not None:  # only on error: the last read closes it
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(source.close)
        if not source.before == sent == source.after:
            raise TransferError(remote.url, f"{src} changed while it was sent: "
                                f"{source.before} bytes before, {sent} sent, "
                                f"{source.after} after")
        if verify and landed != sent:
            raise TransferError(remote.url, f"{name}: {landed} bytes landed of {sent} sent")
        return Moved(sent, source.hexdigest())

    # ------------------------------------------------------------------- helpers

    async def _each(self, s: _Session, work: Sequence[tuple[str, _T]],
                    fn: Callable[[str, _T], Coroutine[object, object, None]]) -> None:
        """Run ``fn`` on each entry, as many at once as the remote's limiter lets through
        (tasks start only a little ahead of it, so a tree of many files stays cheap)."""
        ahead = anyio.Semaphore(2 * self.max_concurrency)

        async def run_one(rel: str, x: _T) -> None:
            try:
                await fn(rel, x)
            finally:
                ahead.release()

        try:
            async with anyio.create_task_group() as tg:
                for rel, x in work:
                    await ahead.acquire()
                    tg.start_soon(run_one, rel, x)
        except* Exception as eg:
            raise _first(eg) from None

    def _total(self, entries: list[tuple[str, Moved]]) -> Moved:
        if self.checksum:
            return tree_digest(entries)
        return Moved(sum(m.size for _, m in entries), "")


# --------------------------------------------------------------------- streaming


async def _download(f: asyncssh.SFTPClientFile, size: int, block: int,
                    sink: _LocalWriter) -> int:
    """Read ``f``, ``size`` bytes by its stat, with up to ``DEPTH`` requests in flight;
    ``sink`` gets the data in order (in a worker thread, while later blocks arrive).

    Returns the bytes read: fewer than ``size`` when the file shrank meanwhile, more when
    it grew. The reads cover one byte past ``size``: a file that grew shows it at no extra
    request, and one that did not ends exactly there (which also verifies the size
    without another stat). Block ``k`` is read by lane ``k % DEPTH``: each lane is one
    task reading its blocks in turn, at most one ahead of the writer.
    """
    end = size + 1
    nblocks = -(-end // block)
    lanes = [anyio.create_memory_object_stream[bytes](1) for _ in range(min(DEPTH, nblocks))]
    chunks_in, chunks_out = anyio.create_memory_object_stream[tuple[list[bytes], bool]](2)
    got = 0

    def expected(k: int) -> int:
        """Bytes block ``k`` holds if the file is still ``size`` long."""
        return min(block, size - k * block)

    async def fetch(lane: int, out: MemoryObjectSendStream[bytes]) -> None:
        async with out:
            for k in range(lane, nblocks, len(lanes)):
                offset = k * block
                need = expected(k)
                data = cast(bytes, await f.read(min(block, end - offset), offset))
                while len(data) < need:  # a short read: ask for the rest
                    more = cast(bytes, await f.read(need - len(data), offset + len(data)))
                    if not more:
                        break
                    data += more
                await out.send(data)
                if len(data) < need:
                    return  # end of file before ``size``

    async def collect() -> None:
        nonlocal got
        pending: list[bytes] = []
        pending_len = 0
        for k in range(nblocks):
            try:
                data = await lanes[k % len(lanes)][1].receive()
            except anyio.EndOfStream:
                break
            got += len(data)
            pending.append(data)
            pending_len += len(data)
            if len(data) < expected(k):
                break  # the file shrank: the caller reports it
            if pending_len >= IO_CHUNK:
                await chunks_in.send((pending, False))
                pending, pending_len = [], 0
        await chunks_in.send((pending, True))

    async def write() -> None:
        async with chunks_out:
            async for chunks, last in chunks_out:
                await anyio.to_thread.run_sync(sink.write, chunks, last)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(write)
            async with chunks_in, anyio.create_task_group() as readers:
                for lane, (out, _) in enumerate(lanes):
                    readers.start_soon(fetch, lane, out)
                await collect()
                readers.cancel_scope.cancel()  # lanes past a short end of file
    except* Exception as eg:
        raise _first(eg) from None
    finally:  # also those of tasks cancelled before they started
        for out, inp in lanes:
            out.close()
            inp.close()
        chunks_in.close()
        chunks_out.close()
    return got


async def _upload(f: asyncssh.SFTPClientFile, source: _LocalReader, block: int) -> int:
    """Write all of ``source`` to ``f`` with up to ``DEPTH`` requests in flight, from as
    many writer tasks; the next chunk is read (and hashed) in a worker thread meanwhile.
    Returns bytes sent."""
    sent = 0

    async def put(blocks: MemoryObjectReceiveStream[tuple[int, bytes]]) -> None:
        async with blocks:
            async for offset, data in blocks:
                await f.write(data, offset)

    chunk = await anyio.to_thread.run_sync(source.read)
    # A file of one chunk needs no more writers than it has blocks.
    writers = max(1, -(-len(chunk) // block)) if source.eof else DEPTH
    blocks_in, blocks_out = anyio.create_memory_object_stream[tuple[int, bytes]](DEPTH)
    try:
        async with anyio.create_task_group() as tg:
            async with blocks_out:
                for _ in range(min(DEPTH, writers)):
                    tg.start_soon(put, blocks_out.clone())
            async with blocks_in:
                while True:
                    for i in range(0, len(chunk), block):
                        await blocks_in.send((sent + i, chunk[i:i + block]))
                    sent += len(chunk)
                    if source.eof:
                        break
                    chunk = await anyio.to_thread.run_sync(source.read)
    except* Exception as eg:
        raise _first(eg) from None
    finally:  # also those of tasks cancelled before they started
        blocks_in.close()
        blocks_out.close()
    return sent


class _LocalWriter:
    """A new local file, written (and hashed) in worker threads; opened on first use and
    closed by the last write, so a small file costs one thread hop."""

    def __init__(self, path: Path, checksum: bool) -> None:
        self.path = path
        self.hash = hashlib.sha256() if checksum else None
        self.size = 0
        self.file: IO[bytes] | None = None
        self.moved: Moved | None = None

    def write(self, chunks: list[bytes], last: bool) -> None:
        if self.file is None:
            self.file = open(self.path, "xb")  # noqa: SIM115 - closed below or by close()
        for c in chunks:
            if self.hash is not None:
                self.hash.update(c)
            self.file.write(c)
            self.size += len(c)
        if last:
            self.close()
            self.moved = Moved(self.size, self.hash.hexdigest() if self.hash else "")

    def close(self) -> None:
        if self.file is not None:
            f, self.file = self.file, None
            f.close()


class _LocalReader:
    """A local file read (and hashed) in ``IO_CHUNK`` pieces in worker threads."""

    def __init__(self, path: Path, checksum: bool) -> None:
        self.path = path
        self.hash = hashlib.sha256() if checksum else None
        self.file: IO[bytes] | None = None
        self.eof = False
        self.before = self.after = -1

    def read(self) -> bytes:
        if self.file is None:
            self.file = open(self.path, "rb")  # noqa: SIM115 - closed by close()
            self.before = os.fstat(self.file.fileno()).st_size
        data = self.file.read(IO_CHUNK)
        if self.hash is not None:
            self.hash.update(data)
        if len(data) < IO_CHUNK:
            self.eof = True
            self.after = os.fstat(self.file.fileno()).st_size
            self.close()
        return data

    def hexdigest(self) -> str:
        return self.hash.hexdigest() if self.hash is not None else ""

    def close(self) -> None:
        if self.file is not None:
            f, self.file = self.file, None
            f.close()


# ------------------------------------------------------------------------- trees


async def _remote_tree(sftp: asyncssh.SFTPClient,
                       remote: Remote) -> tuple[list[tuple[str, int]], list[str]]:
    """Regular files (relative path, size) and directories under ``remote.path``, sorted.

    Symbolic links are refused, as in :func:`~.base.tree_files`.
    """
    files: list[tuple[str, int]] = []
    dirs: list[str] = []
    todo = [""]
    while todo:
        rel = todo.pop()
        path = posixpath.join(remote.path, rel) if rel else remote.path
        try:
            names = await sftp.readdir(path)
        except Exception as exc:
            raise _At(path, exc) from None
        for n in names:
            name = cast(str, n.filename)
            if name in (".", ".."):
                continue
            r = posixpath.join(rel, name) if rel else name
            kind = n.attrs.type
            if kind == asyncssh.FILEXFER_TYPE_DIRECTORY:
                dirs.append(r)
                todo.append(r)
            elif kind == asyncssh.FILEXFER_TYPE_REGULAR:
                files.append((r, n.attrs.size or 0))
            elif kind == asyncssh.FILEXFER_TYPE_SYMLINK:
                raise TransferError(remote.url, f"{r} is a symbolic link; trees with links "
                                    "are not transferred", retryable=False)
            else:
                raise TransferError(remote.url, f"{r} is not a regular file or directory; "
                                    "such trees are not transferred", retryable=False)
    return sorted(files), sorted(dirs)


async def _install(sftp: asyncssh.SFTPClient, tmp: str, final: str, is_dir: bool) -> None:
    """Rename the complete remote ``tmp`` to ``final``, replacing what is there."""
    try:
        existing = await sftp.lstat(final)
    except asyncssh.SFTPNoSuchFile:
        existing = None
    if existing is not None and (is_dir or existing.type == asyncssh.FILEXFER_TYPE_DIRECTORY):
        # rename(2) will not replace a non-empty directory: move it aside first.
        old = posixpath.join(posixpath.dirname(final),
                             partial_path(Path(posixpath.basename(final))).name)
        await sftp.rename(final, old)
        await sftp.rename(tmp, final)
        with anyio.move_on_after(CLEANUP_TIMEOUT, shield=True):
            with contextlib.suppress(Exception):
                await sftp.rmtree(old, ignore_errors=True)
        return
    try:
        await sftp.posix_rename(tmp, final)
    except asyncssh.SFTPOpUnsupported:
        # SFTP v3's rename refuses to replace a file: not atomic on such servers.
        if existing is not None:
            await sftp.remove(final)
        await sftp.rename(tmp, final)


# ------------------------------------------------------------------------ errors


class _At(Exception):
    """``error`` happened on remote ``path`` (translated by :func:`_translate` in ``run``)."""

    def __init__(self, path: str, error: Exception) -> None:
        super().__init__(path, error)
        self.path = path
        self.error = error


def _translate(exc: BaseException, remote: Remote, path: str) -> TransferError:
    """A TransferError for ``remote.url`` saying what went wrong with ``path``."""
    url = remote.url
    if isinstance(exc, TransferError):
        if exc.url == url:
            return exc
        return TransferError(url, exc.message, retryable=exc.retryable)
    if isinstance(exc, asyncssh.SFTPNoSuchFile | asyncssh.SFTPNoSuchPath):
        # Retried: data from an instrument may still be on its way.
        return TransferError(url, f"{path}: No such file or directory on {remote.host}")
    if isinstance(exc, asyncssh.SFTPPermissionDenied):
        return TransferError(url, f"{path}: Permission denied on {remote.host}",
                             retryable=False)
    if isinstance(exc, asyncssh.SFTPNoSpaceOnFilesystem | asyncssh.SFTPQuotaExceeded):
        return TransferError(url, f"{path}: {exc.reason} on {remote.host}")
    if _connection_lost(exc):
        return TransferError(url, f"the SSH connection to {remote.host} was lost while "
                             f"moving {path}")
    if isinstance(exc, asyncssh.SFTPError):
        return TransferError(url, f"{path}: {exc.reason} (SFTP error {exc.code} "
                             f"from {remote.host})")
    if isinstance(exc, asyncssh.Error):
        return TransferError(url, f"{path}: SSH error from {remote.host}: {exc.reason}")
    if isinstance(exc, OSError):
        where = exc.filename or path
        return TransferError(url, f"{where}: {exc.strerror or exc} (on this site)",
                             retryable=not isinstance(exc, PermissionError | FileNotFoundError))
    return TransferError(url, f"{path}: {type(exc).__name__}: {exc}")


def _connection_lost(exc: BaseException) -> bool:
    return isinstance(exc, asyncssh.ConnectionLost | asyncssh.SFTPConnectionLost
                      | asyncssh.SFTPNoConnection | BrokenPipeError | ConnectionResetError)


def _first(eg: BaseExceptionGroup[Exception]) -> Exception:
    """The first leaf of a task group's exceptions (they all come from one file)."""
    exc: BaseException = eg
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return cast(Exception, exc)


async def _close(conn: asyncssh.SSHClientConnection | None) -> None:
    if conn is None:
        return
    with anyio.move_on_after(CLEANUP_TIMEOUT, shield=True):
        with contextlib.suppress(Exception):
            conn.close()
            await conn.wait_closed()
