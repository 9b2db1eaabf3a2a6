"""The wire protocol: every message round-trips through its direction's decoder."""

from __future__ import annotations

import typing

import msgspec
import pytest

from tidewater import proto as P

TASK_INFO = P.TaskInfo(
    id=7, app="hello", site="laptop", state="RUNNING", params={"n": 3, "s": "x y", "f": 0.5,
    "b": True}, tags={"run": "42"}, priority=2, attempt=1, retries=1, max_retries=3,
    exit_code=None, error="", stdout_tail="out", stderr_tail="err", created_at=1.5,
    started_at=2.5, finished_at=None, pilot="p-1", workdir="runs/7",
    files=[P.FileInfo(direction="in", path="frames", url="sftp://a@h/d", state="done", size=9,
                      sha256="ab" * 32, attempts=2),
           P.FileInfo(direction="out", path="r.txt", state="inline", size=3)],
)
TASK_EVENT = P.TaskEvent(
    id=99, task_id=7, from_state="READY", to_state="STAGED_IN", time=3.25,
    data={"reason": "x", "code": 1, "f": 0.5, "none": None}, tags={"run": "42"},
)
FILTER = P.TaskFilter(ids=[1, 2], states=["READY"], tags={"k": "v"}, site="laptop", app="hello")
SITE = P.SiteInfo(name="laptop", created_at=1.0, pilots=2, cores=16, gpus=1)
APP = P.AppInfo(
    site="laptop", name="hello", command="echo {name}",
    params=[P.ParamSpec(name="name"), P.ParamSpec(name="n", type="int", required=False,
                                                  default=3)],
    description="says hello", hooks=P.AppHooks(postprocess="lab.hooks:post"),
)
SPEC = P.TaskSpec(
    app="hello", site="laptop", params={"name": "world", "n": 2}, tags={"t": "1"}, priority=5,
    resources=P.Resources(cores=2, gpus=1, num_nodes=2, ranks_per_node=4, threads_per_rank=2,
                          gpus_per_rank=1, node_packing_count=2),
    timeout=30.0, max_retries=1, env={"A": "b"}, workdir="w/1", wall_time=120.0,
    inputs=[P.Input(path="a", url="file:///d/a", sha256="ab" * 32), P.Input(path="b", data=b"x"),
            P.Input(path="c", task=3, output="out")],
    outputs=[P.Output(path="out"), P.Output(path="big", url="sftp://a@h/r/big")],
)

JOB = P.BatchJobInfo(
    id=3, site="laptop", state="running", nodes=2, wall_time_min=30, queue="debug",
    project="m1", scheduler_id="4242", autoscaled=True, created_at=1.0, submitted_at=2.0,
    started_at=3.0, ended_at=None, reason="None", error="", pilots=2, flagged="",
)
LIMITS = P.SiteLimits(cores_per_node=64, gpus_per_node=4, max_nodes_per_job=8,
                      max_wall_time_min=60, queues=["debug"], projects=["m1"],
                      scheduler="slurm")

TOKEN = P.TokenInfo(id="0123456789abcdef", kind="site", site="laptop", batch_job=0, name="ci",
                    created_at=1.0, expires_at=2.0, revoked_at=None)

# One instance of every message, with non-default values wherever there is a field.
SAMPLES: dict[type[P.Msg], P.Msg] = {
    P.Hello: P.Hello(
        role="pilot", proto_version=P.PROTO_VERSION, token="tok", name="n", site="laptop",
        pilot_id="p-1", hostname="node1", cores=8, gpus=2, credit_cores=9, credit_gpus=2,
        held=[(1, 0), (2, 3)], batch_job=3,
        nodes=[P.NodeInfo(host="nid001", cores=64, gpus=4)], end_time=99.5, limits=LIMITS,
    ),
    P.Welcome: P.Welcome(
        proto_version=1, server_id="srv", user="alice", site="laptop", heartbeat_interval=1.0,
        lease_timeout=3.0, max_frame_bytes=1 << 20, max_tasks_per_submit=100,
    ),
    P.Reject: P.Reject(reason="bad token", code="auth"),
    P.Error: P.Error(req_id=4, code="not_found", message="no task with id 9"),
    P.Ping: P.Ping(time=12.5),
    P.Submit: P.Submit(req_id=1, tasks=[SPEC, P.TaskSpec(app="a", site="s")], key="k-1"),
    P.Query: P.Query(req_id=2, filter=FILTER, limit=10, after_id=5),
    P.ListPhases: P.ListPhases(req_id=2, filter=FILTER, limit=10, after_id=5),
    P.CountTasks: P.CountTasks(req_id=2, filter=FILTER),
    P.TaskCounts: P.TaskCounts(req_id=2, by_state={"READY": 3, "RUNNING": 1},
                               by_site={"aps": {"READY": 3}, "als": {"RUNNING": 1}}),
    P.Watch: P.Watch(req_id=3, filter=FILTER, since_event=17),
    P.Unwatch: P.Unwatch(req_id=4, watch_id=2),
    P.Wait: P.Wait(req_id=5, ids=[1, 2, 3]),
    P.Cancel: P.Cancel(req_id=6, ids=[4]),
    P.AddSite: P.AddSite(req_id=7, name="laptop"),
    P.ListSites: P.ListSites(req_id=8),
    P.AddApp: P.AddApp(
        req_id=9, site="laptop", name="hello", command="echo {name}",
        params=[P.ParamSpec(name="name")], description="d", replace=True,
    ),
    P.ListApps: P.ListApps(req_id=10, site="laptop"),
    P.Submitted: P.Submitted(req_id=1, ids=[10, 11]),
    P.TaskList: P.TaskList(req_id=2, tasks=[TASK_INFO]),
    P.PhaseList: P.PhaseList(req_id=2, tasks=[P.TaskPhases(
        id=1, site="theta", app="a", state="JOB_FINISHED", tags={"k": "v"}, stage_in=1.0,
        run_delay=2.0, run=3.0, stage_out=0.0, total=6.0, attempts=1, ended=6.0,
        runs=[(2.0, 5.0), (5.5, None)])], more=True),
    P.Watching: P.Watching(req_id=3, watch_id=2, start_event=40),
    P.Events: P.Events(watch_id=2, events=[TASK_EVENT]),
    P.Results: P.Results(req_id=5, tasks=[TASK_INFO]),
    P.Cancelled: P.Cancelled(req_id=6, ids=[4]),
    P.SiteAdded: P.SiteAdded(req_id=7, site=SITE, token="site-token"),
    P.SiteList: P.SiteList(req_id=8, sites=[SITE]),
    P.AppAdded: P.AppAdded(req_id=9, app=APP),
    P.AppList: P.AppList(req_id=10, apps=[APP]),
    P.Done: P.Done(req_id=11),
    P.AddJob: P.AddJob(req_id=12, job=P.JobSpec(site="laptop", nodes=2, wall_time_min=30,
                                                queue="debug", project="m1")),
    P.ListJobs: P.ListJobs(req_id=13, site="laptop", include_finished=True, limit=5),
    P.CancelJob: P.CancelJob(req_id=14, id=3),
    P.JobAdded: P.JobAdded(req_id=12, job=JOB),
    P.JobList: P.JobList(req_id=13, jobs=[JOB]),
    P.JobUpdates: P.JobUpdates(seq=2, updates=[
        P.JobUpdate(job_id=3, state="finished", scheduler_id="4242", time=5.0,
                    reason="TIMEOUT", error="", start_time=3.0, end_time=5.0),
    ]),
    P.RequestJob: P.RequestJob(key="auto-1", job=P.JobSpec(site="laptop", nodes=1)),
    P.Jobs: P.Jobs(jobs=[P.AgentJob(job=JOB, pilot_token="twp_x")]),
    P.StartJob: P.StartJob(job=P.AgentJob(job=JOB, pilot_token="twp_y")),
    P.StopJob: P.StopJob(job_id=3, scheduler_id="4242"),
    P.CreateToken: P.CreateToken(req_id=15, kind="site", site="laptop", name="ci",
                                 expires_in=3600.0),
    P.ListTokens: P.ListTokens(req_id=16, include_revoked=True),
    P.RevokeToken: P.RevokeToken(req_id=17, id="0123456789abcdef"),
    P.AddUser: P.AddUser(req_id=18, name="bob", admin=True, expires_in=60.0),
    P.RemoveUser: P.RemoveUser(req_id=19, name="bob"),
    P.ListUsers: P.ListUsers(req_id=20),
    P.ListAudit: P.ListAudit(req_id=21, limit=5, everyone=True),
    P.TokenCreated: P.TokenCreated(req_id=15, info=TOKEN, token="tws_0123456789abcdef.x"),
    P.TokenList: P.TokenList(req_id=16, tokens=[TOKEN]),
    P.UserAdded: P.UserAdded(req_id=18, name="bob", token="twu_0123456789abcdef.y"),
    P.UserList: P.UserList(req_id=20, users=[P.UserInfo(name="bob", admin=True, created_at=1.0,
                                                        removed_at=2.0)]),
    P.AuditList: P.AuditList(req_id=21, entries=[P.AuditEntry(
        id=1, time=2.0, user="alice", token_id="0123456789abcdef", remote="127.0.0.1",
        action="task.submit", object="1-3", detail='{"count":3}')]),
    P.Demand: P.Demand(tasks=5, cores=7, gpus=1, node_demand=4.0, idle_nodes=1, busy_nodes=2,
                       max_wall_time=60.0),
    P.RunTasks: P.RunTasks(tasks=[
        P.Assignment(task_id=1, attempt=2, argv=["prog", "a b"], env={"X": "1"},
                     workdir="w", cores=2, gpus=1, timeout=5.0, wall_time=60.0,
                     hosts=["n1", "n2"], ranks_per_node=2, threads_per_rank=3, gpus_per_rank=1),
        P.Assignment(task_id=2, attempt=0, shell="echo hi | cat",
                     inputs=[("cfg.json", b"{}")], outputs=["out.txt"], inline_limit=1024,
                     hooks=P.AppHooks(preprocess="m:pre", on_error="m:err")),
    ]),
    P.Kill: P.Kill(tasks=[(1, 2)], reason="cancelled"),
    P.Reports: P.Reports(seq=3, reports=[
        P.Report(task_id=1, attempt=2, kind="done", time=4.5, exit_code=0, stdout_tail="o",
                 stderr_tail="e", message="m"),
        P.Report(task_id=2, attempt=0, kind="started", time=4.0),
        P.Report(task_id=3, attempt=1, kind="done", time=4.0, outputs=[
            P.OutputFile(path="o", size=2, data=b"hi", sha256="aa" * 32),
            P.OutputFile(path="big", size=1 << 30), P.OutputFile(path="missing")]),
        P.Report(task_id=4, attempt=1, kind="error", time=4.0, hook="retry"),
    ]),
    P.Ack: P.Ack(seq=3),
    P.Credit: P.Credit(cores=4, gpus=1),
    P.Heartbeat: P.Heartbeat(time=5.0, running=[(1, 2)]),
    P.Bye: P.Bye(reason="walltime"),
    P.Drain: P.Drain(reason="walltime near"),
    P.Download: P.Download(req_id=22, task_id=3, path="out/result.h5", offset=4096,
                           length=65536),
    P.FileData: P.FileData(req_id=22, offset=4096, data=b"\x00\x01", size=8192,
                           sha256="ab" * 32),
    P.Retry: P.Retry(req_id=23, filter=P.TaskFilter(states=["FAILED"], tags={"run": "7"},
                                                    since=1.5, until=9.0), limit=50, after_id=2),
    P.Retried: P.Retried(req_id=23, ids=[3, 4], waiting=[5], more=True, next_after=4),
    P.Resubmit: P.Resubmit(req_id=24, ids=[3], key="k1"),
    P.ListEvents: P.ListEvents(req_id=25, filter=P.TaskFilter(ids=[3]), since_event=7,
                               limit=20),
    P.EventList: P.EventList(req_id=25, events=[P.TaskEvent(
        id=8, task_id=3, from_state="FAILED", to_state="RESTART_READY", time=2.0,
        data={"retry": "user"})], next_event=8, more=False),
    P.ReadLog: P.ReadLog(req_id=26, task_id=3, stderr=True, offset=1 << 20, length=4096),
    P.StageWork: P.StageWork(stages=[P.Stage(task_id=3, direction="in", workdir="tasks/3", items=[
        P.StageItem(path="frames", url="sftp://alice@dtn/data/frames", sha256="cd" * 32),
        P.StageItem(path="ref.h5", site_path="tasks/2/ref.h5")])]),
    P.Unstage: P.Unstage(task_id=3),
    P.Staged: P.Staged(seq=4, results=[P.StageResult(task_id=3, direction="out", items=[
        P.ItemResult(path="a", ok=True, size=10, sha256="ef" * 32, attempts=2),
        P.ItemResult(path="b", ok=False, error="No such file", attempts=4)])]),
    P.ReadFile: P.ReadFile(req_id=5, path="tasks/3/out", offset=0, length=1024),
    P.FileChunk: P.FileChunk(req_id=5, offset=0, data=b"xyz", size=3, sha256="01" * 32),
}

DIRECTIONS = {
    "client_decoder": (P.ClientToController, P.client_decoder),
    "to_client_decoder": (P.ControllerToClient, P.to_client_decoder),
    "pilot_decoder": (P.PilotToController, P.pilot_decoder),
    "to_pilot_decoder": (P.ControllerToPilot, P.to_pilot_decoder),
    "agent_decoder": (P.AgentToController, P.agent_decoder),
    "to_agent_decoder": (P.ControllerToAgent, P.to_agent_decoder),
}

CASES = [
    pytest.param(cls, dec, id=f"{cls.__name__}-{name}")
    for name, (union, dec) in DIRECTIONS.items()
    for cls in typing.get_args(union)
]


def _all_msg_classes() -> set[type[P.Msg]]:
    out: set[type[P.Msg]] = set()
    todo = list(P.Msg.__subclasses__())
    while todo:
        cls = todo.pop()
        out.add(cls)
        todo.extend(cls.__subclasses__())
    return out


def test_samples_cover_every_message() -> None:
    assert set(SAMPLES) == _all_msg_classes()
    for cls, msg in SAMPLES.items():
        assert type(msg) is cls


def test_every_message_belongs_to_some_direction() -> None:
    in_unions = {cls for union, _ in DIRECTIONS.values() for cls in typing.get_args(union)}
    assert _all_msg_classes() == in_unions


def test_op_tags_are_unique() -> None:
    tags = [cls.__struct_config__.tag for cls in _all_msg_classes()]
    assert len(tags) == len(set(tags))


@pytest.mark.parametrize(("cls", "decoder"), CASES)
def test_round_trip(cls: type[P.Msg], decoder: msgspec.msgpack.Decoder[object]) -> None:
    msg = SAMPLES[cls]
    back = decoder.decode(P.encode(msg))
    assert type(back) is cls
    assert back == msg


@pytest.mark.parametrize(("cls", "decoder"), CASES)
def test_round_trip_defaults(cls: type[P.Msg], decoder: msgspec.msgpack.Decoder[object]) -> None:
    # Only the required fields, as taken from the sample: defaults survive the trip.
    sample = SAMPLES[cls]
    required = {f: getattr(sample, f) for f in cls.__struct_fields__ if f not in _defaulted(cls)}
    msg = cls(**required)
    assert decoder.decode(P.encode(msg)) == msg


def _defaulted(cls: type[P.Msg]) -> set[str]:
    return {
        f.name
        for f in msgspec.structs.fields(cls)
        if f.default is not msgspec.NODEFAULT or f.default_factory is not msgspec.NODEFAULT
    }


def test_frame_carries_op_tag() -> None:
    raw = msgspec.msgpack.decode(P.encode(P.Ack(seq=5)))
    assert raw == {"op": "ack", "seq": 5}


def test_hello_decoder() -> None:
    hello = SAMPLES[P.Hello]
    assert P.hello_decoder.decode(P.encode(hello)) == hello


def test_messages_are_frozen() -> None:
    msg = P.Ack(seq=1)
    with pytest.raises(AttributeError):
        msg.seq = 2


@pytest.mark.parametrize("decoder", [d for _, d in DIRECTIONS.values()])
def test_unknown_op_is_a_validation_error(decoder: msgspec.msgpack.Decoder[object]) -> None:
    frame = msgspec.msgpack.encode({"op": "no_such_op", "req_id": 1})
    with pytest.raises(msgspec.ValidationError, match="no_such_op"):
        decoder.decode(frame)


@pytest.mark.parametrize("decoder", [d for _, d in DIRECTIONS.values()])
def test_missing_op_is_a_validation_error(decoder: msgspec.msgpack.Decoder[object]) -> None:
    with pytest.raises(msgspec.ValidationError):
        decoder.decode(msgspec.msgpack.encode({"time": 1.0}))


@pytest.mark.parametrize(
    ("decoder", "frame"),
    [
        (P.client_decoder, {"op": "submit", "req_id": "one", "tasks": []}),
        (P.client_decoder, {"op": "cancel", "req_id": 1, "ids": ["x"]}),
        (P.client_decoder, {"op": "hello", "role": "admin", "proto_version": 1, "token": "t"}),
        (P.to_client_decoder, {"op": "submitted", "req_id": 1, "ids": "1,2"}),
        (P.pilot_decoder, {"op": "credit", "cores": "4"}),
        (P.pilot_decoder, {"op": "reports", "seq": 1, "reports": [
            {"task_id": 1, "attempt": 0, "kind": "exploded", "time": 1.0}]}),
        (P.to_pilot_decoder, {"op": "ack", "seq": None}),
        (P.to_pilot_decoder, {"op": "kill", "tasks": [[1, 2, 3]]}),
    ],
)
def test_wrong_field_type_is_a_validation_error(
    decoder: msgspec.msgpack.Decoder[object], frame: dict[str, object]
) -> None:
    with pytest.raises(msgspec.ValidationError):
        decoder.decode(msgspec.msgpack.encode(frame))


def test_missing_required_field_is_a_validation_error() -> None:
    with pytest.raises(msgspec.ValidationError, match="req_id"):
        P.client_decoder.decode(msgspec.msgpack.encode({"op": "cancel", "ids": [1]}))


@pytest.mark.parametrize(
    ("cls", "decoder"),
    [
        (P.Submit, P.to_client_decoder),
        (P.Submitted, P.client_decoder),
        (P.RunTasks, P.pilot_decoder),
        (P.Heartbeat, P.to_pilot_decoder),
        (P.Submit, P.pilot_decoder),
    ],
)
def test_message_of_other_direction_is_refused(
    cls: type[P.Msg], decoder: msgspec.msgpack.Decoder[object]
) -> None:
    with pytest.raises(msgspec.ValidationError):
        decoder.decode(P.encode(SAMPLES[cls]))


@pytest.mark.parametrize("garbage", [b"", b"\xc1", b"\x92\x01", b"\xdb\xff\xff\xff\xff"])
@pytest.mark.parametrize("decoder", [d for _, d in DIRECTIONS.values()])
def test_garbage_bytes_are_a_decode_error(
    decoder: msgspec.msgpack.Decoder[object], garbage: bytes
) -> None:
    with pytest.raises(msgspec.DecodeError):
        decoder.decode(garbage)


def test_non_map_frame_is_a_validation_error() -> None:
    with pytest.raises(msgspec.ValidationError):
        P.client_decoder.decode(msgspec.msgpack.encode([1, 2, 3]))


@pytest.mark.parametrize(
    ("decoder", "frame", "expected"),
    [
        (P.pilot_decoder, {"op": "heartbeat", "time": 1.0, "load": [0.1, 0.2]},
         P.Heartbeat(time=1.0)),
        (P.to_pilot_decoder, {"op": "ack", "seq": 3, "future_field": {"x": 1}}, P.Ack(seq=3)),
        (P.client_decoder, {"op": "wait", "req_id": 1, "ids": [2], "deadline": 9.5},
         P.Wait(req_id=1, ids=[2])),
        (P.to_client_decoder,
         {"op": "welcome", "proto_version": 2, "server_id": "s", "new_knob": True},
         P.Welcome(proto_version=2, server_id="s")),
        # unknown fields nested inside value types are ignored too
        (P.client_decoder,
         {"op": "submit", "req_id": 1, "tasks": [{"app": "a", "site": "s", "newer": 1}]},
         P.Submit(req_id=1, tasks=[P.TaskSpec(app="a", site="s")])),
    ],
)
def test_extra_unknown_field_still_decodes(
    decoder: msgspec.msgpack.Decoder[object], frame: dict[str, object], expected: P.Msg
) -> None:
    assert decoder.decode(msgspec.msgpack.encode(frame)) == expected


def test_old_peer_frame_without_new_fields_decodes_with_defaults() -> None:
    # A Hello from a client that predates the pilot fields.
    frame = {"op": "hello", "role": "client", "proto_version": 1, "token": "t"}
    hello = P.client_decoder.decode(msgspec.msgpack.encode(frame))
    assert hello == P.Hello(role="client", proto_version=1, token="t")
    assert hello.held == [] and hello.cores == 0


def test_chunk_by_size_keeps_order_and_stays_within_budget() -> None:
    sizes = [5, 5, 5, 12, 1, 1, 9]
    runs = P.chunk_by_size(sizes, lambda n: n, 10)
    assert runs == [[5, 5], [5], [12], [1, 1], [9]]  # an item over budget goes alone
    assert [x for r in runs for x in r] == sizes
    assert P.chunk_by_size([], lambda n: n, 10) == []


def test_payload_counts_inline_bytes() -> None:
    a = P.Assignment(task_id=1, attempt=1, args=b"x" * 100, inputs=[("a", b"y" * 1000)])
    r = P.Report(task_id=1, attempt=1, kind="done", time=0.0, result=b"z" * 10,
                 outputs=[P.OutputFile(path="o", size=3, data=b"abc")])
    assert P.payload(a) == 512 + 1100
    assert P.payload(r) == 512 + 13


@pytest.mark.parametrize("n", [1, 2, 15, 16, 300, 70_000])
def test_a_packed_frame_decodes_to_its_messages_in_order(n: int) -> None:
    msgs = [P.Ack(seq=i) for i in range(n)]
    frame = P.pack([P.encode(m) for m in msgs])
    assert P.to_pilot_decoder.decode_all(frame) == msgs
    # A single message is sent as it is, and read as a frame of one.
    assert P.to_pilot_decoder.decode_all(P.encode(msgs[0])) == msgs[:1]


def test_packed_frames_keep_to_the_budget_and_the_order() -> None:
    frames = [P.encode(P.Ping(time=float(i))) for i in range(1000)]
    out = P.packed(frames, budget=1000)
    assert len(out) > 1 and all(len(f) <= 1000 + 5 for f in out)
    got = [m for f in out for m in P.to_client_decoder.decode_all(f)]
    assert got == [P.Ping(time=float(i)) for i in range(1000)]
    assert P.packed(frames[:1]) == frames[:1]  # one message: no array around it


def test_a_packed_frame_with_one_bad_message_is_refused_whole() -> None:
    good = P.encode(P.Ack(seq=1))
    with pytest.raises(msgspec.ValidationError):
        P.to_pilot_decoder.decode_all(P.pack([good, msgspec.msgpack.encode({"op": "nope"})]))
    with pytest.raises(msgspec.ValidationError):  # a message of the other direction
        P.to_pilot_decoder.decode_all(P.pack([good, P.encode(P.Heartbeat(time=1.0))]))
    with pytest.raises(msgspec.DecodeError):  # truncated
        P.to_pilot_decoder.decode_all(P.pack([good, good])[:-1])
    with pytest.raises(msgspec.ValidationError):  # an array of no message
        P.to_pilot_decoder.decode_all(b"\x90")
