"""TLS over real sockets: a controller process serving wss://, peers that verify it.

The certificates come from `tidewater dev-cert` run as a process. A client
and a pilot holding the right CA get work done; a client with another CA,
one trusting only the system store and a plaintext one are refused with a
message that says what to do, within the connect timeout; the controller
keeps serving. Off loopback the controller will not serve plaintext unless
told to.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time
import urllib.request
from pathlib import Path

import anyio
import pytest

import tidewater
from tidewater import ConnectionBroken, TLSError
from tidewater.config import ControllerConfig, Timeouts
from tidewater.controller.app import serve
from tidewater.tls import client_context, issue_dev_cert, write_dev_cert

from .procs import HEARTBEAT, PY, Cluster, Proc, cluster, free_port, until, write_site

pytestmark = pytest.mark.integration

CONNECT = 5.0  # the connect timeout the refused clients must answer within


async def dev_cert(directory: Path) -> Path:
    """`tidewater dev-cert DIR`, as a user runs it; returns DIR."""
    r = await anyio.run_process([PY, "-m", "tidewater", "dev-cert", str(directory)], check=False)
    assert r.returncode == 0, r.stderr.decode()
    assert b"server.key" in r.stderr
    return directory


async def start_tls_controller(c: Cluster, certs: Path) -> None:
    c.url = f"wss://127.0.0.1:{c.port}"
    c.env["TIDEWATER_URL"] = c.url
    c.env.pop("TIDEWATER_CA_FILE", None)
    ctl = await c.start_controller("--tls-cert", str(certs / "server.pem"),
                                   "--tls-key", str(certs / "server.key"))
    assert any(f"controller listening on {c.url}" in ln for ln in ctl.lines), ctl.log()


def pilot_argv(c: Cluster, ca: Path, pilot_id: str) -> list[str]:
    """A pilot over wss://, given its CA with the global --ca-file option."""
    return [PY, "-m", "tidewater", "--url", c.url, "--ca-file", str(ca), "pilot", "--cores", "1",
            "--workdir", str(c.tmp / "work" / pilot_id), "--pilot-id", pilot_id,
            "--heartbeat", str(HEARTBEAT)]


async def start_pilot(c: Cluster, token: str, ca: Path, pilot_id: str) -> Proc:
    proc = await anyio.open_process(pilot_argv(c, ca, pilot_id),
                                    env={**c.env, "TIDEWATER_TOKEN": token}, stdout=None)
    p = Proc(f"pilot {pilot_id}", proc, c.tg)
    c.pilots[pilot_id] = p
    await p.wait_for(f"pilot {pilot_id} connected")
    return p


def words(text: str) -> str:
    """``text`` with the console's line wrapping undone."""
    return " ".join(text.split())


def health(url: str, ca: Path) -> dict[str, object]:
    with urllib.request.urlopen(url, context=client_context(ca), timeout=CONNECT) as r:
        body: dict[str, object] = json.loads(r.read())
        return body


async def refused(url: str, token: str, ca: Path | None) -> BaseException:
    """Connect and expect a refusal within the connect timeout; returns it."""
    started = time.monotonic()
    with pytest.raises(tidewater.TidewaterError) as info:
        async with tidewater.connect(url, token=token, ca_file=ca,
                                     timeouts=Timeouts(connect=CONNECT)):
            pass
    assert time.monotonic() - started < CONNECT
    return info.value


async def test_verified_peers_work_and_the_rest_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TIDEWATER_CA_FILE", raising=False)
    certs = await dev_cert(tmp_path / "tls")
    other = await dev_cert(tmp_path / "other-tls")
    ca = certs / "ca.pem"
    async with cluster(tmp_path) as c:
        await start_tls_controller(c, certs)
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token, ca_file=ca) as client:
            _site, site_token = await client.add_site("laptop")
            await client.add_app("laptop", "hello", "echo hello {name}")
            await start_pilot(c, site_token, ca, "p1")
            task = await client.submit("hello", site="laptop", params={"name": "tls"})
            info = await task.result(timeout=60)
        assert (info.state, info.stdout_tail, info.pilot) == ("JOB_FINISHED", "hello tls\n", "p1")
        before = c.snapshot()

        # Another CA: refused before any token is sent, and it says what to do.
        exc = await refused(c.url, token, other / "ca.pem")
        assert isinstance(exc, TLSError)
        assert "certificate could not be verified" in str(exc) and "--ca-file" in str(exc)
        # No CA file: the system trust store does not know a development CA.
        exc = await refused(c.url, token, None)
        assert isinstance(exc, TLSError) and "system trust store" in str(exc)
        # Plaintext to the TLS port: a clean refusal naming wss://, not a hang.
        exc = await refused(f"ws://127.0.0.1:{c.port}", token, None)
        assert isinstance(exc, TLSError) and "wss://" in str(exc)
        # A pilot with the wrong CA stops with the message instead of retrying forever.
        with anyio.fail_after(30):
            bad = await anyio.run_process(pilot_argv(c, other / "ca.pem", "p-bad"), check=False,
                                          env={**c.env, "TIDEWATER_TOKEN": site_token})
        assert bad.returncode == 5  # cannot reach the controller (docs/cli.md)
        assert "certificate could not be verified" in words(bad.stderr.decode())
        assert c.snapshot() == before

        # The controller kept serving: health over https, and the good client still works.
        assert c.controller is not None and c.controller.proc.returncode is None
        answer = await anyio.to_thread.run_sync(health, f"https://127.0.0.1:{c.port}/health", ca)
        assert answer["status"] == "ok"
        async with tidewater.connect(c.url, token=token, ca_file=ca) as client:
            again = await client.submit("hello", site="laptop", params={"name": "again"})
            assert (await again.result(timeout=60)).stdout_tail == "hello again\n"
        assert not any("Traceback" in ln for ln in c.controller.lines), c.controller.log()


async def test_ca_file_from_the_environment_and_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    certs = await dev_cert(tmp_path / "tls")
    async with cluster(tmp_path) as c:
        await start_tls_controller(c, certs)
        token = await c.add_user("alice")
        monkeypatch.setenv("TIDEWATER_CA_FILE", str(certs / "ca.pem"))
        async with tidewater.connect(c.url, token=token) as client:
            assert await client.sites() == []
        env = {**c.env, "TIDEWATER_TOKEN": token}
        ok = await anyio.run_process([PY, "-m", "tidewater", "--ca-file",
                                      str(certs / "ca.pem"), "site", "ls"], env=env, check=False)
        assert ok.returncode == 0, ok.stderr.decode()
        r = await anyio.run_process([PY, "-m", "tidewater", "site", "ls"], env=env, check=False)
        assert r.returncode == 5
        said = words(r.stderr.decode())
        assert "could not be verified" in said and "--ca-file" in said
        assert "Traceback" not in said


async def test_site_agent_and_its_batch_job_pilots_verify_the_controller(tmp_path: Path) -> None:
    certs = await dev_cert(tmp_path / "tls")
    async with cluster(tmp_path) as c:
        await start_tls_controller(c, certs)
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token, ca_file=certs / "ca.pem") as client:
            _site, site_token = await client.add_site("laptop")
            await client.add_app("laptop", "hello", "echo hello {n}")
            site_dir = write_site(
                tmp_path / "site", name="laptop", scheduler="local", url=c.url,
                token=site_token, sections={"site": {"ca_file": "ca.pem"},
                                            "scheduler": {"state_dir": str(tmp_path / "jobs")}},
            )
            # Relative to the site directory, like the token file.
            shutil.copy(certs / "ca.pem", site_dir / "ca.pem")
            await c.start_agent(site_dir)
            job = await client.queue_submit("laptop", nodes=1, wall_time_min=10)
            tasks = [await client.submit("hello", site="laptop", params={"n": i})
                     for i in range(3)]
            infos = await client.wait(tasks, timeout=60)
            assert [i.state for i in infos] == ["JOB_FINISHED"] * 3
            assert {i.pilot.split("-")[0] for i in infos} == {f"job{job.id}"}
            # End the job, so that its pilot is not left holding a connection at shutdown.
            await client.queue_cancel(job.id)

            async def ended() -> bool:
                (j,) = [j for j in await client.queue(include_finished=True) if j.id == job.id]
                return j.state == "finished"

            await until(ended, what="the cancelled batch job to finish")


async def test_hostname_not_in_the_certificate_is_refused(tmp_path: Path) -> None:
    write_dev_cert(tmp_path, issue_dev_cert(["ctl.example.org"], now=dt.datetime.now(dt.UTC)))
    cfg = ControllerConfig(db=str(tmp_path / "tw.db"), port=0,
                           tls_cert=str(tmp_path / "server.pem"),
                           tls_key=str(tmp_path / "server.key"))
    async with serve(cfg) as srv:
        assert srv.url.startswith("wss://")
        exc = await refused(srv.url, "any-token", tmp_path / "ca.pem")
        assert isinstance(exc, TLSError)
        assert "mismatch" in str(exc) and "dev-cert DIR --host NAME" in str(exc)


async def test_plaintext_off_loopback_needs_allow_plaintext(tmp_path: Path) -> None:
    port = free_port()
    r = await anyio.run_process(
        [PY, "-m", "tidewater", "server", "--db", str(tmp_path / "x.db"), "--host", "0.0.0.0",
         "--port", str(port)], check=False, env={"TIDEWATER_HOME": str(tmp_path / "home"),
                                                 "PATH": "/usr/bin:/bin"})
    said = words(r.stderr.decode())
    assert r.returncode != 0
    assert "refusing to serve plaintext" in said
    assert "--tls-cert" in said and "--allow-plaintext" in said
    assert not (tmp_path / "x.db").exists()

    async with cluster(tmp_path) as c:
        await c.start_controller("--host", "0.0.0.0", "--allow-plaintext")
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as client:
            assert await client.sites() == []
        # A client expecting TLS from a plaintext controller: refused cleanly, in time.
        exc = await refused(f"wss://127.0.0.1:{c.port}", token, None)
        assert isinstance(exc, TLSError) and "ws://" in str(exc)
        assert not isinstance(exc, ConnectionBroken)
        assert c.controller is not None and c.controller.proc.returncode is None
        async with tidewater.connect(c.url, token=token) as client:
            assert await client.sites() == []
        assert not any("Traceback" in ln for ln in c.controller.lines), c.controller.log()
