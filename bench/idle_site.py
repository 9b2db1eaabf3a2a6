"""From a task submitted to an idle site (no pilots, no batch job) until it runs.

    .venv/bin/python bench/idle_site.py [--scheduler slurm|local] [--repeats 5]

A controller process, and a site agent process (``tidewater site start``)
with the autoscaler on and ``pilot_idle_timeout`` of 1 s, on the local
Slurm (``scripts/services.sh start``) or the local fork scheduler. For each
repeat the site is idle: one ``/bin/true`` task is submitted; the agent
hears the demand, asks for a batch job, submits it; the scheduler starts it;
the pilot connects and runs the task. Then the pilot idles out, the job
ends, and the next repeat starts from idle again.

Breakdown, all on this machine's clock:

* agent reaction  -- task stored -> the agent's ``sbatch`` has returned
  (``submitted_at``, taken when the submit command returned): the demand push,
  the autoscaler's decision, the job's creation in the store and the
  submit command itself;
* scheduler wait  -- submitted -> the pilot's process started (from
  ``/proc``, ~10 ms): Slurm's scheduling, the batch script and ``srun``
  starting the pilot's step;
* pilot start-up  -- the pilot's process started -> it connected: Python and
  Tidewater imports, allocation discovery, the websocket handshake;
* dispatch        -- pilot connected -> task process started.

Balsam's elastic queue (the peer this replaces) looks for work every 60 s
by default (``elastic.service_period``), so its agent reaction alone is up
to 60 s; Parsl's block strategy polls every 5 s (``strategy_period``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PY, SITE, Spread, _spawn, cluster, log_tail, machine_line, stop_processes, table  # noqa: E402

from tidewater.agents.settings import DEFAULT_TEMPLATE, write_token  # noqa: E402
from tidewater.client import Client  # noqa: E402


def write_site(d: Path, url: str, token: str, scheduler: str) -> None:
    d.mkdir(parents=True, exist_ok=True)
    extra = f'state_dir = "{d / "local-jobs"}"\n' if scheduler == "local" else ""
    (d / "settings.toml").write_text(f"""\
[site]
name = "{SITE}"
controller = "{url}"
scheduler = "{scheduler}"
python = "{PY}"
work_root = "{d / 'work'}"
poll_interval = 1.0
pilot_idle_timeout = 1.0
wall_time_margin = 5.0
launcher = "mpiexec"
[scheduler]
{extra}[job]
wall_time_min = 5
[autoscale]
enabled = true
max_queued_jobs = 1
max_total_nodes = 1
""")
    (d / "job-template.sh").write_text(DEFAULT_TEMPLATE)
    write_token(d / "token", token)


async def until_idle(client: Client) -> None:
    """Poll until the site has no live batch job (the pilot idled out and its job ended)."""
    while True:
        if not await client.queue(site=SITE):
            return
        await anyio.sleep(0.1)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scheduler", default="slurm", choices=["slurm", "local"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--peers", action=argparse.BooleanOptionalAction, default=True,
                    help="then measure Parsl from an idle site in the same run "
                         "(bench/idle_site_peers.py)")
    args = ap.parse_args()
    if args.scheduler == "slurm" and not shutil.which("sbatch"):
        sys.exit("no sbatch on PATH: run scripts/services.sh start (as root) first")
    print(machine_line())
    rows: dict[str, list[float]] = {k: [] for k in
                                    ("total", "agent", "scheduler", "pilot", "dispatch")}
    async with cluster(pilots=0) as c:
        site_dir = c.base / "site"
        write_site(site_dir, c.url, c.site_token, args.scheduler)
        log = c.base / "agent.log"
        agent = _spawn([PY, "-m", "tidewater", "-v", "site", "start", str(site_dir)], log,
                       dict(os.environ))
        try:
            with anyio.fail_after(30):
                while "connected to" not in log.read_text(errors="replace"):
                    if agent.poll() is not None:
                        raise RuntimeError(f"agent exited:\n{log_tail(log)}")
                    await anyio.sleep(0.05)
            for i in range(args.repeats):
                with anyio.fail_after(120):  # idle: no live batch job left
                    await until_idle(c.client)
                t0 = time.time()
                task = await c.client.submit("true", site=SITE)
                with anyio.fail_after(120):
                    info = await task.result()
                total = time.time() - t0
                job = [j for j in await c.client.queue(include_finished=True)][-1]
                assert info.state == "JOB_FINISHED", info
                assert job.submitted_at and job.first_pilot_at and info.started_at
                agent_s = job.submitted_at - info.created_at
                started = job.first_pilot_process_at or job.first_pilot_at
                pilot_s = job.first_pilot_at - started
                sched_s = started - job.submitted_at
                rows["total"].append(total)
                rows["agent"].append(agent_s)
                rows["scheduler"].append(sched_s)
                rows["pilot"].append(pilot_s)
                rows["dispatch"].append(info.started_at - job.first_pilot_at)
                print(f"  repeat {i + 1}: total {total:.2f} s (agent {agent_s * 1e3:.0f} ms, "
                      f"job {job.id} {job.scheduler_id})", flush=True)
            with anyio.move_on_after(60):  # let the last job idle out before leaving
                await until_idle(c.client)
        finally:
            stop_processes([agent])
    names = {"total": "submit -> task started (s)", "agent": "agent reaction (s)",
             "scheduler": "scheduler wait (s)", "pilot": "pilot start-up (s)",
             "dispatch": "pilot connected -> task started (s)"}
    print(table(f"Idle site -> task running, {args.scheduler}, {args.repeats} repeats "
                "(median [min-max])", ["step", "median [spread]"],
                [[names[k], Spread.of(v).fmt(3)] for k, v in rows.items()]))
    print("Balsam's elastic queue (not runnable here) looks for work every 60 s by default.")
    if args.peers:
        print(flush=True)
        await anyio.run_process(
            [PY, str(Path(__file__).with_name("idle_site_peers.py")), "--provider",
             args.scheduler, "--repeats", str(args.repeats)],
            stdout=None, stderr=None, check=False)


if __name__ == "__main__":
    anyio.run(main)
