"""Every exception Tidewater raises, in one tree::

    TidewaterError
    ├── ConfigError                 bad settings or command-line input
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
    ├── CodecError (also ValueError) a function task's value cannot be encoded or decoded
    ├── SchedulerError              a batch scheduler refused or failed
    │   ├── SchedulerCommandError   a scheduler command exited non-zero (argv, stdout, stderr, rc)
    │   └── SchedulerOutputError    a scheduler command's output could not be read
    ├── TransferError               moving a task's input or output failed (url, retryable)
    └── TaskFailed                  ``Task.result(check=True)`` on a task that did not finish

Errors raised by websockets, aiohttp and aiosqlite are translated at the
module that uses them and never escape it.
"""

from __future__ import annotations


class TidewaterError(Exception):
    """Base of every Tidewater error."""


class ConfigError(TidewaterError):
    pass


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


class CodecError(TidewaterError, ValueError):
    """A value that cannot be encoded for a function task, or bytes that are not a valid encoding."""


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


class TaskFailed(TidewaterError):
    def __init__(self, task_id: int, state: str, exit_code: int | None, error: str) -> None:
        self.task_id = task_id
        self.state = state
        self.exit_code = exit_code
        self.error = error
        detail = f" (exit code {exit_code})" if exit_code is not None else ""
        why = f": {error}" if error else ""
        super().__init__(f"task {task_id} ended {state}{detail}{why}")


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

