"""Tidewater: push analysis tasks from an instrument to HPC sites, results in seconds.

The public API::

    import tidewater
    async with tidewater.connect(url, token=token) as client:
        task = await client.submit("hello", site="laptop", params={"name": "world"})
        info = await task.result()
"""

from .client import Client, Task, Watcher, connect
from .client_sync import RemoteExecutor, RemoteFuture, SyncClient, SyncTask, connect_sync
from .errors import (
    AppError,
    AuthError,
    CodecError,
    ConfigError,
    ConnectionBroken,
    ConnectionClosed,
    InvalidRequest,
    LimitExceeded,
    NotFound,
    ParamError,
    SchedulerCommandError,
    SchedulerError,
    TaskFailed,
    TidewaterError,
    TLSError,
)
from .latency import LatencyRow
from .proto import (
    BatchJobInfo,
    JobSpec,
    ParamSpec,
    RemoteError,
    Resources,
    Route,
    RouteEstimate,
    TaskCounts,
    TaskEvent,
    TaskFilter,
    TaskInfo,
    TaskPhases,
    TaskSpec,
)
from .states import TaskState

__version__ = "0.1.0"

__all__ = [
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
    "TaskEvent",
    "TaskFailed",
    "TaskFilter",
    "TaskCounts",
    "TaskInfo",
    "TaskPhases",
    "TaskSpec",
    "TaskState",
    "TidewaterError",
    "Watcher",
    "connect",
    "connect_sync",
]
