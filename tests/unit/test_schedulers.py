"""Scheduler adapters, pure: rendered directives, and recorded output parsed into our states."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from tidewater import states
from tidewater.agents.schedulers import (
    CobaltScheduler,
    JobRequest,
    JobStatus,
    LocalScheduler,
    LsfScheduler,
    PartitionLimits,
    PbsScheduler,
    Scheduler,
    SlurmScheduler,
    base,
    cobalt,
    get_scheduler,
    lsf,
    pbs,
    slurm,
)
from tidewater.agents.schedulers import local as local_adapter
from tidewater.errors import ConfigError, SchedulerOutputError

DATA = Path(__file__).parent / "data" / "schedulers"
REQ = JobRequest(
    job_name="tw-site-7", nodes=3, wall_time_min=90, workdir="/scratch/tw/jobs/7",
    script_body="echo start\nexec pilot --site site\n", queue="debug", project="proj123",
)


def data(name: str) -> str:
    return (DATA / name).read_text()


def t(*args: int) -> float:
    """Local wall-clock time as the schedulers print it, in epoch seconds."""
    return datetime(*args).timestamp()  # type: ignore[arg-type]


def by_id(jobs: list[JobStatus]) -> dict[str, JobStatus]:
    return {j.scheduler_id: j for j in jobs}


ALL: list[Scheduler] = [
    SlurmScheduler(), PbsScheduler(), LsfScheduler(), CobaltScheduler(),
    LocalScheduler(state_dir="/tmp/tw-local-jobs"),
]


# --- get_scheduler ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cls"),
    [("slurm", SlurmScheduler), ("pbs", PbsScheduler), ("lsf", LsfScheduler),
     ("cobalt", CobaltScheduler), ("local", LocalScheduler), ("SLURM", SlurmScheduler)],
)
def test_get_scheduler_builds_the_named_adapter(name: str, cls: type[Scheduler]) -> None:
    assert type(get_scheduler(name)) is cls


def test_get_scheduler_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="'sge'.*cobalt, local, lsf, pbs, slurm"):
        get_scheduler("sge")


def test_get_scheduler_passes_options_and_refuses_unknown_ones(tmp_path: Path) -> None:
    sched = get_scheduler("local", state_dir=tmp_path, minute_seconds=0.5)
    assert isinstance(sched, LocalScheduler)
    assert sched.state_dir == tmp_path and sched.minute_seconds == 0.5
    with pytest.raises(ConfigError, match="bad options for scheduler 'pbs'"):
        get_scheduler("pbs", colour="blue")


# --- rendering -------------------------------------------------------------------------------------


def test_slurm_script_directives() -> None:
    script = SlurmScheduler().render_script(REQ)
    assert script.startswith("#!/bin/bash\n")
    for line in [
        "#SBATCH --job-name=tw-site-7", "#SBATCH --nodes=3", "#SBATCH --time=1:30:00",
        "#SBATCH --partition=debug", "#SBATCH --account=proj123",
        "#SBATCH --output=/scratch/tw/jobs/7/%j.out", "#SBATCH --error=/scratch/tw/jobs/7/%j.err",
    ]:
        assert line in script.splitlines()
    # directives come before the body, which is kept whole
    assert script.index("#SBATCH") < script.index("echo start")
    assert script.endswith("echo start\nexec pilot --site site\n")


def test_pbs_script_directives() -> None:
    lines = PbsScheduler().render_script(REQ).splitlines()
    for line in ["#PBS -N tw-site-7", "#PBS -l select=3", "#PBS -l walltime=01:30:00",
                 "#PBS -l place=scatter:excl", "#PBS -q debug", "#PBS -A proj123", "#PBS -j oe",
                 "#PBS -o /scratch/tw/jobs/7/job.out"]:
        assert line in lines


def test_lsf_script_directives_both_styles() -> None:
    lines = LsfScheduler().render_script(REQ).splitlines()
    for line in ["#BSUB -J tw-site-7", "#BSUB -nnodes 3", "#BSUB -W 90", "#BSUB -q debug",
                 "#BSUB -P proj123", "#BSUB -cwd /scratch/tw/jobs/7",
                 "#BSUB -o /scratch/tw/jobs/7/%J.out", "#BSUB -e /scratch/tw/jobs/7/%J.err"]:
        assert line in lines
    slots = LsfScheduler(nodes_style="slots").directives(REQ)
    assert "#BSUB -n 3" in slots and '#BSUB -R "span[ptile=1]"' in slots and "#BSUB -x" in slots


def test_cobalt_script_directives() -> None:
    lines = CobaltScheduler().render_script(REQ).splitlines()
    for line in ["#COBALT -n 3", "#COBALT -t 90", "#COBALT --jobname tw-site-7",
                 "#COBALT -q debug", "#COBALT -A proj123", "#COBALT -O /scratch/tw/jobs/7/job"]:
        assert line in lines


def test_local_script_directives() -> None:
    lines = LocalScheduler(state_dir="/x").render_script(REQ).splitlines()
    assert lines[1:5] == ["#TWLOCAL --job-name=tw-site-7", "#TWLOCAL --nodes=3",
                          "#TWLOCAL --time=90", "#TWLOCAL --queue=debug"]


def test_extra_directives_follow_ours() -> None:
    req = JobRequest("tw-a-1", 1, 10, "/w", "true", extra_directives=("#SBATCH --constraint=gpu",))
    lines = SlurmScheduler().render_script(req).splitlines()
    assert lines.index("#SBATCH --constraint=gpu") > lines.index("#SBATCH --nodes=1")


@pytest.mark.parametrize("sched", [SlurmScheduler(), LsfScheduler(), LocalScheduler(state_dir="/x")])
def test_a_name_with_spaces_is_double_quoted_where_the_scheduler_reads_quotes(sched: Scheduler) -> None:
    req = JobRequest("my job|1", 1, 10, "/w", "true")
    assert any('"my job|1"' in line for line in sched.directives(req))


@pytest.mark.parametrize("sched", [PbsScheduler(), CobaltScheduler()])
def test_a_name_with_spaces_is_refused_where_it_cannot_be_quoted(sched: Scheduler) -> None:
    with pytest.raises(ConfigError, match="'my job'.*cannot go into a batch directive"):
        sched.directives(JobRequest("my job", 1, 10, "/w", "true"))


@pytest.mark.parametrize("sched", ALL, ids=lambda s: s.name)
def test_a_newline_can_never_smuggle_a_directive(sched: Scheduler) -> None:
    req = JobRequest("tw-a-1", 1, 10, "/w", "true", queue="debug\n#SBATCH --nodes=999")
    with pytest.raises(ConfigError, match="control character"):
        sched.render_script(req)


@pytest.mark.parametrize("sched", ALL, ids=lambda s: s.name)
@pytest.mark.parametrize(("nodes", "minutes", "what"), [(0, 10, "0 nodes"), (1, 0, "0 minutes")])
def test_impossible_requests_are_refused(sched: Scheduler, nodes: int, minutes: int, what: str) -> None:
    with pytest.raises(ConfigError, match=what):
        sched.render_script(JobRequest("tw-a-1", nodes, minutes, "/w", "true"))


@pytest.mark.parametrize(("minutes", "slurm_time", "pbs_time"), [
    (1, "0:01:00", "00:01:00"), (59, "0:59:00", "00:59:00"), (60, "1:00:00", "01:00:00"),
    (1500, "25:00:00", "25:00:00"), (6000, "100:00:00", "100:00:00"),
])
def test_wall_time_formats(minutes: int, slurm_time: str, pbs_time: str) -> None:
    assert slurm.format_wall_time(minutes) == slurm_time
    assert pbs.format_walltime(minutes) == pbs_time
    assert pbs.parse_walltime_min(pbs_time) == minutes
    assert slurm.parse_slurm_duration_min(slurm_time) == minutes


# --- argv ------------------------------------------------------------------------------------------


def test_argv_of_each_command() -> None:
    s, p, lf, c = SlurmScheduler(), PbsScheduler(), LsfScheduler(), CobaltScheduler()
    assert s.submit_argv("/w/job.sh", REQ) == ["sbatch", "--parsable", "/w/job.sh"]
    assert s.status_argv("alice") == [
        "squeue", "--noheader", "--states=all", f"--format={slurm.SQUEUE_FORMAT}", "-u", "alice"]
    assert "-u" not in s.status_argv(None)
    assert s.cancel_argv("12") == ["scancel", "12"]
    assert s.partitions_argv() == ["sinfo", "--noheader", f"--format={slurm.SINFO_FORMAT}"]
    assert p.submit_argv("/w/job.sh", REQ) == ["qsub", "/w/job.sh"]
    assert p.status_argv("alice") == ["qstat", "-f", "-F", "json", "-x"]
    assert p.cancel_argv("12.pbs") == ["qdel", "12.pbs"]
    # bsub reads #BSUB lines from stdin only: a shell feeds it the script
    assert lf.submit_argv("/w/job.sh", REQ) == ["/bin/sh", "-c", 'exec bsub < "$1"', "bsub", "/w/job.sh"]
    assert lf.status_argv("alice") == ["bjobs", "-a", "-json", "-o", lsf.BJOBS_FIELDS, "-u", "alice"]
    assert lf.cancel_argv("12") == ["bkill", "12"]
    assert c.submit_argv("/w/job.sh", REQ) == ["qsub", "/w/job.sh"]
    assert c.status_argv("alice") == ["qstat", "-u", "alice", "--header", ":".join(cobalt.QSTAT_HEADER)]
    assert c.cancel_argv("12") == ["qdel", "12"]
    for sched in (p, lf, c):
        assert sched.partitions_argv() is None


def test_local_argv_runs_localexec_with_its_state_dir() -> None:
    sched = LocalScheduler(state_dir="/st", python="/py", minute_seconds=0.5, kill_grace=1)
    mod = ["/py", "-m", "tidewater.agents.schedulers.localexec"]
    assert sched.submit_argv("/w/job.sh", REQ) == [
        *mod, "submit", "--state-dir", "/st", "--minute-seconds", "0.5", "--kill-grace", "1",
        "/w/job.sh"]
    assert sched.status_argv("alice") == [*mod, "status", "--state-dir", "/st"]
    assert sched.cancel_argv("4") == [*mod, "cancel", "--state-dir", "/st", "4"]
    assert sched.node_launch_argv(3) == [*mod, "fanout", "-n", "3", "--"]
    queued = LocalScheduler(state_dir="/st", python="/py", kill_grace=1, start_delay=2.5)
    assert queued.submit_argv("/w/job.sh", REQ)[-3:] == ["--start-delay", "2.5", "/w/job.sh"]
    with pytest.raises(ConfigError, match="start_delay is -1 s"):
        LocalScheduler(start_delay=-1)


def test_local_state_dir_defaults_under_tidewater_home(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    monkeypatch.setenv("TIDEWATER_HOME", str(tmp_path))
    assert LocalScheduler().state_dir == tmp_path / "local-jobs"


def test_node_launch_argv_starts_one_per_node() -> None:
    srun = SlurmScheduler().node_launch_argv(4)
    assert srun[:4] == ["srun", "--nodes=4", "--ntasks=4", "--ntasks-per-node=1"]
    assert "--overlap" in srun and "--cpu-bind=none" in srun
    assert "--gpus-per-node=4" in SlurmScheduler(gpus_per_node=4).node_launch_argv(2)
    assert PbsScheduler().node_launch_argv(4) == ["mpiexec", "-n", "4", "-ppn", "1"]
    js = LsfScheduler().node_launch_argv(4)
    assert js[:3] == ["jsrun", "--nrs", "4"] and js[js.index("--rs_per_host") + 1] == "1"
    assert LsfScheduler(nodes_style="slots").node_launch_argv(4)[:3] == ["mpirun", "-np", "4"]
    assert CobaltScheduler().node_launch_argv(4) == ["aprun", "-n", "4", "-N", "1", "-cc", "none"]


# --- submit output ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("sched", "file", "expected"), [
    (SlurmScheduler(), "slurm_sbatch_parsable.txt", "13"),
    (SlurmScheduler(), "slurm_sbatch_cluster.txt", "4242"),
    (PbsScheduler(), "pbs_qsub.txt", "8123.polaris-pbs-01"),
    (LsfScheduler(), "lsf_bsub.txt", "2741005"),
    (LsfScheduler(), "lsf_bsub_default_queue.txt", "2741006"),
    (CobaltScheduler(), "cobalt_qsub.txt", "514006"),
    (CobaltScheduler(), "cobalt_qsub_routed.txt", "514007"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_parse_submit_output(sched: Scheduler, file: str, expected: str) -> None:
    assert sched.parse_submit_output(data(file)) == expected


@pytest.mark.parametrize("sched", ALL, ids=lambda s: s.name)
@pytest.mark.parametrize("out", ["", "Submitted batch job\n", "error: try again later\n"])
def test_submit_output_without_an_id_is_an_output_error(sched: Scheduler, out: str) -> None:
    with pytest.raises(SchedulerOutputError, match="cannot read a job id") as info:
        sched.parse_submit_output(out)
    assert info.value.output == out


# --- Slurm status ----------------------------------------------------------------------------------


def test_slurm_recorded_finished_jobs() -> None:
    jobs = by_id(SlurmScheduler().parse_status_output(data("slurm_squeue.txt")))
    assert len(jobs) == 11
    timeout = jobs["5"]
    assert timeout == JobStatus(
        scheduler_id="5", state="finished", native_state="TIMEOUT", name="tw-rec|odd name",
        nodes=1, queue="debug", start_time=t(2026, 11, 25, 16, 1, 58),
        end_time=t(2026, 11, 25, 16, 3, 1), reason="TIMEOUT")
    assert (jobs["7"].state, jobs["7"].reason) == ("finished", "FAILED")
    assert (jobs["6"].state, jobs["6"].reason) == ("finished", "CANCELLED")
    assert (jobs["11"].state, jobs["11"].reason) == ("finished", "COMPLETED")
    assert jobs["10"].name == 'a b|c"d'


def test_slurm_recorded_waiting_and_running_jobs() -> None:
    jobs = by_id(SlurmScheduler().parse_status_output(data("slurm_squeue_active.txt")))
    running = jobs["13"]
    assert (running.state, running.name, running.reason) == ("running", "tw-laptop-3", "")
    assert running.start_time == t(2026, 11, 25, 16, 3, 12)
    assert running.end_time is None  # squeue's end of a running job is only its limit
    held = jobs["14"]
    assert (held.state, held.reason, held.start_time) == ("queued", "JobHeldUser", None)
    assert (jobs["15"].state, jobs["15"].reason) == ("queued", "Resources")


def test_slurm_states_table_covers_every_state() -> None:
    jobs = by_id(SlurmScheduler().parse_status_output(data("slurm_squeue_states.txt")))
    expected = {
        "901": ("running", ""), "902": ("queued", ""), "903": ("queued", ""),
        "904": ("finished", "NODE_FAIL"), "905": ("finished", "OUT_OF_MEMORY"),
        "906": ("finished", "PREEMPTED"), "907": ("queued", "BeginTime"),
        "908": ("queued", "Priority"), "909": ("finished", "BOOT_FAIL"),
        "910": ("finished", "DEADLINE"),
    }
    assert {k: (j.state, j.reason) for k, j in jobs.items()} == expected
    assert jobs["908"].start_time is None  # an estimated start is not a start


@pytest.mark.parametrize(("native", "state"), [
    ("PENDING", "queued"), ("CONFIGURING", "queued"), ("REQUEUED", "queued"),
    ("REQUEUE_HOLD", "queued"), ("SUSPENDED", "queued"), ("RUNNING", "running"),
    ("COMPLETING", "running"), ("COMPLETED", "finished"), ("FAILED", "finished"),
    ("TIMEOUT", "finished"), ("CANCELLED", "finished"), ("CANCELLED by 1000", "finished"),
    ("NODE_FAIL", "finished"), ("PREEMPTED", "finished"), ("OUT_OF_MEMORY", "finished"),
    ("BOOT_FAIL", "finished"), ("DEADLINE", "finished"),
    ("PD", "queued"), ("R", "running"), ("CG", "running"), ("TO", "finished"), ("OOM", "finished"),
])
def test_slurm_state(native: str, state: str) -> None:
    assert slurm.slurm_state(native) == state


def test_every_compact_slurm_state_has_a_long_one() -> None:
    assert set(slurm.COMPACT_STATES.values()) == set(slurm.SLURM_STATES)


@pytest.mark.parametrize(("out", "what"), [
    ("12|RUNNING|1|debug\n", "a squeue line"),
    ("12|WEIRD|1|debug|N/A|N/A|None|x\n", "a Slurm job state"),
    ("12|RUNNING|1|debug|yesterday|N/A|None|x\n", "SLURM_TIME_FORMAT"),
    ("12|RUNNING|many|debug|N/A|N/A|None|x\n", "a squeue node count"),
])
def test_slurm_malformed_status(out: str, what: str) -> None:
    with pytest.raises(SchedulerOutputError, match=what):
        SlurmScheduler().parse_status_output(out)


def test_slurm_empty_status_is_no_jobs() -> None:
    assert SlurmScheduler().parse_status_output("") == []


def test_slurm_partitions_recorded_on_one_node() -> None:
    assert SlurmScheduler().parse_partitions_output(data("slurm_sinfo_local.txt")) == [
        PartitionLimits(name="debug", max_nodes=None, max_wall_min=None, total_nodes=1,
                        cores_per_node=2, gpus_per_node=None, available=True)]


def test_slurm_partitions_merge_node_kinds() -> None:
    parts = {p.name: p for p in SlurmScheduler().parse_partitions_output(data("slurm_sinfo.txt"))}
    assert list(parts) == ["debug", "regular", "gpu", "bigmem", "preempt", "shared"]
    assert parts["debug"] == PartitionLimits("debug", 4, 30, 16, 128, None, True)
    assert parts["regular"] == PartitionLimits("regular", 512, 2880, 1536, 256, None, True)
    assert parts["gpu"] == PartitionLimits("gpu", 128, 720, 256, 64, 8, True)
    assert parts["bigmem"] == PartitionLimits("bigmem", None, 1440, 4, 96, None, False)
    assert parts["preempt"] == PartitionLimits("preempt", None, None, 1536, 128, 4, True)
    assert parts["shared"] == PartitionLimits("shared", 1, 5, 8, 128, None, False)


@pytest.mark.parametrize(("text", "minutes"), [
    ("infinite", None), ("UNLIMITED", None), ("30:00", 30), ("30:01", 31), ("1:00:00", 60),
    ("1-00:00:00", 1440), ("2-12", 3600), ("1-01:30", 1530), ("45", 45),
])
def test_slurm_durations(text: str, minutes: int | None) -> None:
    assert slurm.parse_slurm_duration_min(text) == minutes


def test_slurm_malformed_partitions() -> None:
    with pytest.raises(SchedulerOutputError, match="a sinfo line"):
        SlurmScheduler().parse_partitions_output("debug*|up|infinite\n")
    with pytest.raises(SchedulerOutputError, match="a Slurm time limit"):
        SlurmScheduler().parse_partitions_output("debug*|up|soon|1-2|1|2|(null)\n")


# --- PBS status ------------------------------------------------------------------------------------


def test_pbs_recorded_jobs() -> None:
    jobs = by_id(PbsScheduler().parse_status_output(data("pbs_qstat.json")))
    s = "polaris-pbs-01"
    queued = jobs[f"8120.{s}"]
    assert (queued.state, queued.nodes, queued.queue, queued.name) == ("queued", 2, "debug", "tw-polaris-1")
    assert queued.reason.startswith("Not Running: Insufficient amount of resource")
    assert queued.start_time is None
    running = jobs[f"8121.{s}"]
    assert (running.state, running.start_time, running.end_time) == (
        "running", t(2026, 11, 25, 15, 50, 33), None)
    done = jobs[f"8100.{s}"]
    assert (done.state, done.reason) == ("finished", "COMPLETED")
    assert (done.start_time, done.end_time) == (t(2026, 11, 25, 13, 3, 2), t(2026, 11, 25, 13, 10, 4))
    assert (jobs[f"8101.{s}"].state, jobs[f"8101.{s}"].reason) == ("finished", "TIMEOUT")
    assert jobs[f"8102.{s}"].reason == "CANCELLED (killed by signal 15)"
    deleted = jobs[f"8103.{s}"]
    assert (deleted.reason, deleted.end_time) == ("CANCELLED", t(2026, 11, 25, 13, 4, 0))
    assert jobs[f"8104.{s}"].reason == "FAILED (exit 3)"
    assert jobs[f"8122.{s}"].state == "queued"


def test_pbs_empty_listings() -> None:
    assert PbsScheduler().parse_status_output(data("pbs_qstat_empty.json")) == []
    assert PbsScheduler().parse_status_output("") == []


def test_pbs_unescaped_variable_list_of_old_versions_is_read() -> None:
    [job] = PbsScheduler().parse_status_output(data("pbs_qstat_bad_variable_list.json"))
    assert (job.scheduler_id, job.state, job.nodes) == ("77.pbs01", "running", 1)


@pytest.mark.parametrize(("code", "reason"), [
    (0, "COMPLETED"), (None, "CANCELLED"), (-29, "TIMEOUT"), (271, "CANCELLED (killed by signal 15)"),
    (265, "CANCELLED (killed by signal 9)"), (1, "FAILED (exit 1)"),
    (-27, "OUT_OF_MEMORY (exit -27: mem limit exceeded)"),
    (-99, "FAILED (exit -99: PBS could not run the job)"),
])
def test_pbs_exit_reason(code: int | None, reason: str) -> None:
    assert pbs.exit_reason(code) == reason


@pytest.mark.parametrize(("letter", "state"), [
    ("Q", "queued"), ("H", "queued"), ("W", "queued"), ("T", "queued"), ("S", "queued"),
    ("U", "queued"), ("R", "running"), ("E", "running"), ("B", "running"), ("F", "finished"),
    ("X", "finished"), ("M", "finished"),
])
def test_pbs_state(letter: str, state: str) -> None:
    assert pbs.pbs_state(letter) == state


def test_pbs_ctime_with_a_padded_day() -> None:
    assert pbs.parse_pbs_time("Thu Nov  5 09:02:03 2026") == t(2026, 11, 5, 9, 2, 3)


@pytest.mark.parametrize(("out", "what"), [
    ("{not json", "the JSON of qstat"),
    ('{"Jobs": []}', "the Jobs object"),
    ('{"Jobs": {"1.s": {"Job_Name": "x"}}}', "job_state of job 1.s"),
    ('{"Jobs": {"1.s": {"job_state": "Z"}}}', "a PBS job_state"),
    ('{"Jobs": {"1.s": {"job_state": "R", "stime": "later"}}}', "a PBS time"),
])
def test_pbs_malformed_status(out: str, what: str) -> None:
    with pytest.raises(SchedulerOutputError, match=what):
        PbsScheduler().parse_status_output(out)


# --- LSF status ------------------------------------------------------------------------------------

NOW = t(2026, 11, 25, 16, 0, 0)


def test_lsf_recorded_jobs() -> None:
    jobs = by_id(LsfScheduler(clock=lambda: NOW).parse_status_output(data("lsf_bjobs.json")))
    assert (jobs["2741001"].state, jobs["2741001"].reason) == ("queued", "New job is waiting for scheduling")
    running = jobs["2741002"]
    assert (running.state, running.nodes, running.start_time, running.end_time) == (
        "running", 3, t(2026, 11, 25, 15, 56), None)
    done = jobs["2740990"]
    assert (done.state, done.reason) == ("finished", "COMPLETED")
    assert (done.start_time, done.end_time) == (t(2026, 11, 5, 9, 2), t(2026, 11, 5, 9, 31))
    assert jobs["2740991"].reason == "TIMEOUT"
    assert jobs["2740992"].reason == "CANCELLED"
    assert jobs["2740993"].reason == "FAILED (exit 1)"
    assert jobs["2741003"].state == "queued"
    never_ran = jobs["2741004"]
    assert (never_ran.state, never_ran.reason, never_ran.start_time) == ("finished", "CANCELLED", None)


def test_lsf_nothing_listed() -> None:
    sched = LsfScheduler(clock=lambda: NOW)
    assert sched.parse_status_output(data("lsf_bjobs_none.txt")) == []
    assert sched.parse_status_output(data("lsf_bjobs_not_found.json")) == []
    assert sched.parse_status_output('{"COMMAND":"bjobs","JOBS":0,"RECORDS":[]}') == []


def test_lsf_times_without_a_year_take_the_latest_past_year() -> None:
    jan = t(2027, 1, 3, 8, 0, 0)
    assert lsf.parse_lsf_time("Dec 30 23:00", jan) == t(2026, 12, 30, 23, 0)
    assert lsf.parse_lsf_time("Jan  2 23:00 L", jan) == t(2027, 1, 2, 23, 0)
    assert lsf.parse_lsf_time("Nov 25 15:56:17 2026", jan) == t(2026, 11, 25, 15, 56, 17)
    assert lsf.parse_lsf_time("", jan) is None


@pytest.mark.parametrize(("stat", "state"), [
    ("PEND", "queued"), ("PSUSP", "queued"), ("USUSP", "queued"), ("SSUSP", "queued"),
    ("RUN", "running"), ("UNKWN", "running"), ("DONE", "finished"), ("EXIT", "finished"),
    ("ZOMBI", "finished"),
])
def test_lsf_state(stat: str, state: str) -> None:
    assert lsf.lsf_state(stat) == state


@pytest.mark.parametrize(("out", "what"), [
    ("Job <1> is not found", "the JSON of bjobs"),
    ('{"COMMAND":"bjobs","RECORDS":{}}', "the RECORDS"),
    ('{"RECORDS":[{"JOB_NAME":"x"}]}', "JOBID and STAT"),
    ('{"RECORDS":[{"JOBID":"1","STAT":"LIMBO"}]}', "an LSF job STAT"),
    ('{"RECORDS":[{"JOBID":"1","STAT":"RUN","START_TIME":"soon"}]}', "an LSF time"),
])
def test_lsf_malformed_status(out: str, what: str) -> None:
    with pytest.raises(SchedulerOutputError, match=what):
        LsfScheduler(clock=lambda: NOW).parse_status_output(out)


# --- Cobalt status ---------------------------------------------------------------------------------


def test_cobalt_recorded_jobs() -> None:
    jobs = by_id(CobaltScheduler().parse_status_output(data("cobalt_qstat.txt")))
    assert {k: (j.state, j.reason) for k, j in jobs.items()} == {
        "514001": ("queued", ""), "514002": ("running", ""), "514003": ("queued", "user_hold"),
        "514004": ("running", "exiting"), "514005": ("finished", "DEP_FAIL"),
    }
    running = jobs["514002"]
    assert (running.name, running.nodes, running.queue, running.start_time) == (
        "tw-theta-2", 8, "debug-cache-quad", t(2026, 11, 25, 15, 40, 2))


def test_cobalt_times() -> None:
    assert cobalt.parse_cobalt_time("N/A") is None
    assert cobalt.parse_cobalt_time("Wed Nov 25 15:56:17 2026 +0000 (UTC)") == 1795622177.0


@pytest.mark.parametrize(("state", "ours"), [
    ("queued", "queued"), ("user_hold", "queued"), ("admin_hold", "queued"),
    ("dep_hold", "queued"), ("starting", "running"), ("running", "running"),
    ("exiting", "running"), ("killing", "running"), ("dep_fail", "finished"),
])
def test_cobalt_state(state: str, ours: str) -> None:
    assert cobalt.cobalt_state(state) == ours


def test_cobalt_table_round_trips_names_with_spaces() -> None:
    rows = [{"JobID": "1", "JobName": "a b", "StartTime": "11/25/26 15:40:02"}]
    text = cobalt.format_table(["JobID", "JobName", "StartTime"], rows)
    assert cobalt.split_table(text) == rows


@pytest.mark.parametrize(("out", "what"), [
    ("JobID  State\n1  queued\n", "header, then a === rule"),
    ("JobID  State\n=====\nabc    queued\n", "a Cobalt job id"),
    ("JobID  State\n=====\n1      sleeping\n", "a Cobalt job state"),
    ("JobName  State\n=====\nx        queued\n", "a qstat table with columns"),
    ("JobID  State\n=====\n1 queued\n", "aligned under its header"),
])
def test_cobalt_malformed_status(out: str, what: str) -> None:
    with pytest.raises(SchedulerOutputError, match=what):
        CobaltScheduler().parse_status_output(out)


def test_cobalt_header_only_is_no_jobs() -> None:
    header = cobalt.format_table(list(cobalt.QSTAT_HEADER), [])
    assert CobaltScheduler().parse_status_output(header) == []


# --- local status ----------------------------------------------------------------------------------


def test_local_status_lines() -> None:
    out = (
        '{"id": 1, "name": "tw-l-1", "nodes": 2, "queue": "", "state": "TIMEOUT", '
        '"submit_time": 10.0, "start_time": 11.0, "end_time": 71.0, "exit_code": 143, '
        '"reason": "TIMEOUT"}\n'
        '{"id": 2, "name": "tw-l-2", "nodes": 1, "queue": "", "state": "PENDING", '
        '"submit_time": 12.0, "start_time": null, "end_time": null, "exit_code": null, "reason": ""}\n'
    )
    jobs = LocalScheduler(state_dir="/x").parse_status_output(out)
    assert jobs == [
        JobStatus("1", "finished", "TIMEOUT", "tw-l-1", 2, "", 11.0, 71.0, "TIMEOUT"),
        JobStatus("2", "queued", "PENDING", "tw-l-2", 1, "", None, None, ""),
    ]


@pytest.mark.parametrize("line", ["not json", '{"id": 1}', '{"id": 1, "state": "NAPPING"}'])
def test_local_malformed_status(line: str) -> None:
    with pytest.raises(SchedulerOutputError, match="a localexec status line"):
        LocalScheduler(state_dir="/x").parse_status_output(line)


def test_adapters_share_the_batch_job_states() -> None:
    assert base.JobState is states.JobState
    assert base.JOB_STATES is states.JOB_STATES
    assert base.FINAL_JOB_STATES is states.JOB_FINAL
    tables = [slurm.SLURM_STATES, pbs.PBS_STATES, lsf.LSF_STATES, cobalt.COBALT_STATES,
              local_adapter.LOCAL_STATES]
    for table in tables:
        assert all(type(s) is states.JobState for s in table.values())
    # A job that ran out of time has finished; TIMEOUT is not a failure of the batch job.
    assert slurm.SLURM_STATES["TIMEOUT"] is states.JobState.FINISHED
    assert local_adapter.LOCAL_STATES["TIMEOUT"] is states.JobState.FINISHED
