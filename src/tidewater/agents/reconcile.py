"""What the agent must do after reading the scheduler's listing. Pure.

:func:`diff` holds the agent's batch jobs against one listing and returns
commands; :class:`~tidewater.agents.site.Agent` runs the listing, calls it and
executes them in order. No await, no clock (``now`` is an argument), no
scheduler: the cases are tested on recorded listings.

The rules, per job the agent tracks (final or busy jobs are left alone):

* **Not submitted yet** (no scheduler id). A job of that unique name in the
  listing is *adopted*: the agent died between ``sbatch`` and reporting its
  id, and submitting again would run the job twice. Otherwise a job the
  controller wants stopped finishes unsubmitted, and a ``pending_submission``
  one is submitted.
* **Submitted.** A job missing from the listing is only *noted* the first
  time (a scheduler may list a new job late) and called finished once it has
  been missing for ``grace`` seconds. A job the autoscaler no longer needs is
  cancelled only while the scheduler still has it queued (a started job's
  pilot may be running a task already). A job the controller wants stopped is
  cancelled; after the cancel, :func:`listed_change` says what the listing
  then means for it. Otherwise the listing's state is reported when it
  differs, with the scheduler's reason (TIMEOUT, exit code).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from .. import states
from .schedulers.base import JobStatus


def job_name(site: str, job_id: int, tag: str) -> str:
    """The scheduler-side name of a batch job: unique to this site *and* this controller.

    The controller's site tag keeps a controller started on a fresh store (ids
    from 1 again) from adopting jobs of an earlier one under the same site name,
    and does not change when the site's token is rotated.
    """
    return f"tw-{site}-{job_id}-{tag}"


class TrackedJob(Protocol):
    """What :func:`diff` reads of a job the agent tracks (``site.JobState``)."""

    id: int
    state: str
    scheduler_id: str
    reason: str
    busy: bool
    """A submit or cancel command is running for it."""
    stop_wanted: bool
    unneeded: bool
    missing_since: float | None


@dataclass(frozen=True)
class Submit:
    """Submit this job to the scheduler."""

    job_id: int


@dataclass(frozen=True)
class Cancel:
    """Cancel this job; then apply :func:`listed_change` to ``listed`` (None: not listed)."""

    job_id: int
    reason: str
    """The job's reason from now on ("no longer needed" when the autoscaler let it go)."""
    listed: JobStatus | None


@dataclass(frozen=True)
class Update:
    """Report a change of the job (through the job state machine, ``states.job_step``)."""

    job_id: int
    state: str
    scheduler_id: str = ""
    """Set only when the job is adopted from the listing by its name."""
    reason: str = ""
    start_time: float | None = None
    end_time: float | None = None


@dataclass(frozen=True)
class Note:
    """Agent-side bookkeeping only, nothing to report: the new values of two fields."""

    job_id: int
    missing_since: float | None
    unneeded: bool
    look_again: float | None = None
    """Read the listing again this many seconds from now (the job just went missing)."""


Command = Submit | Cancel | Update | Note


def diff(
    jobs: Iterable[TrackedJob], listing: Sequence[JobStatus], now: float, *,
    name_of: Callable[[int], str], grace: float,
) -> list[Command]:
    """The commands that bring the agent's ``jobs`` in step with the scheduler's ``listing``.

    ``name_of(job_id)`` is the job's unique scheduler-side name
    (:func:`job_name`); ``grace`` is how long a submitted job may be missing
    from listings before it is called finished. Commands of one job come
    in the order they must run; nothing is returned when nothing changed.
    """
    by_id = {st.scheduler_id: st for st in listing}
    by_name = {st.name: st for st in listing if st.state != "finished"}
    out: list[Command] = []
    for j in jobs:
        if j.state in states.JOB_FINAL or j.busy:
            continue
        if not j.scheduler_id:
            found = by_name.get(name_of(j.id))
            if found is not None:
                out.append(Update(j.id, found.state, scheduler_id=found.scheduler_id,
                                  reason=found.reason, start_time=found.start_time))
            elif j.stop_wanted:
                out.append(Update(j.id, "finished", reason="cancelled before it was submitted"))
            elif j.state == "pending_submission":
                out.append(Submit(j.id))
            continue
        st = by_id.get(j.scheduler_id)
        if st is None:
            if j.missing_since is None:
                out.append(Note(j.id, missing_since=now, unneeded=j.unneeded, look_again=grace))
                continue
            if now - j.missing_since < grace:
                continue
        if j.missing_since is not None or j.unneeded:
            out.append(Note(j.id, missing_since=None, unneeded=False))
        stop_wanted, reason = j.stop_wanted, j.reason
        if j.unneeded and st is not None and st.state == "queued":
            # Decided on the controller's view; only what the scheduler has not started.
            stop_wanted, reason = True, "no longer needed"
        if stop_wanted and j.state != "finished":
            out.append(Cancel(j.id, reason=reason, listed=st))
            continue
        change = listed_change(j.id, j.state, reason, st, now)
        if change is not None:
            out.append(change)
    return out


def listed_change(
    job_id: int, state: str, reason: str, listed: JobStatus | None, now: float
) -> Update | None:
    """What the listing says of a submitted job in ``state`` (None: nothing new).

    Gone from the listing: finished, with the cancel's reason if it was being
    deleted, else "no longer listed". Listed in another state: that state,
    with the scheduler's reason and times.
    """
    if listed is None:
        why = reason if state == "pending_deletion" and reason else \
            "no longer listed by the scheduler"
        return Update(job_id, "finished", reason=why, end_time=now)
    if listed.state != state:
        return Update(job_id, listed.state, reason=listed.reason,
                      start_time=listed.start_time, end_time=listed.end_time)
    return None
