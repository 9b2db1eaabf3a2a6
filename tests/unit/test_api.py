"""The public API is pinned: adding or removing a name is a deliberate change."""

from __future__ import annotations

import tidewater

PUBLIC = [
    "AppError",
    "AuthError",
    "BatchJobInfo",
    "Client",
    "CodecError",
    "ConfigError",
    "ConnectionBroken",
    "ConnectionClosed",
    "InvalidRequest",
    "JobSpec",
    "LatencyRow",
    "LimitExceeded",
    "NotFound",
    "ParamError",
    "ParamSpec",
    "RemoteError",
    "RemoteExecutor",
    "RemoteFuture",
    "Resources",
    "Route",
    "RouteEstimate",
    "SchedulerCommandError",
    "SchedulerError",
    "SyncClient",
    "SyncTask",
    "TLSError",
    "Task",
    "TaskCounts",
    "TaskEvent",
    "TaskFailed",
    "TaskFilter",
    "TaskInfo",
    "TaskPhases",
    "TaskSpec",
    "TaskState",
    "TidewaterError",
    "Watcher",
    "connect",
    "connect_sync",
]


def test_all_is_pinned() -> None:
    assert sorted(tidewater.__all__) == PUBLIC
    assert len(tidewater.__all__) == len(set(tidewater.__all__))


def test_every_public_name_resolves() -> None:
    for name in tidewater.__all__:
        assert getattr(tidewater, name) is not None, name


def test_star_import_gives_exactly_the_public_names() -> None:
    ns: dict[str, object] = {}
    exec("from tidewater import *", ns)
    assert sorted(k for k in ns if k != "__builtins__") == PUBLIC


def test_public_names_are_the_real_objects() -> None:
    from tidewater import client, errors, proto, states

    assert tidewater.TaskState is states.TaskState
    assert tidewater.TaskSpec is proto.TaskSpec
    assert tidewater.TaskPhases is proto.TaskPhases
    assert tidewater.TaskCounts is proto.TaskCounts
    assert tidewater.TidewaterError is errors.TidewaterError
    assert tidewater.connect is client.connect
    assert callable(tidewater.connect_sync)


def test_version() -> None:
    assert tidewater.__version__ == "0.1.0"


def test_the_task_lifecycle_is_on_both_clients() -> None:
    """Retry, resubmit, events, logs and done(): async and blocking alike, same keywords."""
    import inspect

    from tidewater import Client, SyncClient, SyncTask, Task

    for name in ("retry", "resubmit", "events", "logs", "follow_logs", "tasks"):
        assert callable(getattr(Client, name)), name
        assert callable(getattr(SyncClient, name)), name
    assert callable(Task.done) and callable(SyncTask.done)
    assert not inspect.iscoroutinefunction(Task.done)
    retry = inspect.signature(Client.retry).parameters
    assert [p for p in retry if retry[p].kind is inspect.Parameter.KEYWORD_ONLY] == [
        "state", "tags", "site", "app", "since", "until"]
    events = inspect.signature(Client.events).parameters
    assert list(events)[1:4] == ["task", "since_event", "limit"]
    assert events["limit"].default == 1000
    logs = inspect.signature(Client.logs).parameters
    assert (logs["stderr"].default, logs["offset"].default) == (False, 0)
    tasks = inspect.signature(Client.tasks).parameters
    assert tasks["since"].default is None and tasks["until"].default is None
    assert tidewater.TaskInfo(id=1, app="a", site="s", state="READY").parents == []
    assert tidewater.TaskFilter().since is None and tidewater.TaskFilter().until is None
