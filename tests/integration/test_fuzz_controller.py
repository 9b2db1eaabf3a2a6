"""A real controller under hostile frames from every role, before and after a valid Hello.

Mallory (a user) fuzzes as a client with her user token, and as a pilot and an
agent of her site with its site token: random bytes, mutated and misdirected
messages, text frames, frames over ``--max-frame-bytes``. Through it all:

* the controller process lives and ``GET /health`` answers;
* a frame it cannot decode gets an ``Error`` (or ``Reject`` before Hello) or a
  clean close -- a close frame, never a dropped connection, never a hang;
* no request ever gets an ``internal`` error;
* the store is unchanged but for what Mallory's well-formed requests may
  create: every other user's rows are byte-identical, and each row of hers
  traces back to a frame that decoded (a site she asked for, a job she or her
  agent requested...);
* afterwards a well-behaved user submits a task and a real pilot runs it.

Integers beyond 64 bits are refused when a frame is decoded (proto's I64);
the tests at the end pin that and the other findings of this fuzzing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

import tidewater
from tidewater import proto as P

from ..protofuzz import ALL_MESSAGES, BAD_UTF8, MSGPACK_INT, Frames, accepted, deep_unknown_field
from .procs import Cluster, cluster, until
from .raw import (
    REPLY_TIMEOUT,
    RawPeer,
    agent_hello,
    client_hello,
    health,
    pilot_hello,
    raw_peer,
    snapshot,
    user_id,
)

pytestmark = pytest.mark.integration

MAX_FRAME = 16 * 1024
ROLES = ("client", "pilot", "agent")
PEER_DECODERS = {"client": P.client_decoder, "pilot": P.pilot_decoder, "agent": P.agent_decoder}
# Names that exist (Mallory's site and app, Alice's) so that fuzzed requests reach past lookup.
NAMES = ["fz", "echo", "hpc", "greet", "alice", "mallory", "x", ""]
FR = Frames(
    ints=st.integers(-2, 8) | MSGPACK_INT,  # small ids hit real rows; huge ones are refused
    floats=st.floats(),
    text=st.text(max_size=12) | st.sampled_from(NAMES),
)
FUZZ = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# Hypothesis draws every frame before an example runs (a draw inside an async test can
# abort it with a BaseException that stops anyio's test runner), so strategies cannot
# know the tokens: frames carry placeholders of the same length, swapped in when sent.
USER_PLACEHOLDER = "twu_" + "0" * 16 + "." + "U" * 43
SITE_PLACEHOLDER = "tws_" + "0" * 16 + "." + "S" * 43


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"  # module scope: one controller serves every example of this module


@dataclass
class Target:
    c: Cluster
    mallory: str
    mallory_site: str
    mallory_id: int
    carol: str
    """Well-behaved, for the end: her rows are left out of the comparison."""
    carol_id: int
    others_before: dict[str, list[Any]]
    sent: list[P.Msg] = field(default_factory=list)
    """Every frame sent that decodes: what may legitimately have changed Mallory's rows."""


@pytest.fixture(scope="module")
async def target(tmp_path_factory: pytest.TempPathFactory, module_store: str | None
                 ) -> AsyncIterator[Target]:
    async with cluster(tmp_path_factory.mktemp("fuzz"), db=module_store) as c:
        await c.start_controller("--max-frame-bytes", str(MAX_FRAME))
        alice = await c.add_user("alice")
        mallory = await c.add_user("mallory")
        carol = await c.add_user("carol")
        async with tidewater.connect(c.url, token=alice) as a:
            await a.add_site("hpc")
            await a.add_app("hpc", "greet", "echo {name}")
            done = await a.submit("greet", site="hpc", params={"name": "x"})
            await a.cancel([done])
            await a.submit("greet", site="hpc", params={"name": "y"})  # stays queued
            await a.queue_submit("hpc", nodes=1)
        async with tidewater.connect(c.url, token=mallory) as m:
            _s, mallory_site = await m.add_site("fz")
            await m.add_app("fz", "echo", "echo {x}")
        assert len(mallory) == len(USER_PLACEHOLDER)
        assert len(mallory_site) == len(SITE_PLACEHOLDER)
        mid, cid = user_id(c, "mallory"), user_id(c, "carol")
        yield Target(c, mallory, mallory_site, mid, carol, cid,
                     snapshot(c, leave_out=(mid, cid)))


def hello_for(role: str) -> P.Hello:
    if role == "client":
        return client_hello(USER_PLACEHOLDER)
    if role == "pilot":
        return pilot_hello(SITE_PLACEHOLDER, "fz-pilot")
    return agent_hello(SITE_PLACEHOLDER)


def with_tokens(t: Target, frame: bytes) -> bytes:
    return frame.replace(USER_PLACEHOLDER.encode(), t.mallory.encode()).replace(
        SITE_PLACEHOLDER.encode(), t.mallory_site.encode())


def classify(role: str, frame: bytes | str) -> str:
    """What the controller must do with ``frame``: "ok" (anything but an internal error),
    "bad" (an Error), or "oversized" (close 1009)."""
    if isinstance(frame, str):
        return "bad"
    if len(frame) > MAX_FRAME:
        return "oversized"
    try:
        PEER_DECODERS[role].decode_all(frame)  # one message, or several packed in one frame
    except msgspec.DecodeError:
        return "bad"
    return "ok"


async def check_target(t: Target) -> None:
    """The controller lives and serves, and refused frames changed nothing."""
    c = t.c
    assert c.controller is not None and c.controller.proc.returncode is None, c.controller.log()
    assert (await health(c))["status"] == "ok"
    assert snapshot(c, leave_out=(t.mallory_id, t.carol_id)) == t.others_before
    # Each of Mallory's rows traces back to a well-formed request she (or her agent) sent.
    sites = {"fz"} | {m.name for m in t.sent if isinstance(m, P.AddSite)}
    apps = {("fz", "echo")} | {(m.site, m.name) for m in t.sent if isinstance(m, P.AddApp)}
    specs = {(s.site, s.app) for m in t.sent if isinstance(m, P.Submit) for s in m.tasks}
    keys = {m.key for m in t.sent if isinstance(m, P.RequestJob)}
    job_sites = {m.job.site for m in t.sent if isinstance(m, P.AddJob)}
    mine = (t.mallory_id,)
    for (name,) in c.rows("SELECT name FROM sites WHERE owner_id = ?", mine):
        assert name in sites
    for row in c.rows("SELECT s.name, a.name FROM apps a JOIN sites s ON s.id = a.site_id "
                      "WHERE s.owner_id = ?", mine):
        assert row in apps
    for row in c.rows("SELECT s.name, t.app FROM tasks t JOIN sites s ON s.id = t.site_id "
                      "WHERE t.owner_id = ?", mine):
        assert row in specs
    for site, key in c.rows("SELECT s.name, j.request_key FROM batch_jobs j JOIN sites s "
                            "ON s.id = j.site_id WHERE j.owner_id = ?", mine):
        assert key in keys if key is not None else site in job_sites


def check_closed(exc: ConnectionClosed, expected: str) -> None:
    assert exc.rcvd is not None, f"connection dropped without a close frame after a {expected} frame"
    if expected == "oversized":
        assert exc.rcvd.code == 1009


# --------------------------------------------------------------------------
# Before Hello: whatever the first frame is, a Welcome (a valid Hello), a Reject and a
# close, or a close.


def first_frames(role: str) -> st.SearchStrategy[bytes | str]:
    good = P.encode(hello_for(role))

    @st.composite
    def mutated_hello(draw: Any) -> bytes:
        return FR.mutate(draw, good)

    own = accepted(PEER_DECODERS[role])
    return st.one_of(
        st.just(good), mutated_hello(), mutated_hello(),
        FR.struct(P.Hello).map(P.encode),  # any Hello, any token
        FR.message(own).map(P.encode),  # a request before greeting
        FR.random_bytes(200), st.text(max_size=40), FR.oversized(MAX_FRAME),
    )


FIRST_FRAMES = st.fixed_dictionaries(
    {role: st.lists(first_frames(role), min_size=1, max_size=3) for role in ROLES})


@FUZZ
@given(frames=FIRST_FRAMES)
async def test_first_frame(target: Target, frames: dict[str, list[bytes | str]]) -> None:
    for frame in [f for role in ROLES for f in frames[role]]:
        if not isinstance(frame, str):
            frame = with_tokens(target, frame)
        with anyio.fail_after(10):
            async with ws_connect(target.c.url + "/ws", max_size=None) as ws:
                await ws.send(frame)
                try:
                    first = P.to_client_decoder.decode(await ws.recv())
                    if isinstance(first, P.Welcome):  # Mallory's token in a Hello that holds
                        assert isinstance(frame, bytes)
                        target.sent.append(P.hello_decoder.decode(frame))
                        continue
                    assert isinstance(first, P.Reject), first
                    await ws.recv()
                    raise AssertionError(f"still open after {first}")
                except ConnectionClosed as exc:
                    check_closed(exc, "oversized" if len(frame) > MAX_FRAME else "bad")
    await check_target(target)


# --------------------------------------------------------------------------
# After Hello: a session of fuzzed frames per connection.


def session_frames(role: str) -> st.SearchStrategy[bytes | str]:
    own = accepted(PEER_DECODERS[role])
    foreign = [c for c in ALL_MESSAGES if c not in own]
    kinds: dict[str, st.SearchStrategy[Any]] = {
        "valid": FR.message(own).map(P.encode),
        "mutated": FR.mutated(own),
        "foreign": FR.message(foreign).map(P.encode),  # e.g. a Welcome sent to the controller
        "random": FR.random_bytes(200),
        "text": st.text(max_size=40),
        "oversized": FR.oversized(MAX_FRAME),
    }
    weights = ["valid"] * 3 + ["mutated"] * 4 + ["foreign", "random", "random", "text",
                                                 "oversized"]
    return st.sampled_from(weights).flatmap(lambda k: kinds[k])


SESSIONS = st.fixed_dictionaries(
    {role: st.lists(session_frames(role), min_size=1, max_size=16) for role in ROLES})


@pytest.mark.parametrize("role", ROLES)
@FUZZ
@given(sessions=SESSIONS)
async def test_session(target: Target, role: str, sessions: dict[str, list[bytes | str]]) -> None:
    frames = sessions[role]
    async with AsyncExitStack() as stack:
        peer: RawPeer | None = None
        for frame in frames:
            expected = classify(role, frame)
            if expected == "ok":
                target.sent.extend(PEER_DECODERS[role].decode_all(frame))
            if peer is None:
                hello = P.hello_decoder.decode(with_tokens(target, P.encode(hello_for(role))))
                conn = await stack.enter_async_context(raw_peer(target.c.url, hello))
                peer, welcome = conn
                assert isinstance(welcome, P.Welcome), welcome
            try:
                replies = await peer.exchange(frame)
            except ConnectionClosed as exc:
                check_closed(exc, expected)
                peer = None
                continue
            assert expected != "oversized", "a frame over --max-frame-bytes was accepted"
            errors = [m for m in replies if isinstance(m, P.Error)]
            assert all(e.code != "internal" for e in errors), errors
            if expected == "bad":
                assert any(e.code == "bad_frame" for e in errors), (frame, replies)
    await check_target(target)


async def test_still_serves_after_the_fuzz(target: Target) -> None:
    c = target.c
    await check_target(target)
    async with tidewater.connect(c.url, token=target.carol) as carol:
        _s, site_token = await carol.add_site("good")
        await carol.add_app("good", "echo", "echo {x}")
        await c.start_pilot(site_token, pilot_id="good-pilot", cores=1)
        task = await carol.submit("echo", site="good", params={"x": "still here"})
        info = await task.result(timeout=30)
    assert (info.state, info.stdout_tail) == ("JOB_FINISHED", "still here\n")
    await check_target(target)


# --------------------------------------------------------------------------
# What the fuzz found, one test each. Frames msgspec raises UnicodeDecodeError or
# RecursionError for used to drop the connection without a close frame (proto's
# decoders now turn both into DecodeError). Integers beyond int64 used to reach the
# store (an OverflowError stopped the controller); a pilot used to be sent an Error
# it could not decode.

UNDECODABLE = {
    "utf8": BAD_UTF8,  # an op tag that is not UTF-8
    "deep": deep_unknown_field("ping", 5000),  # a 5 kB Ping with an unknown field nested deep
    "deep-array": b"\x91" * 5000 + b"\x00",  # not a map at all, nested deep
}


@pytest.mark.parametrize(("role", "kind"), [
    ("client", "utf8"), ("client", "deep"), ("client", "deep-array"),
    ("pilot", "utf8"), ("pilot", "deep"), ("agent", "utf8"), ("agent", "deep"),
])
async def test_undecodable_frame_gets_an_error(target: Target, role: str, kind: str) -> None:
    hello = P.hello_decoder.decode(with_tokens(target, P.encode(hello_for(role))))
    async with raw_peer(target.c.url, hello) as (peer, welcome):
        assert isinstance(welcome, P.Welcome)
        try:
            replies = await peer.exchange(UNDECODABLE[kind])
        except ConnectionClosed as exc:
            raise AssertionError(f"connection closed instead of an Error: {exc}") from exc
        assert any(isinstance(m, P.Error) and m.code == "bad_frame" for m in replies), replies


@pytest.mark.parametrize("frame", [BAD_UTF8, deep_unknown_field("hello", 5000)],
                         ids=["utf8", "deep"])
async def test_undecodable_first_frame_gets_a_reject(target: Target, frame: bytes) -> None:
    async with ws_connect(target.c.url + "/ws") as ws:
        await ws.send(frame)
        try:
            with anyio.fail_after(10):
                reject = P.to_client_decoder.decode(await ws.recv())
        except ConnectionClosed as exc:
            raise AssertionError(f"connection closed without a Reject: {exc}") from exc
        assert isinstance(reject, P.Reject) and reject.code == "bad_frame"


async def test_pilot_can_decode_what_it_is_told(target: Target) -> None:
    hello = P.hello_decoder.decode(with_tokens(target, P.encode(hello_for("pilot"))))
    async with ws_connect(target.c.url + "/ws") as ws:
        await ws.send(P.encode(hello))
        assert isinstance(P.to_pilot_decoder.decode(await ws.recv()), P.Welcome)
        await ws.send(b"\xc1 not msgpack")
        with anyio.fail_after(10):
            P.to_pilot_decoder.decode(await ws.recv())


BEYOND_INT64 = 2**63  # msgpack carries it; SQLite cannot


@pytest.mark.parametrize("build", [
    pytest.param(lambda i: P.Wait(req_id=i, ids=[BEYOND_INT64]), id="wait"),
    pytest.param(lambda i: P.Cancel(req_id=i, ids=[BEYOND_INT64]), id="cancel"),
    pytest.param(lambda i: P.Query(req_id=i, after_id=BEYOND_INT64), id="query-after"),
    pytest.param(lambda i: P.Query(req_id=i, filter=P.TaskFilter(ids=[BEYOND_INT64])),
                 id="query-ids"),
    pytest.param(lambda i: P.Watch(req_id=i, filter=P.TaskFilter(ids=[BEYOND_INT64])),
                 id="watch-ids"),
])
async def test_huge_id_is_a_bad_request(target: Target, build: Any) -> None:
    hello = P.hello_decoder.decode(with_tokens(target, P.encode(hello_for("client"))))
    async with raw_peer(target.c.url, hello) as (peer, _welcome):
        reply = await peer.request(build)
    assert isinstance(reply, P.Error | P.TaskList), reply
    if isinstance(reply, P.Error):
        assert reply.code != "internal", reply
    await check_target(target)


@pytest.mark.parametrize("where", ["task-priority", "report-exit-code"])
async def test_huge_integer_does_not_kill_the_controller(tmp_path: Path, where: str) -> None:
    async with cluster(tmp_path) as c:
        await c.start_controller()
        token = await c.add_user("mallory")
        async with tidewater.connect(c.url, token=token) as m:
            _s, site_token = await m.add_site("fz")
            await m.add_app("fz", "echo", "echo {x}")
        async with raw_peer(c.url, client_hello(token)) as (client, _w):
            spec = P.TaskSpec(app="echo", site="fz", params={"x": "1"})
            if where == "task-priority":
                spec = P.TaskSpec(app="echo", site="fz", params={"x": "1"},
                                  priority=BEYOND_INT64)
                reply = await reply_or_death(c, client, lambda i: P.Submit(req_id=i, tasks=[spec]))
                assert isinstance(reply, P.Error) and reply.code != "internal", reply
            else:
                async with raw_peer(c.url, pilot_hello(site_token, "p1", credit_cores=1)) as (
                        pilot, _w2):
                    reply = await client.request(lambda i: P.Submit(req_id=i, tasks=[spec]))
                    assert isinstance(reply, P.Submitted)
                    run = await pilot.recv()
                    assert isinstance(run, P.RunTasks), run
                    a = run.tasks[0]
                    await pilot.ws.send(P.encode(P.Reports(seq=1, reports=[
                        P.Report(task_id=a.task_id, attempt=a.attempt, kind="started", time=1.0),
                        P.Report(task_id=a.task_id, attempt=a.attempt, kind="done", time=2.0,
                                 exit_code=BEYOND_INT64),
                    ])))
                    ack = await reply_or_death(c, pilot, None)
                    assert isinstance(ack, P.Ack | P.Error), ack
            reply = await reply_or_death(c, client, lambda i: P.ListSites(req_id=i))
            assert isinstance(reply, P.SiteList)
        assert c.controller is not None and c.controller.proc.returncode is None


async def reply_or_death(c: Cluster, peer: RawPeer, build: Any) -> P.Msg:
    """The reply to ``build`` (or the next frame), unless the controller dies first.

    A dying controller stops serving at once but holds open connections for its
    close timeout; watching ``/health`` (answered in milliseconds when alive) tells
    the two apart without that wait.
    """
    got: list[P.Msg] = []

    async def reply(scope: anyio.CancelScope) -> None:
        got.append(await (peer.request(build) if build else peer.recv()))
        scope.cancel()

    async def down() -> bool:
        try:
            await health(c, timeout=1)
        except OSError:
            return True
        return False

    async with anyio.create_task_group() as tg:
        tg.start_soon(reply, tg.cancel_scope)
        await until(down, timeout=REPLY_TIMEOUT, what="a reply")
        tg.cancel_scope.cancel()
    if not got:
        # Not pytest.fail: a BaseException out of a task group stops anyio's test runner.
        raise AssertionError("the controller stopped serving (it died) instead of replying")
    return got[0]
