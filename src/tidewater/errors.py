"""Every exception Tidewater raises, in one tree::

    TidewaterError
    ├── ConfigError                 bad settings or command-line input
    │   └── CannotListen            a listener could not bind its address (what, host, port)
    ├── IllegalTransition           a task state change not in the table
    ├── InvalidRequest              a request the controller refuses (code, message)
    │   ├── NotFound                no such object for this user
    │   ├── AppError                unknown app, bad template, bad parameters
    │   └── LimitExceeded           frame / batch / payload limits
    ├── AuthError                   wrong or missing token, Reject at handshake
    ├── ConnectionError_            the link to the controller
    │   ├── ConnectionClosed        the peer closed it cleanly
    │   ├── ConnectionBroken        it broke (reset, timeout, refused)
    │   └── TLSError                the TLS handshake failed: certificate not verified, TLS mismatch
    ├── StoreError                  the database failed
    │   ├── LeadershipLost          this controller no longer holds the store's leader lock
    │   └── StoreRefused            a --db that is not a store this Tidewater may open (where,
    │       │                       problem, advice); the file or database is left untouched
    │       ├── StoreCorrupt        not a database, or a damaged one
    │       ├── StoreForeign        someone else's database (tables)
    │       └── StoreTooNew         migrated by a newer Tidewater (version, supported)
    ├── CodecError (also ValueError) a function task's value cannot be encoded or decoded
    ├── PathEscape (also ValueError) a path on a site would leave its directory (path, base)
    │   └── WorkdirError            a task's work directory outside the pilot's root
    ├── TaskFileError               the pilot could not write a task's inline input (path)
    ├── WorkdirUnusable             the pilot's own work filesystem failed (root, reason): it stops
    ├── WorkerStartError (also RuntimeError) a function-task worker did not start (argv)
    ├── SchedulerError              a batch scheduler refused or failed
    │   ├── SchedulerCommandError   a scheduler command exited non-zero (argv, stdout, stderr, rc)
    │   ├── SchedulerOutputError    a scheduler command's output could not be read
    │   └── NoSuchJob (also LookupError) the local fork scheduler never had this job
    ├── TransferError               moving a task's input or output failed (url, retryable)
    └── TaskFailed                  ``Task.value()``, ``result(check=True)`` on a task that did not finish
        └── Remote<Builtin>         a function task's function raised a <Builtin> (ValueError,
                                    KeyError, OSError...): also an instance of it (made on demand)

Errors raised by websockets, aiohttp and aiosqlite are translated at the
module that uses them and never escape it. A second base (``ValueError``,
``RuntimeError``, ``LookupError``) keeps a class catchable as what it was
before it joined the tree.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import ClassVar


class TidewaterError(Exception):
    """Base of every Tidewater error."""


class ConfigError(TidewaterError):
    pass


class CannotListen(ConfigError):
    """A listener (the controller's, the dashboard's, a relay's) could not bind its address."""

    def __init__(self, what: str, host: str, port: int, reason: str, option: str) -> None:
        self.what, self.host, self.port, self.reason = what, host, port, reason
        shown = f"[{host}]" if ":" in host else host
        super().__init__(
            f"cannot listen for {what} on {shown}:{port}: {reason} (is another program, "
            f"or another controller, using it? stop it, or choose another with {option})")


def bind_reason(exc: OSError) -> str:
    """The short reason a bind failed ("Address already in use"), without the library's
    restatement of the address."""
    return os.strerror(exc.errno) if exc.errno else str(exc)


class IllegalTransition(TidewaterError):
    def __init__(self, src: str, dst: str) -> None:
        self.src = src
        self.dst = dst
        super().__init__(f"illegal task transition {src} -> {dst}")


class InvalidRequest(TidewaterError):
    """The controller refused a request; nothing was changed.

    ``code`` is a stable machine-readable word (``not_found``, ``bad_app``,
    ``bad_params``, ``limit``, ``bad_request``); ``message`` speaks to the user.
    """

    code = "bad_request"

    def __init__(self, message: str, code: str | None = None) -> None:
        if code is not None:
            self.code = code
        self.message = message
        super().__init__(message)


class NotFound(InvalidRequest):
    code = "not_found"


class AppError(InvalidRequest):
    code = "bad_app"


class ParamError(AppError):
    code = "bad_params"


class LimitExceeded(InvalidRequest):
    code = "limit"


class AuthError(TidewaterError):
    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"authentication refused: {reason}")


class ConnectionError_(TidewaterError):  # noqa: N801 - avoid shadowing the builtin
    pass


class ConnectionClosed(ConnectionError_):
    """The controller closed the connection on purpose."""


class ConnectionBroken(ConnectionError_):
    """The connection failed: refused, reset or timed out."""


class TLSError(ConnectionError_):
    """TLS could not be set up with the controller; retrying will not help.

    The server's certificate did not verify against the CA in use, or one
    side speaks TLS and the other does not. ``url`` is the controller's
    address, ``reason`` what went wrong and what to do.
    """

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"TLS with {url} failed: {reason}")


class StoreError(TidewaterError):
    pass


class LeadershipLost(StoreError):
    """The connection holding the store's leader lock is gone (``store``: where, redacted).

    Another controller may hold the lock now, so this one must stop serving at once.
    """

    def __init__(self, store: str, why: str) -> None:
        self.store = store
        self.why = why
        super().__init__(f"lost the leader's lock on {store} ({why}): stopping so that two "
                         "controllers never serve at once")


class StoreRefused(StoreError):
    """A ``--db`` Tidewater will not open, nor write to: ``where`` (a file or a URL
    without its password), ``problem`` (what is wrong) and ``advice`` (what to do).
    The message is one line, naming all three."""

    def __init__(self, where: str, problem: str, advice: str) -> None:
        self.where = where
        self.problem = problem
        self.advice = advice
        super().__init__(f"refusing store {where}: {problem}; {advice} (it was left unchanged)")


class StoreCorrupt(StoreRefused):
    """Not a database at all, or one whose pages are damaged (``detail``: SQLite's words)."""

    def __init__(self, where: str, detail: str) -> None:
        self.detail = detail
        super().__init__(
            where, f"the file is not a SQLite database or is damaged ({detail})",
            f"restore it from a backup, or salvage what it holds with `sqlite3 {where} .recover`")


class StoreForeign(StoreRefused):
    """A database that holds other tables and is not marked as a Tidewater store."""

    def __init__(self, where: str, tables: list[str]) -> None:
        self.tables = tables
        shown = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
        super().__init__(where, f"it is not a Tidewater store: it holds other tables ({shown})",
                         "give --db a new file or an empty database")


class StoreTooNew(StoreRefused):
    """A store migrated by a newer Tidewater (schema ``version`` > ``supported``)."""

    def __init__(self, where: str, version: int, supported: int) -> None:
        self.version = version
        self.supported = supported
        super().__init__(
            where, f"it has schema version {version}, newer than this Tidewater's ({supported})",
            "upgrade Tidewater to open it")


class CodecError(TidewaterError, ValueError):
    """A value that cannot be encoded for a function task, or bytes that are not a valid encoding."""


class PathEscape(TidewaterError, ValueError):
    """A path that would leave the directory it must stay in (``..``, an absolute
    path, a symbolic link pointing out).

    ``path`` is the path as it was named, ``base`` the directory it must stay
    under, ``reason`` what is wrong with it (by default: it leaves ``base``).
    """

    _noun: ClassVar[str] = ""

    def __init__(self, path: str, base: str | os.PathLike[str], reason: str = "") -> None:
        self.path = path
        self.base = os.fspath(base)
        self.reason = reason or f"leaves {self.base}"
        super().__init__(f"{self._noun}{path!r} {self.reason}")


class WorkdirError(PathEscape):
    """A task's work directory that would lie outside the pilot's root.

    ``path`` is the work directory as the controller sent it, ``base`` the
    pilot's root.
    """

    _noun = "work directory "

    def __init__(self, workdir: str, root: str | os.PathLike[str]) -> None:
        super().__init__(workdir, root, f"escapes the pilot's root {os.fspath(root)}")


class WorkdirUnusable(TidewaterError):
    """The filesystem under a pilot's work root failed it (full, over quota, read-only,
    I/O errors): a fault of the pilot's node, not of the task that hit it. ``root`` is
    the pilot's work root, ``reason`` the system's words."""

    def __init__(self, pilot_id: str, root: str | os.PathLike[str], reason: str) -> None:
        self.pilot_id = pilot_id
        self.root = os.fspath(root)
        self.reason = reason
        super().__init__(f"pilot {pilot_id} cannot use its work directory {self.root}: "
                         f"{reason}; it stopped taking work (free the space or fix the "
                         "filesystem, then start it again)")


class TaskFileError(TidewaterError):
    """A task's inline input could not be written where the task expects it.

    ``path`` is the input's path in the task's work directory, ``reason``
    why it was not written; ``refused`` is True when the path itself was
    refused (it leads out of the work directory), False when writing failed.
    """

    def __init__(self, path: str, reason: str, *, refused: bool = False) -> None:
        self.path = path
        self.reason = reason
        self.refused = refused
        how = " refused:" if refused else ":"
        super().__init__(f"input {path!r}{how} {reason}")


class WorkerStartError(TidewaterError, RuntimeError):
    """A worker process for function tasks could not be started, or exited or hung
    before it was ready.

    ``argv`` is the worker's command line, ``reason`` what went wrong,
    ``returncode`` its exit status when it exited. ``spawned`` is False when
    the process could not even be created (no such interpreter).
    """

    def __init__(
        self, argv: Sequence[str], reason: str, *, returncode: int | None = None,
        spawned: bool = True,
    ) -> None:
        self.argv = list(argv)
        self.reason = reason
        self.returncode = returncode
        self.spawned = spawned
        cmd = " ".join(self.argv)
        if spawned:
            super().__init__(f"the worker process ({cmd}) {reason}")
        else:
            super().__init__(f"cannot start a worker process ({cmd}): {reason}")


class SchedulerError(TidewaterError):
    """A batch scheduler (Slurm, PBS, LSF, Cobalt, local) refused or failed."""


class SchedulerCommandError(SchedulerError):
    """A scheduler command failed; carries what was run and what it said."""

    def __init__(
        self, argv: list[str], returncode: int | None, stdout: str = "", stderr: str = "",
        reason: str = "",
    ) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.reason = reason
        said = (stderr.strip() or stdout.strip())[-2000:]
        how = reason or (f"exited {returncode}" if returncode is not None else "did not finish")
        msg = f"{' '.join(self.argv)!s} {how}"
        if said:
            msg += f": {said}"
        super().__init__(msg)


class SchedulerOutputError(SchedulerError):
    """A scheduler command succeeded but printed something we cannot read."""

    def __init__(self, what: str, output: str) -> None:
        self.what = what
        self.output = output
        super().__init__(f"cannot read {what} from scheduler output: {output[:500]!r}")


class NoSuchJob(SchedulerError, LookupError):
    """The local fork scheduler was asked about a job id its state directory never held.

    ``job_id`` is the id as asked, ``state_dir`` the directory searched.
    """

    def __init__(self, job_id: str, state_dir: Path) -> None:
        self.job_id = job_id
        self.state_dir = state_dir
        super().__init__(f"no job {job_id} in {state_dir}")


class TaskFailed(TidewaterError):
    """A task ended without finishing: FAILED or KILLED (``Task.value()``,
    ``Task.result(check=True)``, an executor future's ``result()``).

    ``task_id``, ``state``, ``exit_code`` and ``error`` (the controller's words)
    say what happened. When a function task's function raised, ``remote_type``
    is that exception's qualified type name (``builtins.ValueError``,
    ``mypkg.io.BadFrame``), ``remote_message`` its text and ``remote_traceback``
    the end of its traceback on the site (also attached as a note, so an
    uncaught one prints it); and the exception raised is an instance of a
    subclass of both TaskFailed and the nearest built-in exception the remote
    one derives from (:func:`remote_failure`), so ``except ValueError:`` catches
    a remote ``math.sqrt(-1)`` as it would a local one. Nothing is unpickled:
    only names of built-in classes are looked up (:func:`builtin_base`).
    """

    def __init__(
        self, task_id: int, state: str, exit_code: int | None, error: str, *,
        remote_type: str = "", remote_message: str = "", remote_traceback: str = "",
    ) -> None:
        self.task_id = task_id
        self.state = state
        self.exit_code = exit_code
        self.error = error
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback
        detail = f" (exit code {exit_code})" if exit_code is not None else ""
        why = f": {error}" if error else ""
        self.message = f"task {task_id} ended {state}{detail}{why}"
        # Not super().__init__(): in a Remote<Builtin> the next __init__ is the
        # built-in's (KeyError, UnicodeDecodeError, OSError), whose arguments mean
        # something else. args is what BaseException.__init__ would have set.
        self.args = (self.message,)
        if isinstance(self, SyntaxError):  # printed from its ``msg``, not from str()
            self.msg = self.message
        if remote_traceback:
            self.add_note(f"The remote traceback of task {task_id}:\n"
                          f"{remote_traceback.rstrip()}")

    def __str__(self) -> str:
        # Before the built-in's own __str__ (KeyError's repr, UnicodeError's fields).
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"

    def __reduce__(self) -> tuple[object, ...]:
        # The Remote<Builtin> classes are made at run time: pickle rebuilds them by
        # name (for an exception sent on through multiprocessing or a process pool).
        base = next((c.__name__ for c in type(self).__mro__[1:]
                     if c.__module__ == "builtins" and c not in (Exception, BaseException)), "")
        return (_rebuild, (base, self.task_id, self.state, self.exit_code, self.error,
                           self.remote_type, self.remote_message, self.remote_traceback))


_NEVER_RAISED_AS = (BaseExceptionGroup, StopIteration, StopAsyncIteration)
"""Built-ins a remote exception is never raised as: groups need their members, and a
StopIteration escaping from ``result()`` inside ``__next__`` would end a loop silently."""


def builtin_base(names: Iterable[object]) -> type[Exception] | None:
    """The first of ``names`` that names a built-in exception class (a class in
    :mod:`builtins`, subclass of Exception, not Exception itself), or None.

    ``names`` come from a worker (``RemoteError.builtins``) and may be anything:
    only a string that is the name of such a class in the ``builtins`` module
    maps to it; ``"os.system"``, ``"type"``, ``"SystemExit"``, ``"Exception"``,
    non-strings and the classes in :data:`_NEVER_RAISED_AS` map to nothing.
    Looks at the first 64 names. Pure; never raises.
    """
    for i, name in enumerate(names):
        if i >= 64:
            break
        if not isinstance(name, str):
            continue
        cls = vars(builtins).get(name)
        if (
            isinstance(cls, type) and issubclass(cls, Exception) and cls is not Exception
            and cls.__module__ == "builtins" and not issubclass(cls, _NEVER_RAISED_AS)
        ):
            return cls
    return None


_REMOTE_CLASSES: dict[type[Exception], type[TaskFailed]] = {}


def remote_class(base: type[Exception] | None) -> type[TaskFailed]:
    """``Remote<base>``: a subclass of TaskFailed and of the built-in ``base``, made once per
    base and kept (TaskFailed itself for None, or for a base that cannot be combined)."""
    if base is None or base.__module__ != "builtins" or not issubclass(base, Exception):
        return TaskFailed
    cls = _REMOTE_CLASSES.get(base)
    if cls is None:
        name = f"Remote{base.__name__}"
        try:
            cls = type(name, (TaskFailed, base), {
                "__module__": __name__, "__qualname__": name,
                "__doc__": f"A function task's function raised a {base.__name__} (or a "
                           "subclass of it).",
            })
        except TypeError:  # a layout that does not combine: raised as plain TaskFailed
            cls = TaskFailed
        # Under concurrent first uses two classes may be made; the first one kept wins.
        cls = _REMOTE_CLASSES.setdefault(base, cls)
    return cls


def remote_failure(
    task_id: int, state: str, exit_code: int | None, error: str, *, remote_type: str = "",
    builtin_names: Iterable[object] = (), remote_message: str = "", remote_traceback: str = "",
) -> TaskFailed:
    """The TaskFailed to raise for a task; an instance of ``Remote<Builtin>`` (see
    :func:`builtin_base`) when ``builtin_names`` (the remote exception's built-in
    ancestors, nearest first) name one. The built-in's own ``__init__`` is never
    called (TaskFailed's does not chain to it), so none reads arguments it would
    misread (UnicodeDecodeError wants five, OSError an errno, KeyError shows a
    repr): ``args`` is the message. Every built-in is tested. Never raises."""
    cls = remote_class(builtin_base(builtin_names))
    return cls(task_id, state, exit_code, error, remote_type=remote_type,
               remote_message=remote_message, remote_traceback=remote_traceback)


def _rebuild(base: str, task_id: int, state: str, exit_code: int | None, error: str,
             remote_type: str, remote_message: str, remote_traceback: str) -> TaskFailed:
    return remote_failure(task_id, state, exit_code, error, remote_type=remote_type,
                          builtin_names=[base], remote_message=remote_message,
                          remote_traceback=remote_traceback)


_BY_CODE: dict[str, type[InvalidRequest]] = {
    "not_found": NotFound,
    "bad_app": AppError,
    "bad_params": ParamError,
    "limit": LimitExceeded,
}


def from_code(code: str, message: str) -> InvalidRequest:
    """Rebuild the exception the controller raised from its wire ``Error``."""
    cls = _BY_CODE.get(code, InvalidRequest)
    return cls(message, code)


class TransferError(TidewaterError):
    """Moving one input or output failed.

    ``url`` is the remote side, ``message`` the backend's own words (what
    the user sees on the failed task). ``retryable`` is False when trying
    again cannot help (a missing remote path, a refused key, a bad URL).
    """

    def __init__(self, url: str, message: str, *, retryable: bool = True) -> None:
        self.url = url
        self.message = message
        self.retryable = retryable
        super().__init__(f"{url}: {message}")

