"""The agent's reconcile decision, on squeue listings as Slurm prints them. No event loop."""

from __future__ import annotations

from tidewater.agents.reconcile import (
    Cancel,
    Note,
    Submit,
    Update,
    diff,
    job_name,
    listed_change,
)
from tidewater.agents.schedulers.base import JobStatus
from tidewater.agents.schedulers.slurm import SlurmScheduler
from tidewater.agents.site import JobState
from tidewater.states import job_step

NOW = 1_800_000_000.0
GRACE = 5.0
TAG = "a1b2c3"

# squeue --noheader --states=all --format=%i|%T|%D|%P|%S|%e|%r|%j, as the agent runs it.
LISTING = """\
101|PENDING|1|debug|N/A|N/A|Priority|tw-hpc-1-a1b2c3
102|RUNNING|2|debug|2026-11-25T16:03:12|2026-11-25T16:05:12|None|tw-hpc-2-a1b2c3
103|TIMEOUT|1|debug|2026-11-25T16:01:58|2026-11-25T16:03:01|TimeLimit|tw-hpc-3-a1b2c3
104|PENDING|1|debug|N/A|N/A|Resources|tw-hpc-4-a1b2c3
105|PENDING|1|debug|N/A|N/A|Resources|tw-hpc-5-ffffff
"""


def listing(text: str = LISTING) -> list[JobStatus]:
    return SlurmScheduler().parse_status_output(text)


def job(id: int, state: str = "queued", **kw: object) -> JobState:
    return JobState(id=id, state=state, nodes=1, wall_time_min=10, **kw)  # type: ignore[arg-type]


def name_of(job_id: int) -> str:
    return job_name("hpc", job_id, TAG)


def run(jobs: list[JobState], listed: list[JobStatus] | None = None, now: float = NOW) -> list:  # type: ignore[type-arg]
    return diff(jobs, listing() if listed is None else listed, now, name_of=name_of, grace=GRACE)


# --------------------------------------------------------------------------- nothing to do


def test_jobs_in_step_with_the_listing_need_nothing() -> None:
    jobs = [job(1, "queued", scheduler_id="101"), job(2, "running", scheduler_id="102"),
            job(3, "finished", scheduler_id="103")]
    assert run(jobs) == []


def test_final_and_busy_jobs_are_left_alone() -> None:
    jobs = [job(7, "submit_failed"), job(8, "pending_submission", busy=True),
            job(9, "queued", scheduler_id="999", busy=True)]
    assert run(jobs) == []


def test_nothing_tracked_nothing_to_do() -> None:
    assert run([]) == []


# --------------------------------------------------------------------------- not submitted yet


def test_a_new_job_is_submitted() -> None:
    assert run([job(6, "pending_submission")]) == [Submit(6)]


def test_a_job_submitted_before_a_crash_is_adopted_by_its_name_not_submitted_again() -> None:
    # The agent died between sbatch and reporting the id: the listing has tw-hpc-4-<tag>.
    assert run([job(4, "pending_submission")]) == [
        Update(4, "queued", scheduler_id="104", reason="Resources")]


def test_a_running_job_is_adopted_with_its_start_time() -> None:
    (u,) = run([job(2, "pending_submission")])
    assert isinstance(u, Update)
    assert (u.state, u.scheduler_id) == ("running", "102")
    assert u.start_time is not None


def test_a_job_of_another_controller_with_the_same_id_is_not_adopted() -> None:
    # tw-hpc-5-ffffff: same site and id, another store's tag.
    assert run([job(5, "pending_submission")]) == [Submit(5)]


def test_a_finished_job_of_that_name_is_not_adopted() -> None:
    listed = listing("103|COMPLETED|1|debug|2026-11-25T16:01:58|2026-11-25T16:03:01|None|"
                     "tw-hpc-9-a1b2c3\n")
    assert run([job(9, "pending_submission")], listed) == [Submit(9)]


def test_a_job_stopped_before_it_was_submitted_finishes_unsubmitted() -> None:
    assert run([job(6, "pending_submission", stop_wanted=True)]) == [
        Update(6, "finished", reason="cancelled before it was submitted")]


# --------------------------------------------------------------------------- listing changes


def test_the_listing_state_is_reported_with_the_scheduler_reason() -> None:
    (u,) = run([job(3, "running", scheduler_id="103")])
    assert isinstance(u, Update)
    assert (u.job_id, u.state, u.reason) == (3, "finished", "TIMEOUT")
    assert u.end_time is not None and u.scheduler_id == ""


def test_a_job_the_scheduler_no_longer_lists_is_noted_first_then_finished() -> None:
    j = job(20, "running", scheduler_id="120")
    assert run([j]) == [Note(20, missing_since=NOW, unneeded=False, look_again=GRACE)]
    j.missing_since = NOW
    assert run([j], now=NOW + GRACE / 2) == []  # a scheduler may list a new job late
    assert run([j], now=NOW + GRACE) == [
        Note(20, missing_since=None, unneeded=False),
        Update(20, "finished", reason="no longer listed by the scheduler", end_time=NOW + GRACE),
    ]


def test_a_job_listed_again_forgets_it_was_missing() -> None:
    j = job(1, "queued", scheduler_id="101", missing_since=NOW - 1)
    assert run([j]) == [Note(1, missing_since=None, unneeded=False)]


# --------------------------------------------------------------------------- cancelling


def test_a_job_the_controller_stops_is_cancelled() -> None:
    j = job(1, "pending_deletion", scheduler_id="101", stop_wanted=True, reason="by alice")
    (c,) = run([j])
    assert isinstance(c, Cancel)
    assert (c.job_id, c.reason) == (1, "by alice")
    assert c.listed is not None and c.listed.scheduler_id == "101"


def test_an_unneeded_job_is_cancelled_only_while_queued() -> None:
    queued = job(1, "queued", scheduler_id="101", unneeded=True)
    started = job(2, "running", scheduler_id="102", unneeded=True)
    out = run([queued, started])
    assert out[0] == Note(1, missing_since=None, unneeded=False)
    assert isinstance(out[1], Cancel) and (out[1].job_id, out[1].reason) == (1, "no longer needed")
    assert out[2:] == [Note(2, missing_since=None, unneeded=False)]  # its pilot may be working


def test_after_a_cancel_a_job_gone_from_the_listing_finishes_with_the_cancel_reason() -> None:
    assert listed_change(1, "pending_deletion", "cancelled", None, NOW) == Update(
        1, "finished", reason="cancelled", end_time=NOW)


def test_after_a_cancel_a_job_still_listed_waits_for_the_scheduler() -> None:
    still = JobStatus(scheduler_id="101", state="queued", native_state="PENDING")
    assert listed_change(1, "pending_deletion", "cancelled", still, NOW) == Update(
        1, "queued", reason="", start_time=None, end_time=None)
    # ... which the job state machine does not take back from pending_deletion.
    assert job_step("pending_deletion", "queued") is None
    assert listed_change(1, "queued", "", still, NOW) is None
