"""The site agent's relay with real processes in network namespaces.

The layout is an HPC site whose compute nodes cannot reach the controller::

    host: controller (wss://, 0.0.0.0)
      │ veth
    namespace "login": the site agent, its relay on 0.0.0.0:7700, its batch job's pilot
      │ veth
    namespace "compute": pilots; their only link goes to the login namespace, no route on

* the compute namespace cannot open a TCP connection to the controller, but a
  pilot started there with ``--relay`` connects through the agent, runs tasks,
  and the agent's batch job is told to use the relay too; the controller's
  certificate is checked against its address, end to end, through the relay;
* kill -9 of the agent (the relay) while the relayed pilot runs tasks, and a
  restart: the pilot reconnects through the new relay, every task finishes,
  and the results it held across the outage are accepted exactly once.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import anyio
import pytest

from tidewater.tls import dev_cert_names, issue_dev_cert, write_dev_cert

from ..integration.procs import LEASE, PY, until
from .conftest import Netns
from .invariants import assert_holds
from .report import Row
from .workload import World, world

pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.netns]

RELAY_PORT = 7700
N = 300
SLEEPS = (0.02,) * 9 + (1.0,)


def certs(tmp: Path, login: Netns) -> Path:
    """A development CA and a certificate naming 127.0.0.1 and the controller's address
    as the login namespace sees it (what the agent and the pilots dial)."""
    d = tmp / "tls"
    write_dev_cert(d, issue_dev_cert(dev_cert_names("localhost", [login.host_ip]),
                                     now=dt.datetime.now(dt.UTC)))
    return d


def controller_args(lease: float) -> tuple[str, ...]:
    return ("--host", "0.0.0.0", "--lease-timeout", str(lease),
            "--disconnect-grace", str(lease))


async def site(w: World, login: Netns, compute: Netns, tls: Path) -> tuple[str, str]:
    """The agent (relay on) and its batch job's pilot in the login namespace, pilot
    ``relayed`` in the compute namespace. Returns (controller URL, job pilot's id)."""
    url = f"wss://{login.host_ip}:{w.c.port}"
    relay = f"{compute.host_ip}:{RELAY_PORT}"
    agent = await w.start_agent(prefix=login.prefix, url=url, sections={
        "site": {"ca_file": str(tls / "ca.pem")},
        "relay": {"listen": f"0.0.0.0:{RELAY_PORT}", "advertise": relay},
    })
    await agent.wait_for("relay listening on 0.0.0.0:7700")
    await w.start_pilot("relayed", prefix=compute.prefix, url=url,
                        env={"TIDEWATER_RELAY": relay})
    return url, await w.start_job()


async def reaches(prefix: list[str], host: str, port: int) -> tuple[bool, str]:
    """Whether a TCP connection from under ``prefix`` to ``host:port`` opens (within 3 s)."""
    probe = ("import socket, sys\n"
             "try:\n"
             f"    socket.create_connection(({host!r}, {port}), timeout=3).close()\n"
             "except OSError as exc:\n"
             "    sys.exit(str(exc))\n")
    r = await anyio.run_process([*prefix, PY, "-c", probe], check=False)
    return r.returncode == 0, r.stderr.decode().strip()


async def test_pilots_that_cannot_reach_the_controller_work_through_the_relay(
    tmp_path: Path, netns: Netns, inner_netns: Netns, chaos_seed: int,
    chaos_report: list[Row],
) -> None:
    login, compute = netns, inner_netns
    tls = certs(tmp_path, login)
    async with world(tmp_path, "relay", chaos_seed, chaos_report, tls=tls,
                     controller_args=controller_args(2 * LEASE)) as w:
        port = w.c.port
        # The isolation: from the compute namespace the controller cannot be reached
        # (no route), the relay can; from the login namespace the controller can.
        ok, why = await reaches(compute.prefix, login.host_ip, port)
        assert not ok and "unreachable" in why.lower(), why
        assert (await reaches(login.prefix, login.host_ip, port))[0]

        _url, job_pilot = await site(w, login, compute, tls)
        assert (await reaches(compute.prefix, compute.host_ip, RELAY_PORT))[0]
        # The agent told its batch job's pilots to use the relay, by the address they dial.
        (script,) = (tmp_path / "site" / "jobs").glob("*/job.sh")
        assert f"--relay {compute.host_ip}:{RELAY_PORT}" in script.read_text()

        tasks = await w.submit(w.work(N, SLEEPS))
        await w.settle(tasks)
        v = w.verdict(tasks)
        ran = {str(r[0]): int(r[1]) for r in w.rows(
            "SELECT pilot, count(*) FROM tasks GROUP BY pilot")}
        agent = w.agent
        assert agent is not None
        (pilot_token,) = (tmp_path / "site" / "jobs").glob("*/pilot-token")
        tokens = [w.site_token, pilot_token.read_text().strip()]
    assert_holds(v)
    assert v.states["JOB_FINISHED"] == N and v.retried == 0
    assert ran.get("relayed", 0) > 0 and ran.get(job_pilot, 0) > 0, ran
    # The relay logged what it carried, never a secret.
    assert not any(t in ln for ln in agent.lines for t in tokens)


async def test_results_are_accepted_once_across_a_relay_restart(
    tmp_path: Path, netns: Netns, inner_netns: Netns, chaos_seed: int,
    chaos_report: list[Row],
) -> None:
    login, compute = netns, inner_netns
    tls = certs(tmp_path, login)
    # A lease (and disconnect grace) longer than the agent takes to come back: the relayed
    # pilot keeps its work, and what it finished while cut off is accepted once, as itself.
    lease = 20.0
    async with world(tmp_path, "relay-restart", chaos_seed, chaos_report, tls=tls,
                     controller_args=controller_args(lease)) as w:
        await site(w, login, compute, tls)
        tasks = await w.submit(w.work(N, SLEEPS))
        await w.reach(w.rng.randint(N // 5, N // 2))
        held: set[int] = set()

        async def busy() -> bool:
            held.update(w.running_on({"relayed"}))
            return bool(held)

        await until(busy, what="a task running on the relayed pilot")
        assert w.agent is not None
        t0 = time.time()
        w.agent.kill()
        w.row.faults.append("kill -9 agent (relay)")
        await w.c.pilots["relayed"].wait_for("lost the controller", timeout=30)
        await w.start_agent()  # the same site, the same relay address
        await w.c.pilots["relayed"].wait_for("pilot relayed connected", count=2, timeout=30)
        w.row.recover.append(time.time() - t0)
        await w.settle(tasks)
        v = w.verdict(tasks, kept=held)
        # What ran on the relayed pilot at the kill was accepted after it: across the restart.
        crossed = w.finished_at(held)
        lost = w.losses({"relayed"}, t0)
        alive = w.c.pilots["relayed"].proc.returncode is None
    assert_holds(v)
    assert v.states["JOB_FINISHED"] == N
    assert lost == [] and v.retried == 0 and alive
    assert len(crossed) == len(held) and min(crossed) > t0
