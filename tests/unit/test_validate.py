"""Submit-time refusals: each with the message a user reads, and the task record a spec becomes."""

from __future__ import annotations

import json

import pytest

from tidewater import proto as P
from tidewater.config import Limits
from tidewater.controller.model import AppRec, LiveTask, SiteRec
from tidewater.controller.validate import (
    MAX_PARENTS,
    check_job_spec,
    check_parent_count,
    check_resources,
    check_submit,
    check_task_fits,
    footprint,
    prepare_task,
    task_error,
)
from tidewater.errors import AppError, InvalidRequest, LimitExceeded, NotFound, ParamError
from tidewater.states import TaskState

SITE = SiteRec(id=3, owner_id=7, name="polaris", created_at=1.0)
ECHO = AppRec(site_id=3, name="echo", command="echo {msg} {n}",
              params=[P.ParamSpec(name="msg"), P.ParamSpec(name="n", type="int", required=False,
                                                           default=2)],
              description="")
FUNC = AppRec(site_id=3, name="fit", command="", params=[], description="",
              function="pkg.mod:fit")
LIMITS = Limits()


def prepare(spec: P.TaskSpec, *, index: int = 0, app: AppRec | None = ECHO,
            limits: Limits = LIMITS, site_limits: P.SiteLimits | None = None,
            ) -> tuple[LiveTask, list[int]]:
    return prepare_task(spec, index=index, owner_id=7, site=SITE, app=app,
                        app_names=["fit", "echo"], limits=limits, site_limits=site_limits,
                        now=100.0)


def task(**kw: object) -> P.TaskSpec:
    kw.setdefault("params", {"msg": "hi"})
    return P.TaskSpec(app="echo", site="polaris", **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- the Submit


def test_a_submit_needs_tasks_and_at_most_the_limit() -> None:
    with pytest.raises(InvalidRequest, match="^Submit carries no tasks$"):
        check_submit(P.Submit(req_id=1, tasks=[]), LIMITS)
    check_submit(P.Submit(req_id=1, tasks=[task()] * 2), Limits(max_tasks_per_submit=2))
    with pytest.raises(LimitExceeded) as info:
        check_submit(P.Submit(req_id=1, tasks=[task()] * 3), Limits(max_tasks_per_submit=2))
    assert info.value.message == (
        "3 tasks in one Submit; the limit is 2 (the client splits larger batches)")
    assert info.value.code == "limit"


def test_parent_count_limit() -> None:
    check_parent_count(4, MAX_PARENTS)
    with pytest.raises(LimitExceeded) as info:
        check_parent_count(4, MAX_PARENTS + 1)
    assert info.value.message == "task 4: 10001 parents; the limit is 10000"


# ---------------------------------------------------------------------- footprint


@pytest.mark.parametrize(("res", "expected"), [
    (P.Resources(), (1, 0)),
    (P.Resources(cores=8, gpus=2), (8, 2)),
    (P.Resources(ranks_per_node=4, threads_per_rank=2), (8, 0)),
    (P.Resources(cores=16, ranks_per_node=4, threads_per_rank=2), (16, 0)),
    (P.Resources(ranks_per_node=4, gpus_per_rank=1, gpus=2), (4, 4)),
])
def test_footprint(res: P.Resources, expected: tuple[int, int]) -> None:
    assert footprint(res) == expected


def test_the_record_and_the_fit_check_agree_on_the_footprint() -> None:
    res = P.Resources(ranks_per_node=4, threads_per_rank=2, gpus_per_rank=1)
    t, _ = prepare(task(resources=res))
    assert (t.cores, t.gpus) == footprint(res) == (8, 4)
    with pytest.raises(InvalidRequest, match="needs 8 cores per node"):
        check_task_fits("polaris", res, P.SiteLimits(cores_per_node=7))
    with pytest.raises(InvalidRequest, match="needs 4 GPUs per node"):
        check_task_fits("polaris", res, P.SiteLimits(cores_per_node=8, gpus_per_node=3))
    check_task_fits("polaris", res, P.SiteLimits(cores_per_node=8, gpus_per_node=4))


# ---------------------------------------------------------------------- prepare_task


def test_a_command_task() -> None:
    t, refs = prepare(task(params={"msg": "a b; rm -rf ~"}, tags={"run": "7"}, priority=5,
                           env={"OMP_NUM_THREADS": "4"}, workdir="./runs//7/", timeout=60.0,
                           max_retries=1, resources=P.Resources(num_nodes=2),
                           wall_time=600.0, inputs=[P.Input(path="x", data=b"xyz")]))
    assert refs == []
    assert (t.id, t.owner_id, t.site_id, t.app, t.state) == (0, 7, 3, "echo", TaskState.CREATED)
    assert json.loads(t.params_j) == {"msg": "a b; rm -rf ~", "n": 2}
    assert t.argv == ["echo", "a b; rm -rf ~", "2"] and t.shell == ""
    assert t.tags == {"run": "7"} and t.env == {"OMP_NUM_THREADS": "4"}
    assert (t.priority, t.timeout, t.max_retries, t.workdir) == (5, 60.0, 1, "runs/7")
    assert (t.num_nodes, t.wall_time, t.created_at) == (2, 600.0, 100.0)
    assert t.extra == {"num_nodes": 2, "wall_time": 600.0}
    assert (t.func, t.args) == ("", None)
    assert t.in_data == {"x": b"xyz"}
    assert t.files is not None and [f.path for f in t.files] == ["x"]


def test_a_function_task() -> None:
    spec = P.TaskSpec(app="fit", site="polaris", args=b"\x01\x02",
                      inputs=[P.Input(path="d", task=11, output="out.h5")])
    t, refs = prepare(spec, app=FUNC)
    assert (t.func, t.args, t.params_j, t.argv_j, t.shell) == ("pkg.mod:fit", b"\x01\x02",
                                                             "{}", "[]", "")
    assert (t.extra_j, t.workdir) == ("", "")
    assert refs == [11]


def test_unknown_app_names_the_registered_ones() -> None:
    with pytest.raises(AppError) as info:
        prepare(task(), app=None)
    assert info.value.message == (
        "task: unknown app 'echo' on site 'polaris' (registered: echo, fit)")
    with pytest.raises(AppError, match=r"^task 2: .*\(registered: none\)$"):
        prepare_task(task(), index=2, owner_id=7, site=SITE, app=None, app_names=[],
                     limits=LIMITS, site_limits=None, now=0.0)


def test_params_size_limit_leaves_out_args_and_inline_inputs() -> None:
    small = Limits(max_params_bytes=400)
    inline = [P.Input(path="x", data=b"x" * 5000)]
    prepare(task(inputs=inline), limits=small)  # inline bytes have their own limit
    prepare(P.TaskSpec(app="fit", site="polaris", args=b"a" * 5000), app=FUNC, limits=small)
    big = task(tags={"t": "v" * 400})
    size = len(P.encode(big))
    prepare(big, limits=Limits(max_params_bytes=size))  # at the limit is within it
    with pytest.raises(LimitExceeded) as info:
        prepare(big, index=1, limits=small)
    assert info.value.message == (
        f"task 1: {size} bytes of parameters, tags and environment; the limit is 400 "
        "(pass large data as files)")


@pytest.mark.parametrize(("spec", "app", "cls", "message"), [
    (task(args=b"x"), ECHO, ParamError, "task 1: app 'echo' is a command: pass params, not args"),
    (P.TaskSpec(app="fit", site="polaris", params={"a": 1}), FUNC, ParamError,
     "task 1: app 'fit' is a Python function: pass args, not params"),
    (task(params={}), ECHO, ParamError, "task 1: app 'echo' needs parameter 'msg'"),
    (task(params={"msg": "x", "z": 1}), ECHO, ParamError,
     "task 1: app 'echo' has no parameter 'z' (its parameters: msg, n)"),
    (task(max_retries=101), ECHO, InvalidRequest, "task 1: max_retries must be between 0 and 100"),
    (task(timeout=0.0), ECHO, InvalidRequest,
     "task 1: timeout must be a positive number of seconds"),
    (task(env={"1X": "a"}), ECHO, InvalidRequest,
     "task 1: invalid environment variable name '1X'"),
    (task(tags={"a": "b\x00"}), ECHO, InvalidRequest,
     "task 1: NUL bytes are not allowed in env or tags"),
    (task(workdir="../x"), ECHO, InvalidRequest,
     "task 1: workdir '../x' may not be empty or contain '..'"),
    (task(resources=P.Resources(cores=0)), ECHO, InvalidRequest,
     "task 1: resources: cores must be >= 1 and gpus >= 0"),
    (task(inputs=[P.Input(path="a")]), ECHO, InvalidRequest,
     "task 1: input 'a': give exactly one of url, data, or task and output"),
])
def test_each_refusal_names_its_task(spec: P.TaskSpec, app: AppRec, cls: type[InvalidRequest],
                                     message: str) -> None:
    with pytest.raises(cls) as info:
        prepare(spec, index=1, app=app)
    assert type(info.value) is cls
    assert info.value.message == message


def test_function_args_over_the_inline_limit() -> None:
    with pytest.raises(LimitExceeded) as info:
        prepare(P.TaskSpec(app="fit", site="polaris", args=b"a" * 11), app=FUNC,
                limits=Limits(max_inline_bytes=10))
    assert info.value.message == (
        "task: 11 bytes of arguments; the limit is 10 (pass large data as files)")


def test_a_task_that_can_never_fit_the_site_is_refused() -> None:
    with pytest.raises(InvalidRequest) as info:
        prepare(task(resources=P.Resources(gpus=4)), index=3,
                site_limits=P.SiteLimits(gpus_per_node=2))
    assert info.value.message == "task 3: needs 4 GPUs per node; nodes of site 'polaris' have 2"
    with pytest.raises(InvalidRequest) as info:
        prepare(task(wall_time=3601.0), site_limits=P.SiteLimits(max_wall_time_min=60))
    assert info.value.message == (
        "task: wall_time 3601 s is longer than the 60 min batch jobs of site 'polaris' may last")


def test_task_error_keeps_class_and_code() -> None:
    exc = task_error(5, NotFound("no site named 'x'"))
    assert type(exc) is NotFound and exc.code == "not_found"
    assert exc.message == "task 5: no site named 'x'"
    assert task_error(0, InvalidRequest("m", "retry")).message == "task: m"
    assert task_error(0, InvalidRequest("m", "retry")).code == "retry"


# ---------------------------------------------------------------------- resources and fit


def test_check_resources_keeps_what_differs_from_the_defaults() -> None:
    assert check_resources(P.Resources(), None) == {}
    assert check_resources(P.Resources(cores=4, ranks_per_node=2, node_packing_count=3),
                           10.0) == {"ranks_per_node": 2, "node_packing_count": 3,
                                     "wall_time": 10.0}
    with pytest.raises(InvalidRequest, match="^resources: num_nodes must be between 1 and"):
        check_resources(P.Resources(num_nodes=0), None)
    with pytest.raises(InvalidRequest, match="^resources: gpus_per_rank must be between 0 and"):
        check_resources(P.Resources(gpus_per_rank=-1), None)
    with pytest.raises(InvalidRequest, match="^wall_time must be a positive number"):
        check_resources(P.Resources(), 0.0)


def test_check_task_fits_without_limits_checks_nothing() -> None:
    check_task_fits("s", P.Resources(cores=10_000, num_nodes=10_000), None, 1e9)
    check_task_fits("s", P.Resources(cores=10_000), P.SiteLimits())
    with pytest.raises(InvalidRequest) as info:
        check_task_fits("s", P.Resources(num_nodes=5), P.SiteLimits(max_nodes_per_job=4))
    assert info.value.message == "needs 5 nodes; site 's' allows at most 4 per batch job"


# ---------------------------------------------------------------------- batch jobs


@pytest.mark.parametrize(("spec", "limits", "message"), [
    (P.JobSpec(site="s", nodes=0), None, "nodes must be between 1 and 100000, not 0"),
    (P.JobSpec(site="s", wall_time_min=0), None, "wall time must be at least 1 minute, not 0"),
    (P.JobSpec(site="s", queue="a\nb"), None, "invalid queue 'a\\nb'"),
    (P.JobSpec(site="s", project="p" * 129), None, f"invalid project {'p' * 129!r}"),
    (P.JobSpec(site="s", queue="big"), P.SiteLimits(queues=["debug", "prod"]),
     "queue 'big' is not allowed on site 's' (allowed: debug, prod)"),
    (P.JobSpec(site="s", project="x"), P.SiteLimits(projects=["chem"]),
     "project 'x' is not allowed on site 's' (allowed: chem)"),
    (P.JobSpec(site="s", nodes=9), P.SiteLimits(max_nodes_per_job=8),
     "9 nodes asked; site 's' allows at most 8 per batch job"),
    (P.JobSpec(site="s", wall_time_min=61), P.SiteLimits(max_wall_time_min=60),
     "wall time 61 min asked; site 's' allows at most 60 min"),
])
def test_batch_job_refusals(spec: P.JobSpec, limits: P.SiteLimits | None, message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        check_job_spec(spec, limits)
    assert type(info.value) is InvalidRequest and info.value.message == message


def test_a_batch_job_within_the_limits_passes() -> None:
    check_job_spec(P.JobSpec(site="s", nodes=8, wall_time_min=60, queue="debug"),
                   P.SiteLimits(queues=["debug"], max_nodes_per_job=8, max_wall_time_min=60))
    check_job_spec(P.JobSpec(site="s"), P.SiteLimits(queues=["debug"]))  # default queue
