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
    "RemoteExecutor",
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
