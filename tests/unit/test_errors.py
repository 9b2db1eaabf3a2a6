"""The exception tree: codes map back to classes, messages carry their facts."""

from __future__ import annotations

from pathlib import Path

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


def test_site_and_pilot_errors_have_their_place_in_the_tree() -> None:
    assert issubclass(E.PathEscape, E.TidewaterError)
    assert issubclass(E.PathEscape, ValueError)  # as before it joined the tree
    assert issubclass(E.WorkdirError, E.PathEscape)
    assert issubclass(E.TaskFileError, E.TidewaterError)
    assert issubclass(E.WorkerStartError, E.TidewaterError)
    assert issubclass(E.WorkerStartError, RuntimeError)  # the pilot's hooks catch RuntimeError
    assert issubclass(E.NoSuchJob, E.SchedulerError)
    assert issubclass(E.NoSuchJob, LookupError)
    for cls in (E.TaskFileError, E.WorkerStartError, E.NoSuchJob):
        assert not issubclass(cls, E.PathEscape)
    assert not issubclass(E.NoSuchJob, E.InvalidRequest)  # not the controller's NotFound


def test_the_old_modules_still_offer_them() -> None:
    from tidewater import paths
    from tidewater.agents.schedulers import localexec
    from tidewater.pilot import runner, taskfiles, workers

    assert paths.PathEscape is E.PathEscape
    assert runner.WorkdirError is E.WorkdirError
    assert taskfiles.TaskFileError is E.TaskFileError
    assert workers.WorkerStartError is E.WorkerStartError
    assert localexec.NoSuchJob is E.NoSuchJob


def test_path_escape_message_and_fields() -> None:
    exc = E.PathEscape("../x", Path("/work/tasks/7"))
    assert (exc.path, exc.base, exc.reason) == ("../x", "/work/tasks/7", "leaves /work/tasks/7")
    assert str(exc) == "'../x' leaves /work/tasks/7"
    absolute = E.PathEscape("/etc/passwd", "/work", "is not a relative path")
    assert str(absolute) == "'/etc/passwd' is not a relative path"


def test_confine_raises_path_escape_saying_where(tmp_path: Path) -> None:
    from tidewater.paths import confine

    with pytest.raises(E.PathEscape) as info:
        confine(tmp_path, "a/../..")
    assert (info.value.path, info.value.base) == ("a/../..", str(tmp_path.resolve()))
    assert str(info.value) == f"'a/../..' leaves {tmp_path.resolve()}"


def test_workdir_error_message_and_fields(tmp_path: Path) -> None:
    from tidewater.pilot.runner import task_dir

    root = tmp_path.resolve()
    with pytest.raises(E.WorkdirError) as info:
        task_dir(root, "../elsewhere")
    exc = info.value
    assert (exc.path, exc.base) == ("../elsewhere", str(root))
    assert str(exc) == f"work directory '../elsewhere' escapes the pilot's root {root}"


def test_task_file_error_messages(tmp_path: Path) -> None:
    from tidewater.pilot.taskfiles import write_inputs

    with pytest.raises(E.TaskFileError) as info:
        write_inputs(tmp_path, [("../x", b"")])
    exc = info.value
    assert (exc.path, exc.refused) == ("../x", True)
    assert str(exc) == f"input '../x' refused: '../x' leaves {tmp_path.resolve()}"
    (tmp_path / "d").mkdir()  # a directory where the input's file should go
    with pytest.raises(E.TaskFileError) as info:
        write_inputs(tmp_path, [("d", b"")])
    exc = info.value
    assert (exc.path, exc.refused) == ("d", False)
    assert str(exc) == f"input 'd': {exc.reason}" and exc.reason == "Is a directory"


def test_worker_start_error_messages_name_the_command() -> None:
    argv = ["/opt/py", "-P", "-c", "x"]
    exc = E.WorkerStartError(argv, "exited with code 1 before it was ready", returncode=1)
    assert (exc.argv, exc.returncode, exc.spawned) == (argv, 1, True)
    assert str(exc) == "the worker process (/opt/py -P -c x) exited with code 1 before it was ready"
    missing = E.WorkerStartError(argv, "No such file or directory", spawned=False)
    assert str(missing) == "cannot start a worker process (/opt/py -P -c x): No such file or directory"
    assert missing.returncode is None


def test_no_such_job_message_and_fields(tmp_path: Path) -> None:
    from tidewater.agents.schedulers.localexec import cancel_job

    with pytest.raises(E.NoSuchJob) as info:
        cancel_job(tmp_path, "42")
    assert (info.value.job_id, info.value.state_dir) == ("42", tmp_path)
    assert str(info.value) == f"no job 42 in {tmp_path}"
