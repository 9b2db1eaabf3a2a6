"""The exception tree: codes map back to classes, messages carry their facts."""

from __future__ import annotations

import pytest

from tidewater import errors as E


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        ("not_found", E.NotFound),
        ("bad_app", E.AppError),
        ("bad_params", E.ParamError),
        ("limit", E.LimitExceeded),
        ("bad_request", E.InvalidRequest),
    ],
)
def test_from_code_maps_codes_to_classes(code: str, cls: type[E.InvalidRequest]) -> None:
    exc = E.from_code(code, "what went wrong")
    assert type(exc) is cls
    assert exc.code == code
    assert exc.message == "what went wrong"
    assert str(exc) == "what went wrong"


def test_from_code_unknown_code_is_invalid_request_keeping_the_code() -> None:
    exc = E.from_code("brand_new_code", "m")
    assert type(exc) is E.InvalidRequest
    assert exc.code == "brand_new_code"


@pytest.mark.parametrize("cls", [E.NotFound, E.AppError, E.ParamError, E.LimitExceeded])
def test_class_code_round_trips(cls: type[E.InvalidRequest]) -> None:
    exc = cls("m")
    assert type(E.from_code(exc.code, exc.message)) is cls


def test_code_override_does_not_leak_to_class() -> None:
    E.InvalidRequest("m", code="custom")
    assert E.InvalidRequest("m").code == "bad_request"


def test_tree_shape() -> None:
    assert issubclass(E.ParamError, E.AppError)
    for sub in (E.NotFound, E.AppError, E.LimitExceeded):
        assert issubclass(sub, E.InvalidRequest)
    for link in (E.ConnectionClosed, E.ConnectionBroken, E.TLSError):
        assert issubclass(link, E.ConnectionError_)
    assert not issubclass(E.TLSError, E.ConnectionBroken)  # not retried
    assert not issubclass(E.ConnectionClosed, E.ConnectionBroken)
    assert not issubclass(E.ConnectionBroken, E.ConnectionClosed)
    for cls in (E.ConfigError, E.IllegalTransition, E.InvalidRequest, E.AuthError,
                E.ConnectionError_, E.StoreError, E.TaskFailed):
        assert issubclass(cls, E.TidewaterError)
    assert issubclass(E.TidewaterError, Exception)


def test_task_failed_message() -> None:
    exc = E.TaskFailed(42, "FAILED", 3, "segfault in analyze")
    msg = str(exc)
    assert "42" in msg
    assert "FAILED" in msg
    assert "exit code 3" in msg
    assert "segfault in analyze" in msg
    assert (exc.task_id, exc.state, exc.exit_code, exc.error) == (
        42, "FAILED", 3, "segfault in analyze")


def test_task_failed_exit_code_zero_is_shown() -> None:
    assert "exit code 0" in str(E.TaskFailed(1, "KILLED", 0, ""))


def test_task_failed_without_exit_code_or_error() -> None:
    msg = str(E.TaskFailed(5, "KILLED", None, ""))
    assert msg == "task 5 ended KILLED"


def test_illegal_transition_and_auth_error_messages() -> None:
    exc = E.IllegalTransition("READY", "RUNNING")
    assert (exc.src, exc.dst) == ("READY", "RUNNING")
    assert "READY -> RUNNING" in str(exc)
    auth = E.AuthError("token expired")
    assert auth.reason == "token expired"
    assert "token expired" in str(auth)
