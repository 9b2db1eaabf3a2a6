"""A real fork "scheduler" for laptops and tests: ``python -m tidewater.agents.schedulers.localexec``.

Subcommands (what :class:`~tidewater.agents.schedulers.local.LocalScheduler` runs)::

    submit  --state-dir D [--minute-seconds S] [--kill-grace G] [--start-delay W] SCRIPT
                                                                        prints the job id
    status  --state-dir D                                               one JSON line per job
    cancel  --state-dir D ID                                            exit 1 for an unknown id
    fanout  -n N -- CMD...                                              N copies, TIDEWATER_NODE_INDEX
    _monitor --state-dir D ID                                           (internal) runs one job

A job is watched by a detached monitor process (its own session, so it
outlives whoever submitted) that runs ``bash SCRIPT`` in a new process group,
enforces the wall time (SIGTERM to the group, SIGKILL after a grace, reason
TIMEOUT) and records the outcome. With a start delay the monitor first waits
that many seconds, the job PENDING meanwhile (a cancel ends the wait): a batch
queue's wait, for examples and tests that model a busy site. Everything lives in the state directory,
one subdirectory per job, so ``status`` and ``cancel`` work from any process,
including an agent restarted after the one that submitted::

    D/next_id          the next job id (allocated under the flock of D/.lock)
    D/<id>/job.json    name, nodes, wall time, script, output paths, env, submit time
    D/<id>/monitor.pid the monitor's pid (written by submit)
    D/<id>/run.json    job pid (= its process group) and start time
    D/<id>/cancel      present once a cancel was asked
    D/<id>/end.json    end time, exit code, reason (COMPLETED FAILED TIMEOUT CANCELLED)

The fake PBS/LSF/Cobalt executables of the tests use the Python API below
(:func:`submit_job`, :func:`list_jobs`, :func:`cancel_job`) as their engine.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import select
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from tidewater.agents.schedulers.local import DEFAULT_KILL_GRACE, DIRECTIVE, default_state_dir
from tidewater.errors import NoSuchJob as NoSuchJob  # the fake qdel/bkill catch it from here

EnvFor = Callable[[int, Path], Mapping[str, str]]
"""Extra job environment, computed from the job id and the job's state directory."""


@dataclass(frozen=True)
class LocalJob:
    """One job as the state directory records it."""

    job_id: int
    name: str
    nodes: int
    wall_min: float
    queue: str
    state: str
    """PENDING, RUNNING, or the end reason: COMPLETED FAILED TIMEOUT CANCELLED NODE_FAIL."""
    submit_time: float
    start_time: float | None
    end_time: float | None
    exit_code: int | None
    reason: str
    cancelled: bool
    info: Mapping[str, object]
    """Everything job.json holds (the fakes keep their own fields there)."""

    def to_json(self) -> str:
        return json.dumps({
            "id": self.job_id, "name": self.name, "nodes": self.nodes, "queue": self.queue,
            "state": self.state, "submit_time": self.submit_time, "start_time": self.start_time,
            "end_time": self.end_time, "exit_code": self.exit_code, "reason": self.reason,
        })


# --- state directory -------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the flock


def _write_json(path: Path, data: Mapping[str, object]) -> None:
    """Atomically: a reader sees the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return data if isinstance(data, dict) else None


def _allocate_id(state_dir: Path) -> int:
    """The next job id, unique even under concurrent submits (flock + exclusive mkdir)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with _locked(state_dir / ".lock"):
        counter = state_dir / "next_id"
        try:
            job_id = int(counter.read_text().strip() or "1")
        except FileNotFoundError:
            job_id = 1 + max((int(p.name) for p in state_dir.iterdir() if p.name.isdigit()),
                             default=0)
        while True:
            try:
                (state_dir / str(job_id)).mkdir()
                break
            except FileExistsError:  # a counter lost or rewound: never reuse a directory
                job_id += 1
        tmp = state_dir / ".next_id.tmp"
        tmp.write_text(f"{job_id + 1}\n")
        os.replace(tmp, counter)
    return job_id


def parse_directives(script_text: str, prefix: str) -> list[list[str]]:
    """The words of each ``prefix`` line at the top of a script (before the first command).

    Like the real schedulers, directives after the first command line are
    ignored. Raises ValueError for a line shlex cannot split (an open quote).
    """
    out = []
    lines = script_text.splitlines()
    if lines and lines[0].startswith("#!"):
        lines = lines[1:]
    for line in lines:
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith("#"):
            break
        if stripped.startswith(prefix + " ") or stripped == prefix:
            out.append(shlex.split(stripped[len(prefix):]))
    return out


def submit_job(
    state_dir: Path, script: Path, *, name: str, nodes: int, wall_min: float,
    queue: str = "", cwd: Path | None = None, stdout: str | Path | None = None,
    stderr: str | Path | None = None, env: Mapping[str, str] | None = None,
    env_for: EnvFor | None = None, minute_seconds: float = 60.0,
    kill_grace: float = DEFAULT_KILL_GRACE, start_delay: float = 0.0,
    extra: Mapping[str, object] | None = None,
) -> int:
    """Record a job and start its detached monitor; returns the job id at once.

    ``stdout``/``stderr`` default to ``<id>.out``/``<id>.err`` beside the
    script; ``{id}`` in them becomes the job id, and ``stderr`` may equal
    ``stdout`` to join them. Raises OSError if the state directory cannot be
    written or the monitor cannot start.
    """
    job_id = _allocate_id(state_dir)
    jdir = state_dir / str(job_id)
    script = script.resolve()
    job_env = {
        **(env or {}),
        **(env_for(job_id, jdir) if env_for else {}),
        "TIDEWATER_LOCAL_JOBID": str(job_id),
        "TIDEWATER_LOCAL_NODES": str(nodes),
    }
    info: dict[str, object] = {
        **(extra or {}),
        "id": job_id, "name": name, "nodes": nodes, "wall_min": wall_min, "queue": queue,
        "script": str(script), "cwd": str(cwd or script.parent),
        "stdout": str(stdout or script.parent / "{id}.out").replace("{id}", str(job_id)),
        "stderr": str(stderr or script.parent / "{id}.err").replace("{id}", str(job_id)),
        "env": job_env, "submit_time": time.time(),
        "minute_seconds": minute_seconds, "kill_grace": kill_grace, "start_delay": start_delay,
    }
    _write_json(jdir / "job.json", info)
    with open(jdir / "monitor.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tidewater.agents.schedulers.localexec", "_monitor",
             "--state-dir", str(state_dir), str(job_id)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )
    (jdir / "monitor.pid").write_text(f"{proc.pid}\n")
    # The monitor outlives us on purpose; mark the Popen as done so it does not warn.
    proc.returncode = 0
    return job_id


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie answers kill(0) but is gone (Linux only; elsewhere trust kill)
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _pid_of(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _float(v: object) -> float | None:
    return float(v) if isinstance(v, int | float) else None


def read_job(jdir: Path) -> LocalJob | None:
    """One job's record (None for a directory without job.json: a submit in progress)."""
    info = _read_json(jdir / "job.json")
    if info is None:
        return None
    run = _read_json(jdir / "run.json") or {}
    end = _read_json(jdir / "end.json")
    cancelled = (jdir / "cancel").exists()
    exit_code: int | None = None
    end_time: float | None = None
    if end is not None:
        state = str(end.get("reason", "FAILED"))
        code = end.get("exit_code")
        exit_code = code if isinstance(code, int) else None
        end_time = _float(end.get("end_time"))
    else:
        mon = _pid_of(jdir / "monitor.pid")
        if mon is not None and not _alive(mon):
            # The monitor died without recording an end: killed by a cancel's SIGTERM
            # before it set its handler (a job cancelled just after its submit), or by
            # kill -9 or a reboot.
            state = "CANCELLED" if cancelled else "NODE_FAIL"
        else:
            state = "RUNNING" if run else "PENDING"
    nodes = info.get("nodes")
    wall = info.get("wall_min")
    return LocalJob(
        job_id=int(jdir.name), name=str(info.get("name", "")),
        nodes=nodes if isinstance(nodes, int) else 1,
        wall_min=float(wall) if isinstance(wall, int | float) else 0.0,
        queue=str(info.get("queue", "")), state=state,
        submit_time=_float(info.get("submit_time")) or 0.0,
        start_time=_float(run.get("start_time")), end_time=end_time, exit_code=exit_code,
        reason=state if end is not None or state in ("NODE_FAIL", "CANCELLED") else "",
        cancelled=cancelled, info=info,
    )


def list_jobs(state_dir: Path) -> list[LocalJob]:
    """Every job in ``state_dir``, by id; an absent directory holds none."""
    if not state_dir.is_dir():
        return []
    jobs = []
    for p in sorted((p for p in state_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
        job = read_job(p)
        if job is not None:
            jobs.append(job)
    return jobs


def cancel_job(state_dir: Path, job_id: str) -> LocalJob:
    """Ask a job to stop: its monitor kills the process group and records CANCELLED.

    Cancelling a finished job changes nothing. If the monitor is gone, the
    group is killed and CANCELLED recorded here. Returns the job as it was
    when asked; raises NoSuchJob for an id the directory never held.
    """
    jdir = state_dir / job_id
    if not job_id.isdigit() or not (jdir / "job.json").exists():
        raise NoSuchJob(job_id, state_dir)
    with _locked(jdir / "lock"):
        job = read_job(jdir)
        assert job is not None
        if (jdir / "end.json").exists():
            return job
        (jdir / "cancel").touch()
        mon = _pid_of(jdir / "monitor.pid")
        if mon is not None and _alive(mon):
            os.kill(mon, signal.SIGTERM)
            return job
        pid = _pid_of_run(jdir)
        if pid is not None:
            _killpg(pid, signal.SIGKILL)
        _write_json(jdir / "end.json", {"end_time": time.time(), "exit_code": None,
                                        "reason": "CANCELLED"})
    return job


def _pid_of_run(jdir: Path) -> int | None:
    run = _read_json(jdir / "run.json") or {}
    pid = run.get("pid")
    return pid if isinstance(pid, int) else None


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


# --- the monitor: one per job ------------------------------------------------------------------


def _stop_job(proc: subprocess.Popen[bytes], grace: float) -> int:
    """SIGTERM the job's group, SIGKILL it after ``grace`` seconds; its exit code."""
    _killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        _killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return proc.returncode


def _shell_code(rc: int) -> int:
    """Popen's -N for a signal as the shell reports it: 128 + N."""
    return 128 - rc if rc < 0 else rc


def _num(info: Mapping[str, object], key: str, default: float) -> float:
    v = info.get(key)
    return float(v) if isinstance(v, int | float) else default


def _start(jdir: Path, info: Mapping[str, object]) -> subprocess.Popen[bytes] | None:
    """Start ``bash SCRIPT`` in its own process group, unless a cancel came first."""
    with _locked(jdir / "lock"):
        if (jdir / "cancel").exists():
            return None
        env_extra = info.get("env")
        env = {**os.environ, **(env_extra if isinstance(env_extra, dict) else {})}
        stdout, stderr = str(info["stdout"]), str(info["stderr"])
        with contextlib.ExitStack() as stack:
            out = stack.enter_context(open(stdout, "ab"))
            err = out if stderr == stdout else stack.enter_context(open(stderr, "ab"))
            proc = subprocess.Popen(
                ["bash", str(info["script"])], cwd=str(info["cwd"]), env=env,
                stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True,
            )
        _write_json(jdir / "run.json", {"pid": proc.pid, "start_time": time.time(),
                                        "monitor_pid": os.getpid()})
        return proc


def run_monitor(state_dir: Path, job_id: int) -> None:
    """Run one job to its end and record it (the ``_monitor`` subcommand).

    Waits on the job, the wall-time deadline and SIGTERM (a cancel) at once:
    signal handlers only set a flag and wake a ``select`` through
    ``signal.set_wakeup_fd``, so no exception ever lands mid-bookkeeping.
    """
    jdir = state_dir / str(job_id)
    info = _read_json(jdir / "job.json")
    if info is None:
        raise SystemExit(f"localexec: no job.json for job {job_id} in {state_dir}")
    grace = _num(info, "kill_grace", DEFAULT_KILL_GRACE)
    wall = _num(info, "wall_min", 1.0) * _num(info, "minute_seconds", 60.0)

    rfd, wfd = os.pipe()
    os.set_blocking(rfd, False)
    os.set_blocking(wfd, False)
    signal.set_wakeup_fd(wfd)
    asked_to_stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: asked_to_stop.append(signum))
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)

    # The queue wait: PENDING until the delay is over, unless cancelled meanwhile.
    start_at = time.monotonic() + _num(info, "start_delay", 0.0)
    while not asked_to_stop and (wait := start_at - time.monotonic()) > 0:
        select.select([rfd], [], [], wait)
        with contextlib.suppress(BlockingIOError):
            os.read(rfd, 512)

    reason, code = "FAILED", None
    proc = None
    if asked_to_stop:
        reason = "CANCELLED"
    else:
        try:
            proc = _start(jdir, info)
        except OSError as exc:  # bash missing, unwritable output file
            sys.stderr.write(f"localexec: job {job_id} could not start: {exc}\n")
        else:
            reason = "CANCELLED"
    if proc is not None:
        deadline = time.monotonic() + wall
        while True:
            rc = proc.poll()
            if rc is not None:
                code = _shell_code(rc)
                reason = "COMPLETED" if rc == 0 else "FAILED"
                _killpg(proc.pid, signal.SIGKILL)  # like a real scheduler: strays die with the job
                break
            if asked_to_stop:
                reason, code = "CANCELLED", _shell_code(_stop_job(proc, grace))
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                reason, code = "TIMEOUT", _shell_code(_stop_job(proc, grace))
                break
            select.select([rfd], [], [], remaining)
            with contextlib.suppress(BlockingIOError):
                os.read(rfd, 512)
    _write_json(jdir / "end.json", {"end_time": time.time(), "exit_code": code, "reason": reason})


# --- fanout: one copy per "node" ---------------------------------------------------------------


def fanout(n: int, argv: Sequence[str]) -> int:
    """Start ``n`` copies of argv (``TIDEWATER_NODE_INDEX`` 0..n-1) and wait for all.

    SIGTERM/SIGINT/SIGHUP received are passed on to every copy. Returns the
    first non-zero exit code (128 + N for a copy killed by signal N), else 0.
    """
    procs: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        for p in procs:
            if p.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    for i in range(n):
        env = {**os.environ, "TIDEWATER_NODE_INDEX": str(i), "TIDEWATER_NODE_COUNT": str(n)}
        procs.append(subprocess.Popen(list(argv), env=env))
    codes = [_shell_code(p.wait()) for p in procs]
    return next((c for c in codes if c != 0), 0)


# --- command line --------------------------------------------------------------------------------


def _err(msg: str) -> None:
    sys.stderr.write(f"localexec: {msg}\n")


def _submit_cli(args: argparse.Namespace) -> int:
    script = Path(args.script)
    try:
        text = script.read_text()
    except OSError as exc:
        _err(f"submit: cannot read {script}: {exc.strerror}")
        return 1
    opts = argparse.ArgumentParser(prog=DIRECTIVE, add_help=False, exit_on_error=False)
    opts.add_argument("--job-name", default=script.name)
    opts.add_argument("--nodes", type=int, default=1)
    opts.add_argument("--time", type=float, default=60.0)
    opts.add_argument("--queue", default="")
    try:
        words = [w for line in parse_directives(text, DIRECTIVE) for w in line]
        d = opts.parse_args(words)
    except (ValueError, argparse.ArgumentError) as exc:
        _err(f"submit: bad {DIRECTIVE} directive in {script}: {exc}")
        return 1
    if d.nodes < 1 or d.time <= 0:
        _err(f"submit: {script} asks for {d.nodes} nodes and {d.time} minutes;"
             " both must be positive")
        return 1
    job_id = submit_job(
        Path(args.state_dir), script, name=d.job_name, nodes=d.nodes, wall_min=d.time,
        queue=d.queue, minute_seconds=args.minute_seconds, kill_grace=args.kill_grace,
        start_delay=args.start_delay,
    )
    sys.stdout.write(f"{job_id}\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m tidewater.agents.schedulers.localexec``; the exit code."""
    parser = argparse.ArgumentParser(prog="localexec", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("submit")
    p.add_argument("--state-dir", default=str(default_state_dir()))
    p.add_argument("--minute-seconds", type=float, default=60.0,
                   help="seconds one minute of wall time lasts (tests shrink it)")
    p.add_argument("--kill-grace", type=float, default=DEFAULT_KILL_GRACE)
    p.add_argument("--start-delay", type=float, default=0.0,
                   help="seconds the job waits PENDING before it starts (a queue's wait)")
    p.add_argument("script")
    p = sub.add_parser("status")
    p.add_argument("--state-dir", default=str(default_state_dir()))
    p = sub.add_parser("cancel")
    p.add_argument("--state-dir", default=str(default_state_dir()))
    p.add_argument("job_id")
    p = sub.add_parser("fanout")
    p.add_argument("-n", type=int, required=True)
    p.add_argument("command", nargs=argparse.REMAINDER)
    p = sub.add_parser("_monitor")
    p.add_argument("--state-dir", required=True)
    p.add_argument("job_id", type=int)
    args = parser.parse_args(argv)

    if args.cmd == "submit":
        return _submit_cli(args)
    if args.cmd == "status":
        for job in list_jobs(Path(args.state_dir)):
            sys.stdout.write(job.to_json() + "\n")
        return 0
    if args.cmd == "cancel":
        try:
            cancel_job(Path(args.state_dir), args.job_id)
        except NoSuchJob as exc:
            _err(f"cancel: {exc}")
            return 1
        return 0
    if args.cmd == "fanout":
        cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
        if args.n < 1 or not cmd:
            parser.error("fanout needs -n N (N >= 1) and a command after --")
        return fanout(args.n, cmd)
    run_monitor(Path(args.state_dir), args.job_id)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
