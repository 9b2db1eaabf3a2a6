"""Parsl from an idle site: the peer figure for bench/idle_site.py.

    .venv/bin/python bench/idle_site_peers.py [--repeats 5] [--provider slurm|local|both]

Parsl's ``HighThroughputExecutor`` (``address`` and ``loopback_address``
``127.0.0.1``, unencrypted and 2 workers of 1 core, as in bench/peers.py)
on an idle block configuration: ``init_blocks=0``, ``min_blocks=0``,
``max_blocks=1``, ``nodes_per_block=1``, ``worker_init`` putting this
venv's ``bin`` first on PATH, Parsl's default scaling strategy
(``"simple"``). Providers:

* ``slurm`` -- ``SlurmProvider(partition="debug", walltime="00:05:00",
  launcher=SrunLauncher())`` on the local Slurm (``scripts/services.sh
  start``); ``exclusive`` stays at Parsl's default (true);
* ``local`` -- ``LocalProvider(launcher=SingleNodeLauncher())``: the block is
  a process on this machine, no batch scheduler.

Each provider runs with Parsl's default ``strategy_period`` (5 s: how often
the strategy, which alone decides to start a block, runs) and with
``strategy_period=0.1``, the fairest tuned configuration.

``max_idletime`` is 0 by default (``--max-idletime``): the block is
scaled in at the first strategy tick after its task, so the next repeat
starts from idle one period sooner than with 1 s (which costs a second tick,
5 s at the default period, and keeps ``--provider both`` over 3 minutes).
It does not enter the figures: no block is left when a repeat's task is
submitted, either way.

For each repeat the executor is idle (no block Parsl counts as live, and no
process or Slurm job of ours left), one no-op ``python_app`` that returns
``time.time()`` at its start is submitted, and, on this machine's clock:

* strategy reaction -- submit -> the provider's submit (``sbatch``, or the
  local launch) has returned: mostly the wait for the next strategy tick;
* block start       -- that -> the app's body started (Slurm's scheduling,
  the batch script, ``srun``, the worker pool's start-up and registration,
  the dispatch);
* submit -> app body started, and submit -> result back in the caller.

Parsl scales a block in at a strategy tick, so "idle" is seen just after a
tick: submitting then would always wait nearly a whole period (the worst
case). Repeat ``i`` of ``n`` is instead submitted ``(i + 0.5) / n`` of a
period after idle, so the submits fall evenly across the period, as a
user's would.

The node is shared: Slurm jobs of others that were queued while a repeat ran
(``--exclusive`` makes ours wait for them) are reported under the table.

Every configuration runs in a child process of its own, in a temporary
directory that holds Parsl's run directory, under a time limit; the parent
then kills every process left in the child's session (the interchange, a
local block's worker pool, which Parsl puts in a process group of its own)
and cancels the Slurm jobs the child submitted (their ids, written by the
child as it submits, and any job still queued under this run's unique Parsl
label), never another job. A configuration that fails or times out keeps
the repeats it finished.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_PERIOD = "default"
PERIODS = (DEFAULT_PERIOD, "0.1")
IDLE_TIMEOUT = 45.0  # seconds to wait for the executor to be idle before a repeat
RESULT_TIMEOUT = 60.0  # seconds to wait for one app's result
STEPS = {"reaction": "strategy reaction: submit -> block submitted (s)",
         "block": "block start: submitted -> app body started (s)",
         "started": "submit -> app body started (s)",
         "result": "submit -> result (s)"}


def started_at() -> float:
    """The app's body: when it started, on this machine's clock."""
    import time

    return time.time()


# --------------------------------------------------------------------------- child


def squeue_jobs() -> list[tuple[str, str]]:
    """(id, name) of every queued, running or completing Slurm job."""
    out = subprocess.run(["squeue", "-h", "-o", "%i|%j"], capture_output=True, text=True,
                         timeout=20, check=True).stdout
    return [(jid, name) for jid, _, name in
            (line.strip().partition("|") for line in out.splitlines()) if jid]


def squeue_ours(prefix: str) -> list[str]:
    """Ids of the queued, running or completing Slurm jobs whose name starts with ``prefix``."""
    return [jid for jid, name in squeue_jobs() if name.startswith(prefix)]


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie does not (a killed local block's shell is reparented
    to init, which may take a while to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def emit(record: dict[str, Any]) -> None:
    """One JSON line to the parent, at once: a killed child keeps what it measured."""
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def measure(provider: str, period: str, repeats: int, max_idletime: float, label: str,
            jobs_file: Path, debug: bool) -> None:
    """Run in the child process: ``repeats`` idle -> one app -> result cycles, emitted."""
    import logging

    import parsl
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.jobs.states import TERMINAL_STATES
    from parsl.launchers import SingleNodeLauncher, SrunLauncher
    from parsl.providers import LocalProvider, SlurmProvider

    worker_init = f"export PATH={Path(sys.executable).parent}:$PATH"
    prov: Any
    if provider == "slurm":
        prov = SlurmProvider(partition="debug", nodes_per_block=1, init_blocks=0,
                             min_blocks=0, max_blocks=1, walltime="00:05:00",
                             launcher=SrunLauncher(), worker_init=worker_init)
    else:
        prov = LocalProvider(  # type: ignore[no-untyped-call]
            nodes_per_block=1, init_blocks=0, min_blocks=0, max_blocks=1,
            launcher=SingleNodeLauncher(), worker_init=worker_init)

    # When each block's submit returned, and its job id; a Slurm job id is
    # also written out at once so the parent can cancel the job even if this
    # process is killed. (A local block's "job id" is a process id: never
    # written there, never given to scancel.)
    submitted: list[tuple[float, str]] = []
    submit = prov.submit

    def recording_submit(*args: Any, **kwargs: Any) -> Any:
        job_id = submit(*args, **kwargs)
        submitted.append((time.time(), str(job_id)))
        if provider == "slurm":
            with open(jobs_file, "a") as f:
                f.write(f"{job_id}\n")
        return job_id

    prov.submit = recording_submit

    kw: dict[str, Any] = {}
    if period != DEFAULT_PERIOD:
        kw["strategy_period"] = float(period)
    cfg = Config(
        executors=[HighThroughputExecutor(
            label=label, address="127.0.0.1", loopback_address="127.0.0.1",
            max_workers_per_node=2, cores_per_worker=1, encrypted=False, provider=prov,
        )],
        run_dir=os.path.join(os.getcwd(), "runinfo"), max_idletime=max_idletime,
        initialize_logging=debug, **kw,
    )
    if not debug:
        logging.getLogger("parsl").setLevel(logging.ERROR)
    dfk = parsl.load(cfg)
    emit({"strategy": cfg.strategy, "strategy_period": cfg.strategy_period,
          "max_idletime": cfg.max_idletime})
    ex: Any = dfk.executors[label]  # a BlockProviderExecutor (HTEX)
    app = parsl.python_app(started_at, executors=[label])
    prefix = f"parsl.{label}."

    def idle() -> bool:
        if any(s.state not in TERMINAL_STATES for s in list(ex.status_facade.values())):
            return False  # Parsl still counts a block as live
        if provider == "slurm":
            return not squeue_ours(prefix)
        return not any(pid_alive(int(jid)) for _, jid in submitted)

    def others() -> set[str]:
        """Slurm jobs that are not ours: they may hold the (exclusive) node."""
        if provider != "slurm":
            return set()
        return {f"{jid} {name}" for jid, name in squeue_jobs() if not name.startswith(prefix)}

    try:
        for i in range(repeats):
            deadline = time.monotonic() + IDLE_TIMEOUT
            while not idle():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"repeat {i + 1}: not idle after {IDLE_TIMEOUT:g}s")
                time.sleep(0.05)
            # Parsl scales a block in at one of its strategy ticks, so "idle"
            # comes just after a tick; submitting at once would always wait
            # almost a whole period for the tick that scales out (the worst
            # case). Spread the submits evenly over a period instead.
            time.sleep(cfg.strategy_period * (i + 0.5) / repeats)
            n_before = len(submitted)
            foreign = others()
            t0 = time.time()
            fut = app()
            t_body = fut.result(timeout=RESULT_TIMEOUT)
            t_result = time.time()
            foreign |= others()
            if len(submitted) != n_before + 1:
                raise RuntimeError(f"repeat {i + 1}: expected one new block, "
                                   f"got {len(submitted) - n_before}")
            t_sub, job = submitted[-1]
            emit({"repeat": i + 1, "job": job, "others": sorted(foreign),
                  "reaction": t_sub - t0, "block": t_body - t_sub,
                  "started": t_body - t0, "result": t_result - t0})
            print(f"  {provider} period {period} repeat {i + 1}: block submitted "
                  f"{t_sub - t0:.2f} s, body started {t_body - t0:.2f} s, result "
                  f"{t_result - t0:.2f} s (job {job})"
                  + (" [other Slurm jobs seen]" if foreign else ""),
                  file=sys.stderr, flush=True)
    finally:
        dfk.cleanup()
        parsl.clear()


# --------------------------------------------------------------------------- parent


def session_pids(sid: int) -> list[int]:
    """Every process (but this one) whose session id is ``sid``, from /proc."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # fields after the name: state ppid pgrp session ...
            pids.append(int(d))
    return pids


def kill_session(sid: int) -> None:
    """SIGKILL what is left of a session this script started (all its process groups)."""
    for pid in session_pids(sid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def cancel_jobs(jobs_file: Path, prefix: str) -> list[str]:
    """scancel the jobs the child recorded and any still queued under ``prefix``."""
    ids: set[str] = set()
    with contextlib.suppress(OSError):
        ids.update(x.strip() for x in jobs_file.read_text().split() if x.strip().isdigit())
    if shutil.which("squeue"):
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            ids.update(squeue_ours(prefix))
    if ids and shutil.which("scancel"):
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run(["scancel", *sorted(ids)], capture_output=True, timeout=20,
                           check=False)
    return sorted(ids)


def run_config(provider: str, period: str, repeats: int, max_idletime: float,
               timeout: float, debug: bool) -> dict[str, Any]:
    """Measure one configuration in a child process bounded by ``timeout`` seconds.

    Returns ``{"config": Parsl's settings, "repeats": [one dict per repeat],
    "elapsed": s}`` plus ``"error"`` if the child failed or was killed (the
    repeats it finished are kept).
    """
    tag = "default" if period == DEFAULT_PERIOD else period.replace(".", "p")
    # Unique to this run: the Slurm jobs' names start with parsl.<label>.
    label = f"idle_{os.getpid()}_{provider}_{tag}"
    cwd = tempfile.mkdtemp(prefix="idle-peer-")
    jobs_file = Path(cwd) / "jobs"
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", "--provider", provider,
            "--period", period, "--repeats", str(repeats), "--max-idletime", str(max_idletime),
            "--label", label, "--jobs-file", str(jobs_file)] + (["--debug"] if debug else [])
    # Parsl starts its interchange and worker pool as scripts found on PATH.
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", "")}
    t = time.monotonic()
    error = None
    # The child's stderr (its progress, Parsl's complaints) goes straight to ours.
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=cwd,
                         env=env, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()  # what it wrote before it was killed
        error = f"timed out after {timeout:g}s (killed)"
    finally:
        kill_session(p.pid)  # the interchange, a local block's workers (own process group)
        jobs = cancel_jobs(jobs_file, f"parsl.{label}.") if provider == "slurm" else []
        if debug:
            print(f"  (kept {cwd}; Slurm jobs {' '.join(jobs) or 'none'})", file=sys.stderr)
        else:
            shutil.rmtree(cwd, ignore_errors=True)
    if error is None and p.returncode != 0:
        error = f"exit code {p.returncode} (see its stderr above)"
    r: dict[str, Any] = {"config": {}, "repeats": [], "elapsed": time.monotonic() - t}
    for line in out.decode(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            rec = json.loads(line)
            if "repeat" in rec:
                r["repeats"].append(rec)
            else:
                r["config"] = rec
    if error is None and len(r["repeats"]) < repeats:
        error = f"only {len(r['repeats'])} of {repeats} repeats reported"
    if error is not None:
        r["error"] = error
    return r


def config_name(provider: str, period: str, config: dict[str, Any]) -> str:
    if period != DEFAULT_PERIOD:
        return f"{provider}, strategy_period {period} s"
    got = config.get("strategy_period")
    return f"{provider}, strategy_period {'?' if got is None else f'{got:g}'} s (default)"


def rows_of(name: str, repeats: list[dict[str, Any]], c: Any) -> list[list[str]]:
    """Table rows (configuration, step, median [min-max]) for one configuration."""
    return [[name if k == "reaction" else "", title,
             c.Spread.of([x[k] for x in repeats]).fmt(3)] for k, title in STEPS.items()]


def _common() -> Any:
    sys.path.insert(0, str(HERE))
    import common

    return common


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--provider", choices=("slurm", "local", "both"), default="both")
    ap.add_argument("--max-idletime", type=float, default=0.0,
                    help="Parsl's max_idletime, s (default 0: a block is scaled in at the "
                         "first strategy tick after its task; between repeats only, not in "
                         "the figures)")
    ap.add_argument("--timeout", type=float, default=0.0,
                    help="seconds per configuration (default: 30 + 4 periods per repeat, "
                         "at least 8 s per repeat)")
    ap.add_argument("--debug", action="store_true",
                    help="Parsl logging on; keep each configuration's directory")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--period", default=DEFAULT_PERIOD, help=argparse.SUPPRESS)
    ap.add_argument("--label", help=argparse.SUPPRESS)
    ap.add_argument("--jobs-file", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        measure(a.provider, a.period, a.repeats, a.max_idletime, a.label, a.jobs_file, a.debug)
        return
    try:
        import parsl
        from parsl.config import Config
    except ImportError:
        sys.exit("parsl is not installed (pip install parsl): it is a peer, not a dependency")
    providers = ["slurm", "local"] if a.provider == "both" else [a.provider]
    if "slurm" in providers and not shutil.which("sbatch"):
        sys.exit("no sbatch on PATH: run scripts/services.sh start (as root) first")
    default_period = float(inspect.signature(Config).parameters["strategy_period"].default)
    c = _common()
    print(c.machine_line())
    print(f"Parsl {parsl.__version__}: default strategy_period {default_period:g} s", flush=True)
    t_all = time.monotonic()
    rows: list[list[str]] = []
    notes: list[str] = []
    loads: list[str] = []  # other work on this 2-core machine shows in the block start
    for provider in providers:
        for period in PERIODS:
            per = default_period if period == DEFAULT_PERIOD else float(period)
            timeout = a.timeout or 30.0 + a.repeats * max(8.0, 4 * per + a.max_idletime)
            load = os.getloadavg()[0]
            r = run_config(provider, period, a.repeats, a.max_idletime, timeout, a.debug)
            name = config_name(provider, period, r["config"])
            loads.append(f"{name}: {load:.2f}")
            print(f"  {name}: {r['elapsed']:.1f}s", file=sys.stderr, flush=True)
            if r["repeats"]:
                rows += rows_of(name, r["repeats"], c)
            if "error" in r:
                notes.append(f"{name}: {r['error']}")
            notes += [f"{name}: repeat {x['repeat']} ran while other Slurm jobs were queued "
                      f"({', '.join(x['others'])})" for x in r["repeats"] if x["others"]]
    print(c.table(f"Parsl HTEX from an idle block configuration (init/min 0, max 1) -> app "
                  f"running, {a.repeats} repeats (median [min-max])",
                  ["configuration", "step", "median [spread]"], rows))
    for note in notes:
        print(f"WARNING: {note}")
    print(f"1-min load average before each configuration: {'; '.join(loads)}")
    print(f"(whole run {time.monotonic() - t_all:.0f} s)")


if __name__ == "__main__":
    main()
