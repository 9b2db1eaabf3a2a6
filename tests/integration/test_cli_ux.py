"""The command line as a newcomer meets it: exit codes, global options anywhere, filters,
``wait``, ``--json``, templates, login and profiles, JSON logs, MPI tasks from the shell."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import anyio
import pytest

from .procs import PY, RANK_REPORT, Cluster, Proc, cluster, free_port, write_site

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("store")]

CliResult = tuple[int, str, str]


async def run_cli(c: Cluster, *args: str, token: str = "", env: dict[str, str] | None = None,
                  stdin: bytes | None = None, xdg: Path | None = None) -> CliResult:
    """``tidewater ARGS`` against the cluster: exit code, stdout, stderr."""
    base = {k: v for k, v in c.env.items() if k not in ("TIDEWATER_TOKEN", "TIDEWATER_URL")}
    full = {**base, "XDG_CONFIG_HOME": str(xdg or c.tmp / "xdg"), "COLUMNS": "200",
            **({"TIDEWATER_URL": c.url} if env is None else {}),
            **({"TIDEWATER_TOKEN": token} if token else {}), **(env or {})}
    r = await anyio.run_process([PY, "-m", "tidewater", *args], env=full, check=False,
                                input=stdin)
    return r.returncode, r.stdout.decode(), r.stderr.decode()


def ok(result: CliResult) -> str:
    code, out, err = result
    assert code == 0, err
    return out


async def test_exit_codes_global_options_filters_and_json(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        await c.start_controller()

        def tw(*args: str, token: str = "", **kw: Any) -> Awaitable[CliResult]:
            return run_cli(c, *args, token=token, **kw)

        alice = ok(await tw("user", "add", "alice", "--db", c.db)).strip()
        site_token = ok(await tw("site", "add", "laptop", token=alice)).strip()
        ok(await tw("app", "add", "--site", "laptop", "hello", "echo hello {name}", token=alice))
        ok(await tw("app", "add", "--site", "laptop", "nap", "sleep {s}", token=alice))
        ok(await tw("app", "add", "--site", "laptop", "boom", "sh -c {script}", token=alice))
        await c.start_pilot(site_token, pilot_id="ux", cores=4)

        # Global options after the subcommand, with nothing in the environment.
        out = ok(await tw("app", "ls", "--json", "--url", c.url, "--token", alice, env={}))
        assert {json.loads(x)["name"] for x in out.splitlines()} == {"hello", "nap", "boom"}
        code, _, err = await tw("ls", "--token", alice, env={})  # the default URL: nobody there
        assert code == 5 and "cannot connect" in err

        # A Balsam template: refused, with our form of it.
        code, _, err = await tw("app", "add", "--site", "laptop", "b", "echo hello {{ name }}",
                                token=alice)
        assert code == 1 and "'echo hello {name}'" in err

        # 0 / 1: show --wait and submit --wait tell a failed task from a finished one.
        tid = ok(await tw("submit", "--site", "laptop", "boom", "script=exit 3",
                          token=alice)).strip()
        code, out, _ = await tw("show", tid, "--wait", "--json", token=alice)
        assert code == 1 and json.loads(out)["state"] == "FAILED"
        code, out, _ = await tw("submit", "--site", "laptop", "--wait", "hello", "name=x",
                                token=alice)
        assert code == 0 and "hello x" in out
        # 2: usage, one duration grammar.
        code, _, err = await tw("submit", "--site", "laptop", "--timeout", "soon", "hello",
                                "name=x", token=alice)
        assert code == 2 and "D-HH:MM:SS" in err
        # 3: not found.
        code, _, err = await tw("show", "99999", token=alice)
        assert code == 3 and "no task with id 99999" in err
        code, _, err = await tw("cancel", "99999", token=alice)
        assert code == 3 and "no task with id 99999" in err
        code, out, err = await tw("cancel", tid, token=alice)
        assert code == 3 and out == f"{tid}\talready final\n" and "no task was cancelled" in err
        code, _, err = await tw("wait", "--tag", "nobody=here", token=alice)
        assert code == 3 and "no task matched" in err
        # 4: refused.
        code, _, err = await tw("ls", token="twu_bogus")
        assert code == 4 and "invalid token" in err
        bob = ok(await tw("user", "add", "bob", "--expires", "1-00:00:00", token=alice)).strip()
        code, _, err = await tw("user", "ls", token=bob)
        assert code == 4 and "only an admin" in err
        # 5: unreachable controller.
        code, _, err = await tw("--url", f"ws://127.0.0.1:{free_port()}", "ls", token=alice)
        assert code == 5 and "cannot connect" in err

        # user ls has a header, and JSON.
        out = ok(await tw("user", "ls", token=alice))
        assert out.splitlines()[1].split() == ["┃", "user", "┃", "created", "┃", "admin", "┃",
                                               "removed", "┃"]
        users = [json.loads(x) for x in ok(await tw("user", "ls", "--json",
                                                   token=alice)).splitlines()]
        assert [(u["name"], u["admin"]) for u in users] == [("alice", True), ("bob", False)]

        # cancel by tag: the live ones go, counted; a second time there is nothing to cancel.
        naps = [ok(await tw("submit", "--site", "laptop", "--tag", "batch=n", "nap", "s=60",
                            token=alice)).strip() for _ in range(3)]
        out = ok(await tw("cancel", "--tag", "batch=n", token=alice))
        assert sorted(out.split()) == sorted([*naps, *["cancelled"] * 3])
        code, _, err = await tw("cancel", "--tag", "batch=n", token=alice)
        assert code == 3 and "none matched" in err
        code, _, err = await tw("cancel", "--state", "FAILED", token=alice)
        assert code == 2 and "final already" in err

        # wait on a filter: JSON lines of each final task; exit 1 when one failed.
        params = tmp_path / "p.jsonl"
        params.write_text("".join(json.dumps({"name": f"n{i}"}) + "\n" for i in range(5)))
        ok(await tw("submit", "--site", "laptop", "--tag", "w=1", "--params-file", str(params),
                    "hello", token=alice))
        code, out, err = await tw("wait", "--tag", "w=1", "--json", "--timeout", "1m",
                                  token=alice)
        assert code == 0, err
        assert sorted(json.loads(x)["state"] for x in out.splitlines()) == ["JOB_FINISHED"] * 5
        assert "5 finished, 0 did not" in err
        ok(await tw("submit", "--site", "laptop", "--tag", "w=1", "boom", "script=exit 1",
                    token=alice))
        code, _, err = await tw("wait", "--tag", "w=1", "--timeout", "60", token=alice)
        assert code == 1 and "5 finished, 1 did not" in err and "FAILED" in err

        # 5 again: wait gives up at --timeout, saying how far it got.
        nap = ok(await tw("submit", "--site", "laptop", "nap", "s=60", token=alice)).strip()
        code, _, err = await tw("wait", nap, tid, "--timeout", "0:01", token=alice)
        assert code == 5 and "--timeout 1s passed: 1 of 2 tasks final" in err
        ok(await tw("cancel", nap, token=alice))

        # summary: per state and per site, for a filter or everything.
        counts = json.loads(ok(await tw("summary", "--json", "--tag", "w=1", token=alice)))
        assert counts == {"by_state": {"JOB_FINISHED": 5, "FAILED": 1},
                          "by_site": {"laptop": {"JOB_FINISHED": 5, "FAILED": 1}}, "total": 6}
        counts = json.loads(ok(await tw("summary", "--json", token=alice)))
        assert counts["by_state"] == {"JOB_FINISHED": 6, "FAILED": 2, "KILLED": 4}
        out = ok(await tw("summary", token=alice))
        assert "JOB_FINISHED" in out and "laptop" in out and "12" in out
        code, _, err = await tw("summary", "--site", "elsewhere", token=alice)
        assert code == 3 and "no site named 'elsewhere'" in err
        # --last: only tasks created that recently (here all of them); the newest first.
        counts = json.loads(ok(await tw("summary", "--json", "--last", "1h", token=alice)))
        assert counts["total"] == 12
        recent = ok(await tw("submit", "--site", "laptop", "nap", "s=0", token=alice)).strip()
        newest = [json.loads(x)["id"] for x in ok(await tw(
            "ls", "--json", "--last", "1d", "--limit", "1", token=alice)).splitlines()]
        assert newest == [int(recent)]
        code, _, err = await tw("ls", "--last", "soon", token=alice)
        assert code == 2 and "soon" in err

        # watch --json: one event object per line.
        watcher = await anyio.open_process(
            [PY, "-m", "tidewater", "watch", "--json", "--id", tid, "--since", "1"],
            env={**c.env, "TIDEWATER_TOKEN": alice, "XDG_CONFIG_HOME": str(tmp_path / "x")})
        try:
            seen = b""
            with anyio.fail_after(20):
                assert watcher.stdout is not None
                async for chunk in watcher.stdout:
                    seen += chunk
                    if b'"FAILED"' in seen and seen.endswith(b"\n"):
                        break
            events = [json.loads(x) for x in seen.decode().splitlines()]
            assert events[-1]["to_state"] == "FAILED" and events[-1]["task_id"] == int(tid)
        finally:
            watcher.terminate()
            await watcher.wait()


async def test_login_profiles_and_config_show(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        await c.start_controller()
        alice = await c.add_user("alice")
        xdg = tmp_path / "cfg"

        def tw(*args: str, **kw: Any) -> Awaitable[CliResult]:
            return run_cli(c, *args, xdg=xdg, **kw)

        # A refused token writes nothing.
        code, _, err = await tw("login", c.url, stdin=b"twu_bogus\n", env={})
        assert code == 4 and not (xdg / "tidewater").exists()

        ok(await tw("login", c.url, "--site", "laptop", stdin=alice.encode() + b"\n", env={}))
        token_file = xdg / "tidewater" / "default.token"
        assert token_file.read_text().strip() == alice
        assert token_file.stat().st_mode & 0o777 == 0o600
        # From now on: no URL, no token in the environment.
        shown = json.loads(ok(await tw("config", "show", "--json", env={})))
        where = f"profile default in {xdg / 'tidewater' / 'config.toml'}"
        assert shown["url"] == {"value": c.url, "source": where}
        assert shown["site"] == {"value": "laptop", "source": where}
        assert shown["token"] == {"value": alice[:8] + "...", "source": f"token_file ({where})"}
        assert shown["token_file"]["value"] == str(token_file)
        shown = json.loads(ok(await tw("config", "show", "--json", "--url", "ws://h:1",
                                       env={"TIDEWATER_SITE": "other"})))
        assert shown["url"]["source"] == "flag --url"
        assert shown["site"] == {"value": "other", "source": "env TIDEWATER_SITE"}
        # A second profile, named before the command; the default stays.
        ok(await tw("--profile", "second", "login", c.url, "--no-default",
                    stdin=alice.encode() + b"\n", env={}))
        shown = json.loads(ok(await tw("config", "show", "--json", env={})))
        assert shown["profile"]["value"] == "default"
        shown = json.loads(ok(await tw("config", "show", "--json", "--profile", "second",
                                       env={})))
        assert shown["profile"] == {"value": "second", "source": "flag --profile"}
        assert shown["site"] == {"value": "", "source": "unset"}
        code, _, err = await tw("--profile", "nope", "ls", env={})
        assert code == 2 and "no profile 'nope'" in err

        # submit takes the profile's site.
        site_token = ok(await tw("site", "add", "laptop", env={})).strip()
        ok(await tw("app", "add", "--site", "laptop", "hello", "echo hello {name}", env={}))
        await c.start_pilot(site_token, pilot_id="prof")
        out = ok(await tw("submit", "--wait", "hello", "name=profile", env={}))
        assert "hello profile" in out

        # The Python API resolves the same way.
        script = ("import tidewater\n"
                  "with tidewater.SyncClient() as c:\n"
                  "    print([t.state for t in c.tasks()])\n")
        r = await anyio.run_process(
            [PY, "-c", script], check=False,
            env={**{k: v for k, v in os.environ.items() if not k.startswith("TIDEWATER_")},
                 "XDG_CONFIG_HOME": str(xdg)})
        assert r.returncode == 0, r.stderr.decode()
        assert r.stdout.decode().strip() == "['JOB_FINISHED']"


async def test_log_format_json_on_server_pilot_and_agent(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        server = await c.start_controller("--log-format", "json")
        token = await c.add_user("alice")
        r = await run_cli(c, "site", "add", "laptop", token=token)
        site_token = r[1].strip()
        async with anyio.create_task_group() as tg:
            proc = await anyio.open_process(
                [PY, "-m", "tidewater", "pilot", "--log-format", "json", "--cores", "1",
                 "--workdir", str(tmp_path / "work"), "--pilot-id", "j1"],
                env={**c.env, "TIDEWATER_TOKEN": site_token}, stdout=None)
            pilot = Proc("pilot j1", proc, tg)
            try:
                await pilot.wait_for("pilot j1 connected")
                await server.wait_for("j1")
            finally:
                await pilot.stop()
        site_dir = write_site(tmp_path / "site", name="laptop", scheduler="local", url=c.url,
                              token=site_token,
                              sections={"scheduler": {"state_dir": str(tmp_path / "jobs")}})
        agent = await c.start_agent(site_dir, env={"TIDEWATER_LOG_FORMAT": "json"})
        await agent.stop()
        for lines in (server.lines, pilot.lines, agent.lines):
            records = [json.loads(x) for x in lines if x.strip()]
            assert records, lines
            assert all({"time", "level", "logger", "message"} <= set(e) for e in records)
        assert any(e["logger"].startswith("tidewater") and "j1" in e["message"]
                   for e in map(json.loads, pilot.lines))
        assert any(e["logger"] == "tidewater.agent" and "connected to" in e["message"]
                   for e in map(json.loads, agent.lines))


@pytest.mark.mpi
async def test_mpi_task_submitted_from_the_shell(mpich: Any, tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        await c.start_controller()
        token = await c.add_user("alice")

        def tw(*args: str) -> Awaitable[CliResult]:
            return run_cli(c, *args, token=token)

        site_token = ok(await tw("site", "add", "mpi")).strip()
        ok(await tw("app", "add", "--site", "mpi", "sh", "sh -c {script}"))
        site_dir = write_site(tmp_path / "site", name="mpi", scheduler="local", url=c.url,
                              token=site_token, sections={
                                  "scheduler": {"state_dir": str(tmp_path / "jobs")},
                                  "site": {"launcher": "mpiexec", "cores_per_node": 2}})
        await c.start_agent(site_dir)
        job = ok(await tw("queue", "submit", "--site", "mpi", "--nodes", "2",
                          "--wall-time", "0-00:10")).strip()
        code, out, err = await tw("submit", "--site", "mpi", "--nodes", "2",
                                  "--ranks-per-node", "1", "--threads-per-rank", "1",
                                  "--wall-time", "5m", "--env", "GREETING=hi",
                                  "--workdir", "mpi/one", "--wait", "--timeout", "1m", "sh",
                                  f"script={RANK_REPORT}; echo $GREETING")
        assert code == 0, err
        tid = int(out.split()[1])
        info = json.loads(ok(await tw("show", str(tid), "--json")))
        assert info["state"] == "JOB_FINISHED" and info["workdir"] == "mpi/one"
        assert info["stdout_tail"].count("hi") == 2  # both ranks saw --env
        wd = site_dir / "work" / "mpi" / "one"
        assert [p.read_text() for p in sorted(wd.glob("rank.*"))] == [
            "rank 0 of 2\n", "rank 1 of 2\n"]
        ok(await tw("queue", "cancel", job))


async def test_ctrl_c_in_a_wait_is_exit_130_without_a_traceback(tmp_path: Path) -> None:
    """Interrupted while it waits, ``wait`` says so and exits 130; the task keeps going."""
    async with cluster(tmp_path) as c:
        await c.start_controller()
        alice = ok(await run_cli(c, "user", "add", "alice", "--db", c.db)).strip()
        ok(await run_cli(c, "site", "add", "laptop", token=alice))
        ok(await run_cli(c, "app", "add", "--site", "laptop", "nap", "sleep {s}", token=alice))
        tid = ok(await run_cli(c, "submit", "nap", "--site", "laptop", "s=60",
                               token=alice)).split()[0]
        env = {**c.env, "TIDEWATER_TOKEN": alice, "TIDEWATER_URL": c.url,
               "XDG_CONFIG_HOME": str(tmp_path / "xdg"), "TIDEWATER_PROGRESS_INTERVAL": "0.2"}
        proc = await anyio.open_process([PY, "-m", "tidewater", "wait", tid], env=env)
        seen = b""
        try:
            assert proc.stderr is not None
            # The first progress line: it is inside its wait, past start-up.
            with anyio.fail_after(30):
                while b"waiting" not in seen.lower():
                    seen += await proc.stderr.receive()
        finally:
            proc.send_signal(signal.SIGINT)
            with anyio.fail_after(10):
                code = await proc.wait()
            assert proc.stderr is not None
            async for chunk in proc.stderr:
                seen += chunk
        assert code == 130, seen.decode()
        assert b"interrupted" in seen and b"Traceback" not in seen
        out = ok(await run_cli(c, "show", tid, "--json", token=alice))
        assert json.loads(out)["state"] in ("READY", "STAGED_IN")  # waiting, not cancelled
