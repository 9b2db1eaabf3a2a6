"""The command line, end to end, as the README shows it."""

from __future__ import annotations

import json
import socket
from collections.abc import Awaitable
from pathlib import Path

import anyio
import pytest

from .procs import PY, Cluster, cluster

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("store")]

CliResult = tuple[int, str, str]


async def run_cli(c: Cluster, *args: str, token: str = "", check: bool = True) -> CliResult:
    """``tidewater ARGS`` against the cluster: exit code, stdout, stderr."""
    env = {**c.env, "TIDEWATER_TOKEN": token}
    r = await anyio.run_process([PY, "-m", "tidewater", *args], env=env, check=False)
    out, err = r.stdout.decode(), r.stderr.decode()
    if check and r.returncode != 0:
        raise AssertionError(f"tidewater {' '.join(args)} -> {r.returncode}\n{err}")
    return r.returncode, out, err


async def test_cli_flow(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        await c.start_controller()

        def tw(*args: str, token: str = "", check: bool = True) -> Awaitable[CliResult]:
            return run_cli(c, *args, token=token, check=check)

        _, out, err = await tw("user", "add", "alice", "--db", c.db)
        token = out.strip()
        assert token.startswith("twu_") and "alice" in err
        code, _, err = await tw("user", "add", "alice", "--db", c.db, check=False)
        assert code == 1 and "already exists" in err

        _, out, _ = await tw("site", "add", "laptop", token=token)
        site_token = out.strip()
        assert site_token.startswith("tws_")
        await tw("app", "add", "--site", "laptop", "hello", "echo hello {name}", token=token)
        await tw("app", "add", "--site", "laptop", "--param", "s:float=0", "nap", "sleep {s}",
                 token=token)
        await tw("app", "add", "--site", "laptop", "--function", "json:dumps", "dumps",
                 token=token)
        _, out, _ = await tw("app", "ls", token=token)
        assert "hello" in out and "echo hello {name}" in out
        assert "function json:dumps" in out

        await c.start_pilot(site_token, pilot_id="cli-pilot", cores=2)
        _, out, _ = await tw("site", "ls", token=token)
        assert "laptop" in out

        _, out, _ = await tw("submit", "--site", "laptop", "--tag", "run=42", "hello",
                             "name=world", "--wait", token=token)
        assert "JOB_FINISHED" in out and "hello world" in out

        params = tmp_path / "many.jsonl"
        params.write_text("".join(json.dumps({"name": f"n{i}"}) + "\n" for i in range(20)))
        _, out, err = await tw("submit", "--site", "laptop", "--tag", "run=42", "--params-file",
                               str(params), "--wait", "hello", token=token)
        assert "20 finished, 0 did not" in err

        code, _, err = await tw("submit", "--site", "laptop", "hello", token=token, check=False)
        assert code == 1 and "needs parameter 'name'" in err

        _, out, _ = await tw("ls", "--tag", "run=42", "--json", "--limit", "1000", token=token)
        rows = [json.loads(line) for line in out.splitlines()]
        assert len(rows) == 21 and {r["state"] for r in rows} == {"JOB_FINISHED"}

        _, out, _ = await tw("submit", "--site", "laptop", "nap", "s=60", token=token)
        nap_id = int(out.strip())
        _, out, _ = await tw("show", str(nap_id), token=token)
        assert f"task {nap_id}" in out
        _, out, _ = await tw("cancel", str(nap_id), token=token)
        assert out.strip() == f"{nap_id}\tcancelled"
        _, out, _ = await tw("ls", "--state", "KILLED", "--json", token=token)
        assert [json.loads(x)["id"] for x in out.splitlines()] == [nap_id]
        # `watch --since` replays the history from the store, then stays live.
        watcher = await anyio.open_process(
            [PY, "-m", "tidewater", "watch", "--id", str(nap_id), "--since", "1"],
            env={**c.env, "TIDEWATER_TOKEN": token, "COLUMNS": "200"})
        try:
            seen = b""
            with anyio.fail_after(20):
                assert watcher.stdout is not None
                async for chunk in watcher.stdout:
                    seen += chunk
                    if b"-> KILLED" in seen:
                        break
            lines = [ln for ln in seen.decode().splitlines() if f"task {nap_id} " in ln]
            states = [ln.split("-> ")[1].split()[0] for ln in lines]
            # RUNNING is there unless the cancel beat the pilot to it.
            assert states in (["READY", "STAGED_IN", "RUNNING", "KILLED"],
                              ["READY", "STAGED_IN", "KILLED"])
        finally:
            watcher.terminate()
            await watcher.wait()
        code, _, err = await tw("ls", token="twu_bogus", check=False)
        assert code == 4 and "invalid token" in err


async def test_cli_site_init_start_and_queue(tmp_path: Path) -> None:
    """`site init`, `site start`, `queue submit|ls|cancel` as a user at a login node runs them."""
    async with cluster(tmp_path) as c:
        await c.start_controller()
        token = await c.add_user("alice")

        def tw(*args: str, check: bool = True) -> Awaitable[CliResult]:
            return run_cli(c, *args, token=token, check=check)

        site_dir = tmp_path / "tw-site"
        _, _, err = await tw("site", "init", str(site_dir), "--scheduler", "local",
                             "--name", "laptop", "--option",
                             f"state_dir={tmp_path / 'local-jobs'}")
        assert "set up in" in err
        assert (site_dir / "token").stat().st_mode & 0o077 == 0
        settings = (site_dir / "settings.toml").read_text()
        (site_dir / "settings.toml").write_text(
            settings.replace("poll_interval = 10.0", "poll_interval = 0.5")
            .replace("[limits]              # what batch jobs may ask for (empty/0: no limit of ours)\n"
                     "queues = []", "[limits]\nqueues = [\"debug\"]"))
        code, _, err = await tw("site", "init", str(site_dir), "--scheduler", "local",
                                "--name", "other", check=False)
        assert code != 0 and "exists already" in err
        await tw("app", "add", "--site", "laptop", "hello", "echo hello {name}")
        await c.start_agent(site_dir)

        code, _, err = await tw("queue", "submit", "--site", "laptop", "--queue", "regular",
                                check=False)
        assert code == 1 and "queue 'regular' is not allowed" in err
        code, _, err = await tw("queue", "submit", "--site", "laptop", "--wall-time", "soon",
                                check=False)
        assert code == 2 and "'soon' is not a duration" in err
        _, out, _ = await tw("queue", "submit", "--site", "laptop", "--nodes", "1",
                             "--wall-time", "1h30m", "--queue", "debug")
        job_id = out.strip()
        _, out, _ = await tw("submit", "--site", "laptop", "hello", "name=queue", "--wait")
        assert "JOB_FINISHED" in out and "hello queue" in out
        _, out, _ = await tw("queue", "ls", "--json")
        (job,) = [json.loads(line) for line in out.splitlines()]
        assert (job["id"], job["state"], job["wall_time_min"], job["queue"]) == (
            int(job_id), "running", 90, "debug")
        _, out, _ = await tw("queue", "ls")
        assert "running" in out and job["scheduler_id"] in out
        _, out, _ = await tw("site", "ls")
        assert "connected" in out  # the agent
        await tw("queue", "cancel", job_id)
        with anyio.fail_after(30):
            while True:
                _, out, _ = await tw("queue", "ls", "--all", "--json")
                if json.loads(out.splitlines()[0])["state"] == "finished":
                    break
        code, _, err = await tw("queue", "cancel", "999", check=False)
        assert code == 3 and "no batch job 999" in err


async def test_cli_tokens_users_and_audit(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        await c.start_controller()

        def tw(*args: str, token: str = "", check: bool = True) -> Awaitable[CliResult]:
            return run_cli(c, *args, token=token, check=check)

        _, out, _ = await tw("user", "add", "root", "--db", c.db)
        root = out.strip()
        _, out, _ = await tw("user", "add", "bob", "--expires", "30d", token=root)  # as admin
        bob = out.strip()
        code, _, err = await tw("user", "add", "eve", token=bob, check=False)
        assert code == 4 and "only an admin" in err
        _, out, _ = await tw("user", "ls", token=root)
        assert "root" in out and "admin" in out and "bob" in out

        _, out, err = await tw("token", "create", "--name", "ci", "--expires", "1h", token=bob)
        ci = out.strip()
        token_id = ci[4:20]
        assert ci.startswith("twu_") and token_id in err
        _, out, _ = await tw("token", "ls", token=bob)
        assert token_id in out and "ci" in out and ci not in out
        await tw("token", "revoke", token_id, token=bob)
        code, _, err = await tw("site", "ls", token=ci, check=False)
        assert code == 4 and "revoked" in err
        code, _, err = await tw("token", "revoke", token_id, token=root, check=False)
        assert code == 1 and "already revoked" in err

        _, out, _ = await tw("audit", "--json", token=bob)
        actions = [json.loads(line)["action"] for line in out.splitlines()]
        assert actions == ["token.create", "token.revoke"]
        _, out, _ = await tw("audit", "--all", token=root)
        assert "user.add" in out
        await tw("user", "remove", "bob", token=root)
        code, _, err = await tw("site", "ls", token=bob, check=False)
        assert code == 4 and "removed" in err


@pytest.mark.parametrize("flag", ["--port", "--dashboard-port"])
async def test_a_port_in_use_is_one_line_naming_it(tmp_path: Path, flag: str) -> None:
    """Another program holds the port: one line saying which and what to do, exit 2."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        args = ["server", "--db", str(tmp_path / "s.db"), flag, str(port)]
        if flag == "--dashboard-port":
            args += ["--port", "0"]
        r = await anyio.run_process([PY, "-m", "tidewater", *args], check=False)
    err = r.stderr.decode()
    assert r.returncode == 2, err
    what = "the dashboard" if flag == "--dashboard-port" else "the controller"
    assert f"error: cannot listen for {what} on 127.0.0.1:{port}: Address already in use" in err
    assert f"choose another with {flag}" in err
    assert "Traceback" not in err
