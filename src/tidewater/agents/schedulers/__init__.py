"""Batch scheduler adapters (pure) and the client that runs their commands.

``get_scheduler("slurm")`` and friends build an adapter by name;
:class:`SchedulerClient` runs it through a :class:`CommandRunner`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tidewater.agents.schedulers.base import (
    FINAL_JOB_STATES,
    JOB_STATES,
    CommandResult,
    CommandRunner,
    JobRequest,
    JobState,
    JobStatus,
    PartitionLimits,
    Scheduler,
    SchedulerClient,
    quote_argv,
    run_command,
)
from tidewater.agents.schedulers.cobalt import CobaltScheduler
from tidewater.agents.schedulers.local import LocalScheduler
from tidewater.agents.schedulers.lsf import LsfScheduler
from tidewater.agents.schedulers.pbs import PbsScheduler
from tidewater.agents.schedulers.slurm import SlurmScheduler
from tidewater.errors import ConfigError

SCHEDULERS: dict[str, Callable[..., Scheduler]] = {
    "slurm": SlurmScheduler,
    "pbs": PbsScheduler,
    "lsf": LsfScheduler,
    "cobalt": CobaltScheduler,
    "local": LocalScheduler,
}


def get_scheduler(name: str, **options: Any) -> Scheduler:
    """The adapter called ``name`` (slurm, pbs, lsf, cobalt, local), built with ``options``.

    Raises ConfigError for an unknown name (listing the known ones) or an
    option the adapter does not take.
    """
    try:
        factory = SCHEDULERS[name.lower()]
    except KeyError:
        known = ", ".join(sorted(SCHEDULERS))
        raise ConfigError(f"unknown scheduler {name!r}; known schedulers: {known}") from None
    try:
        return factory(**options)
    except TypeError as exc:
        raise ConfigError(f"bad options for scheduler {name!r}: {exc}") from None


__all__ = [
    "FINAL_JOB_STATES",
    "JOB_STATES",
    "SCHEDULERS",
    "CobaltScheduler",
    "CommandResult",
    "CommandRunner",
    "JobRequest",
    "JobState",
    "JobStatus",
    "LocalScheduler",
    "LsfScheduler",
    "PartitionLimits",
    "PbsScheduler",
    "Scheduler",
    "SchedulerClient",
    "SlurmScheduler",
    "get_scheduler",
    "quote_argv",
    "run_command",
]
