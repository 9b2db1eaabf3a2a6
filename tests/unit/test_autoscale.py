"""The autoscaler's decision: enough nodes for the work, within limits, never a runaway."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tidewater.agents.autoscale import AutoscaleSettings, Decision, Demand, JobView, decide

ON = AutoscaleSettings(enabled=True, queue="debug", project="m1", wall_time_min=20,
                       max_nodes_per_job=4, max_queued_jobs=2, max_total_nodes=8,
                       cores_per_node=4, retry_after=10.0)


def test_off_does_nothing() -> None:
    d = decide(AutoscaleSettings(), Demand(tasks=100, cores=100), [], 0.0)
    assert d.submit is None and d.cancel == ()


def test_idle_site_with_work_gets_a_job_sized_to_the_work() -> None:
    d = decide(ON, Demand(tasks=6, cores=6), [], 0.0)
    assert d.submit is not None
    assert (d.submit.nodes, d.submit.wall_time_min, d.submit.queue, d.submit.project) == (
        2, 20, "debug", "m1")


def test_job_size_is_capped_by_the_per_job_limit() -> None:
    d = decide(ON, Demand(tasks=100, cores=100), [], 0.0)
    assert d.submit is not None and d.submit.nodes == 4


def test_multi_node_tasks_count_whole_nodes() -> None:
    d = decide(ON, Demand(tasks=1, node_demand=3.0), [], 0.0)
    assert d.submit is not None and d.submit.nodes == 3


def test_idle_pilots_and_queued_jobs_count_as_capacity() -> None:
    assert decide(ON, Demand(tasks=2, cores=2, idle_nodes=1), [], 0.0).submit is None
    queued = [JobView(id=1, state="queued", nodes=1, autoscaled=True, scheduler_id="9")]
    assert decide(ON, Demand(tasks=2, cores=2), queued, 0.0).submit is None
    # A running job whose pilots have not connected yet is capacity on its way.
    running = [JobView(id=1, state="running", nodes=2)]
    assert decide(ON, Demand(tasks=5, cores=5), running, 0.0).submit is None


def test_no_work_cancels_queued_autoscaled_jobs_only() -> None:
    jobs = [
        JobView(id=1, state="queued", nodes=1, autoscaled=True, scheduler_id="11"),
        JobView(id=2, state="queued", nodes=1, autoscaled=False, scheduler_id="12"),
        JobView(id=3, state="running", nodes=1, autoscaled=True, scheduler_id="13"),
        JobView(id=4, state="pending_submission", nodes=1, autoscaled=True),
    ]
    d = decide(ON, Demand(tasks=0), jobs, 0.0)
    assert d.cancel == (1,) and d.submit is None


def test_a_scheduler_holding_everything_stops_it_at_max_queued_jobs() -> None:
    """Simulate many rounds against a scheduler that accepts but never starts a job."""
    jobs: list[JobView] = []
    for step in range(50):
        d = decide(ON, Demand(tasks=1000, cores=1000), jobs, float(step))
        if d.submit is not None:
            jobs.append(JobView(id=len(jobs) + 1, state="queued", nodes=d.submit.nodes,
                                autoscaled=True, scheduler_id=str(step)))
    assert len(jobs) == ON.max_queued_jobs
    assert sum(j.nodes for j in jobs) <= ON.max_total_nodes


def test_a_scheduler_rejecting_everything_gets_few_attempts_with_backoff() -> None:
    """An hour of one decision per second against a scheduler that refuses every job."""
    jobs: list[JobView] = []
    attempts: list[float] = []
    for second in range(3600):
        now = float(second)
        d = decide(ON, Demand(tasks=10, cores=10), jobs, now)
        if d.submit is not None:
            attempts.append(now)
            jobs.append(JobView(id=len(jobs) + 1, state="submit_failed", nodes=d.submit.nodes,
                                autoscaled=True, ended_at=now))
    # 10 s, 20, 40, ... capped at 600 s: a dozen attempts, not 3,600.
    assert 5 <= len(attempts) <= 15
    gaps = [b - a for a, b in zip(attempts, attempts[1:], strict=False)]
    assert gaps == sorted(gaps) and gaps[0] >= ON.retry_after and max(gaps) <= ON.retry_cap + 1


def test_an_accepted_job_resets_the_backoff() -> None:
    jobs = [
        JobView(id=1, state="submit_failed", nodes=1, autoscaled=True, ended_at=100.0),
        JobView(id=2, state="finished", nodes=1, autoscaled=True, ended_at=101.0),
    ]
    assert decide(ON, Demand(tasks=1, cores=1), jobs, 102.0).submit is not None


@given(
    tasks=st.integers(0, 10_000), cores=st.integers(0, 100_000), node_demand=st.integers(0, 500),
    idle=st.integers(0, 20), jobs=st.lists(
        st.tuples(st.sampled_from(["pending_submission", "queued", "running", "finished",
                                   "submit_failed"]), st.integers(1, 8), st.booleans()),
        max_size=10),
)
def test_never_exceeds_the_limits(tasks: int, cores: int, node_demand: int, idle: int,
                                  jobs: list[tuple[str, int, bool]]) -> None:
    views = [JobView(id=i + 1, state=s, nodes=n, autoscaled=a, ended_at=0.0,
                     scheduler_id=str(i)) for i, (s, n, a) in enumerate(jobs)]
    d: Decision = decide(ON, Demand(tasks=tasks, cores=cores, node_demand=float(node_demand),
                                    idle_nodes=idle), views, 10_000.0)
    if d.submit is None:
        return
    live = [v for v in views if v.state in ("pending_submission", "queued", "running")]
    waiting = [v for v in live if v.state != "running"]
    assert len(waiting) < ON.max_queued_jobs
    assert sum(v.nodes for v in live) + d.submit.nodes <= ON.max_total_nodes
    assert 1 <= d.submit.nodes <= ON.max_nodes_per_job
    assert tasks > 0


def test_jobs_stretch_to_the_longest_waiting_task_up_to_the_site_limit() -> None:
    s = AutoscaleSettings(enabled=True, wall_time_min=10, max_nodes_per_job=1,
                          max_wall_time_min=60, wall_margin=30.0)
    d = decide(s, Demand(tasks=1, cores=1, max_wall_time=25 * 60), [], 0.0)
    assert d.submit is not None and d.submit.wall_time_min == 26  # 25 min + 30 s margin
    d = decide(s, Demand(tasks=1, cores=1, max_wall_time=5 * 3600), [], 0.0)
    assert d.submit is not None and d.submit.wall_time_min == 60
    d = decide(s, Demand(tasks=1, cores=1), [], 0.0)
    assert d.submit is not None and d.submit.wall_time_min == 10
