"""Batch jobs and site agents: what each request writes, and what is sent now and after commit."""

from __future__ import annotations

from dataclasses import replace

import pytest
from msgspec.structs import replace as sreplace

from tidewater import proto as P
from tidewater.controller.access import TokenBook
from tidewater.controller.effects import (
    AgentOwes,
    Close,
    CloseSessions,
    Effects,
    JobEnded,
    JobStart,
    Send,
)
from tidewater.controller.jobs import JobBook, why_ended
from tidewater.controller.model import JobRec, Principal, SiteRec, TokenRow, UserRow
from tidewater.controller.store import schema
from tidewater.controller.store.base import Op, Write
from tidewater.errors import InvalidRequest, NotFound

NOW = 1000.0
BOB = Principal(user_id=2, user="bob", token_id="b" * 16, remote="h")
EVE = Principal(user_id=3, user="eve", token_id="e" * 16)
POLARIS = SiteRec(id=5, owner_id=2, name="polaris", created_at=1.0)
AURORA = SiteRec(id=6, owner_id=2, name="aurora", created_at=1.0)
SITE_NAMES = {5: "polaris", 6: "aurora"}
AGENT = Principal(user_id=2, user="bob", site_id=5, token_id="s" * 16)
WELCOME = P.Welcome(proto_version=P.PROTO_VERSION, server_id="x", site="polaris")


def token_row(w: Write) -> TokenRow:
    assert w[0] is Op.INSERT_TOKEN
    return schema.token_from_row(w[1])


def add(book: JobBook, site: SiteRec = POLARIS, who: Principal = BOB, peer: int = 1,
        **spec: object) -> tuple[JobRec, Effects]:
    fx = book.add_job(who, peer, P.AddJob(req_id=7, job=P.JobSpec(site=site.name, **spec)),  # type: ignore[arg-type]
                      site, NOW)
    start = fx.after[-1]
    assert isinstance(start, JobStart)
    return start.job, fx


def update(book: JobBook, *updates: P.JobUpdate, seq: int = 1, site_id: int = 5,
           now: float = NOW) -> Effects:
    return book.job_updates(site_id, 40, P.JobUpdates(seq=seq, updates=list(updates)), now)


# ---------------------------------------------------------------------- add, list, cancel


def test_add_job_writes_the_job_its_pilot_token_and_an_audit_entry() -> None:
    book = JobBook()
    j, fx = add(book, nodes=2, wall_time_min=60, queue="debug")
    assert (j.id, j.site_id, j.owner_id, j.state, j.nodes, j.created_at, j.autoscaled) == (
        1, 5, 2, "pending_submission", 2, NOW, False)
    assert fx.writes[0] == schema.upsert_job(j)
    row = token_row(fx.writes[1])
    assert (row.id, row.kind, row.user_id, row.site_id, row.batch_job) == (
        j.token_id, "pilot", 2, 5, 1)
    assert fx.writes[2] == (Op.INSERT_AUDIT, (
        NOW, 2, "bob", "b" * 16, "h", "job.add", "polaris/1",
        '{"nodes":2,"wall_time_min":60,"queue":"debug"}'))
    assert len(fx.writes) == 3 and fx.out == []
    start = fx.after[1]
    assert isinstance(start, JobStart)
    assert fx.after[0] == Send(1, P.JobAdded(req_id=7, job=JobBook.info(j, "polaris", NOW)))
    secret = start.pilot_token
    assert secret.startswith("twp_" + j.token_id + ".")
    assert all(secret.partition(".")[2] not in repr(w) for w in fx.writes)
    # At commit, the job goes to the site's agent if one is connected.
    assert book.push_start(j, secret, "polaris", NOW) == []
    book.agents[5] = 40
    assert book.push_start(j, secret, "polaris", NOW) == [Send(40, P.StartJob(job=P.AgentJob(
        job=JobBook.info(j, "polaris", NOW), pilot_token=secret)))]
    j.state = "queued"
    assert book.push_start(j, secret, "polaris", NOW) == []


def test_add_job_refuses_what_the_scheduler_would() -> None:
    book = JobBook()
    book.limits[5] = P.SiteLimits(max_nodes_per_job=4)
    with pytest.raises(InvalidRequest, match="^5 nodes asked; site 'polaris' allows at most 4"):
        add(book, nodes=5)
    assert book.jobs == {}


def test_listing_shows_only_your_jobs() -> None:
    book = JobBook()
    a, _ = add(book)
    b, _ = add(book, AURORA)
    c, _ = add(book)
    add(book, replace(POLARIS, id=9, owner_id=3), EVE)
    c.state = "finished"

    def listed(who: Principal = BOB, **kw: object) -> list[int]:
        fx = book.list_jobs(who, 1, P.ListJobs(req_id=3, **kw), SITE_NAMES.__getitem__  # type: ignore[arg-type]
                            if who is BOB else {9: "polaris"}.__getitem__, NOW)
        assert fx.writes == [] and fx.after == []
        (sent,) = fx.out
        assert isinstance(sent, Send) and isinstance(sent.msg, P.JobList)
        return [info.id for info in sent.msg.jobs]

    assert listed() == [a.id, b.id]
    assert listed(include_finished=True) == [a.id, b.id, c.id]
    assert listed(site="aurora") == [b.id]
    assert listed(include_finished=True, limit=2) == [b.id, c.id]  # the newest
    assert listed(EVE) == [4]


def test_cancel_moves_to_pending_deletion_and_stops_the_job_after_commit() -> None:
    book = JobBook()
    j, _ = add(book)
    book.agents[5] = 40
    for who in (EVE, replace(BOB, site_id=6)):
        with pytest.raises(NotFound, match=f"^no batch job {j.id}$"):
            book.cancel_job(who, 1, P.CancelJob(req_id=2, id=j.id), NOW)
    with pytest.raises(NotFound, match="^no batch job 99$"):
        book.cancel_job(BOB, 1, P.CancelJob(req_id=2, id=99), NOW)
    assert j.state == "pending_submission"
    fx = book.cancel_job(BOB, 1, P.CancelJob(req_id=2, id=j.id), NOW)
    assert (j.state, j.reason) == ("pending_deletion", "cancel requested")
    assert fx.writes == [schema.upsert_job(j), (Op.INSERT_AUDIT, (
        NOW, 2, "bob", "b" * 16, "h", "job.cancel", str(j.id), "{}"))]
    assert fx.out == []
    assert fx.after == [Send(1, P.Done(req_id=2)),
                        Send(40, P.StopJob(job_id=j.id, scheduler_id=""))]
    j.state = "finished"
    with pytest.raises(InvalidRequest) as info:
        book.cancel_job(BOB, 1, P.CancelJob(req_id=2, id=j.id), NOW)
    assert (info.value.message, info.value.code) == (
        f"batch job {j.id} has already ended (finished)", "final")


# ---------------------------------------------------------------------- agents


def test_agent_hello_remints_tokens_of_jobs_still_to_be_submitted() -> None:
    book = JobBook()
    pending, _ = add(book)
    queued, _ = add(book)
    done, _ = add(book)
    other, _ = add(book, AURORA)
    update(book, P.JobUpdate(job_id=queued.id, state="queued", scheduler_id="77"),
           P.JobUpdate(job_id=done.id, state="finished"))
    old_token = pending.token_id
    book.agents[5] = 39  # an older connection of the same agent
    limits = P.SiteLimits(cores_per_node=64)
    hello = P.Hello(role="agent", proto_version=P.PROTO_VERSION, token="", site="polaris",
                    limits=limits)
    fx = book.agent_hello(AGENT, 40, hello, WELCOME, POLARIS, NOW + 5)
    assert fx.out == [Send(40, WELCOME),
                      Close(39, 4000, "replaced by a new connection of the site's agent")]
    assert pending.token_id != old_token
    assert fx.writes[:2] == [schema.update_site_limits(5, limits),
                             (Op.REVOKE_JOB_TOKENS, (NOW + 5, pending.id))]
    row = token_row(fx.writes[2])
    assert (row.id, row.kind, row.batch_job, row.site_id, row.created_at) == (
        pending.token_id, "pilot", pending.id, 5, NOW + 5)
    assert len(fx.writes) == 3
    closes, jobs, owes = fx.after
    assert closes == CloseSessions([old_token], "replaced by a new pilot token")
    assert owes == AgentOwes(5, 40)
    assert isinstance(jobs, Send) and jobs.peer == 40 and isinstance(jobs.msg, P.Jobs)
    listed = jobs.msg.jobs
    assert [(a.job.id, a.job.state) for a in listed] == [(pending.id, "pending_submission"),
                                                        (queued.id, "queued")]
    assert listed[1].pilot_token == ""
    assert fx.wake
    assert book.agents == {5: 40} and book.limits[5] == limits
    # The new secret is the one stored: a pilot of the job gets in with it.
    new = listed[0].pilot_token
    tokens = TokenBook()
    who = tokens.principal(tokens.parse(new), new, row,
                           UserRow(id=2, name="bob", is_admin=False, created_at=0.0,
                                   disabled_at=None),
                           now=NOW, remote="", site_exists=lambda _s: True,
                           job_of=book.jobs.get)
    assert (who.batch_job, who.site_id) == (pending.id, 5)
    assert all(new.partition(".")[2] not in repr(w) for w in fx.writes)
    # A later connection's Hello does not close the one now current when it goes.
    book.agent_gone(5, 39)
    assert book.agents == {5: 40}
    book.agent_gone(5, 40)
    assert book.agents == {}


def test_agent_hello_refusals() -> None:
    book = JobBook()
    hello = P.Hello(role="agent", proto_version=P.PROTO_VERSION, token="")
    for who, site in ((BOB, None), (replace(AGENT, batch_job=3), POLARIS), (AGENT, AURORA)):
        with pytest.raises(InvalidRequest) as info:
            book.agent_hello(who, 40, hello, WELCOME, site, NOW)
        assert (info.value.message, info.value.code) == (
            "an agent must connect with its site's token", "auth")
    with pytest.raises(NotFound, match="^this site token is not for site 'aurora'$"):
        book.agent_hello(AGENT, 40, sreplace(hello, site="aurora"), WELCOME, POLARIS, NOW)
    assert book.agents == {}
    fx = book.agent_hello(AGENT, 40, hello, WELCOME, POLARIS, NOW)
    assert fx.writes == [] and fx.out == [Send(40, WELCOME)]
    assert fx.after == [Send(40, P.Jobs(jobs=[])), AgentOwes(5, 40)]


def test_request_job_is_idempotent_by_key() -> None:
    book = JobBook()
    msg = P.RequestJob(key="scale-1", job=P.JobSpec(site="polaris", nodes=3))
    fx = book.request_job(POLARIS, msg, NOW)
    (j,) = book.jobs.values()
    assert (j.autoscaled, j.request_key, j.owner_id, j.nodes) == (True, "scale-1", 2, 3)
    assert fx.writes[0] == schema.upsert_job(j) and token_row(fx.writes[1]).batch_job == j.id
    assert len(fx.writes) == 2 and fx.out == []
    (start,) = fx.after
    assert isinstance(start, JobStart) and start.job is j
    again = book.request_job(POLARIS, msg, NOW + 1)
    assert not again and len(book.jobs) == 1
    book.request_job(AURORA, sreplace(msg, job=P.JobSpec(site="")), NOW)  # another site's key
    assert len(book.jobs) == 2
    with pytest.raises(NotFound, match="^this site token is not for site 'polaris'$"):
        book.request_job(AURORA, sreplace(msg, key="k2"), NOW)
    for key in ("", "k" * 129):
        with pytest.raises(InvalidRequest, match="^RequestJob needs a key of 1-128 characters$"):
            book.request_job(POLARIS, sreplace(msg, key=key), NOW)


# ---------------------------------------------------------------------- job updates


def test_forward_steps_are_applied_and_acknowledged_after_commit() -> None:
    book = JobBook()
    j, _ = add(book)
    fx = update(book, P.JobUpdate(job_id=j.id, state="queued", scheduler_id="4242",
                                  reason="Priority", time=1010.0), seq=3)
    assert (j.state, j.scheduler_id, j.reason, j.submitted_at) == ("queued", "4242", "Priority",
                                                                   1010.0)
    assert fx.writes == [schema.upsert_job(j)]
    assert fx.out == [] and fx.after == [Send(40, P.Ack(seq=3))]
    fx = update(book, P.JobUpdate(job_id=j.id, state="running", start_time=1020.0), seq=4)
    assert (j.state, j.started_at, j.submitted_at) == ("running", 1020.0, 1010.0)
    assert fx.writes == [schema.upsert_job(j)] and fx.after == [Send(40, P.Ack(seq=4))]


def test_stale_unknown_and_foreign_reports_change_nothing() -> None:
    book = JobBook()
    j, _ = add(book)
    mine = update(book, P.JobUpdate(job_id=j.id, state="running"))
    assert j.started_at == NOW and j.submitted_at == NOW
    before = replace(j)
    fx = update(book, P.JobUpdate(job_id=j.id, state="queued"),  # backwards
                P.JobUpdate(job_id=j.id, state="running"),  # the same
                P.JobUpdate(job_id=j.id, state="exploded"),  # unknown state
                P.JobUpdate(job_id=99, state="finished"),  # unknown job
                seq=2)
    assert j == before
    assert fx.writes == [] and fx.after == [Send(40, P.Ack(seq=2))]
    fx = update(book, P.JobUpdate(job_id=j.id, state="finished"), site_id=6)  # not its site
    assert j.state == "running" and fx.writes == []
    # A stale state still carries news in its other fields.
    fx = update(book, P.JobUpdate(job_id=j.id, state="queued", reason="node failure"))
    assert (j.state, j.reason) == ("running", "node failure")
    assert fx.writes == [schema.upsert_job(j)]
    assert mine.writes == [schema.upsert_job(replace(before))]


def test_a_final_state_revokes_the_pilot_token_and_ends_the_job() -> None:
    book = JobBook()
    j, _ = add(book)
    k, _ = add(book)
    j.pilots.update({"p1", "p2"})
    fx = update(book, P.JobUpdate(job_id=j.id, state="finished", reason="TIMEOUT",
                                  start_time=900.0, end_time=990.0),
                P.JobUpdate(job_id=k.id, state="submit_failed", error="sbatch: no"), seq=9,
                now=NOW + 1)
    assert (j.state, j.started_at, j.ended_at, j.submitted_at) == ("finished", 900.0, 990.0,
                                                                   NOW + 1)
    assert (k.state, k.error, k.submitted_at, k.ended_at) == ("submit_failed", "sbatch: no",
                                                              None, NOW + 1)
    assert fx.writes == [(Op.REVOKE_JOB_TOKENS, (NOW + 1, j.id)), schema.upsert_job(j),
                         (Op.REVOKE_JOB_TOKENS, (NOW + 1, k.id)), schema.upsert_job(k)]
    assert fx.after == [Send(40, P.Ack(seq=9)), JobEnded(j), JobEnded(k)]
    assert why_ended(j) == f"batch job {j.id} ended (TIMEOUT)"
    assert why_ended(k) == f"batch job {k.id} ended"
    assert book.release_pilots(j.id) == ["p1", "p2"] and j.pilots == set()
    # Ended is ended.
    fx = update(book, P.JobUpdate(job_id=j.id, state="running"))
    assert j.state == "finished" and fx.writes == []


# ---------------------------------------------------------------------- pilots of a job


def test_a_pilot_inside_a_queued_job_proves_it_runs() -> None:
    book = JobBook()
    j, _ = add(book)
    update(book, P.JobUpdate(job_id=j.id, state="queued"))
    fx = book.pilot_joined(j.id, "p1", 1003.0, NOW + 5)
    assert (j.state, j.started_at, j.first_pilot_at, j.first_pilot_process_at) == (
        "running", NOW + 5, NOW + 5, 1003.0)
    assert j.pilots == {"p1"} and j.seen_pilot
    assert fx.writes == [schema.upsert_job(j)] and not fx.out and not fx.after
    fx = book.pilot_joined(j.id, "p2", 1004.0, NOW + 6)
    assert not fx and j.pilots == {"p1", "p2"}
    assert (j.first_pilot_at, j.first_pilot_process_at) == (NOW + 5, 1003.0)
    book.pilot_left(j.id, "p1")
    assert j.pilots == {"p2"}
    assert not book.pilot_joined(99, "p9", None, NOW)


def test_a_pilot_does_not_revive_a_job_that_ended_or_is_being_deleted() -> None:
    book = JobBook()
    for state in ("finished", "submit_failed", "pending_deletion"):
        j, _ = add(book)
        j.state = state
        fx = book.pilot_joined(j.id, "late", None, NOW)
        assert j.state == state and j.started_at is None and not fx
        assert j.seen_pilot and j.first_pilot_at == NOW
    j, _ = add(book)  # not yet even queued: the pilot proves it is running
    assert book.pilot_joined(j.id, "fast", None, NOW + 2).writes == [schema.upsert_job(j)]
    assert (j.state, j.started_at) == ("running", NOW + 2)


# ---------------------------------------------------------------------- demand


def test_demand_is_sent_only_when_it_changed() -> None:
    book = JobBook()
    numbers = {5: ((3, 12, 1, 2), 1, 4, 600.0), 6: ((0, 0, 0, 0), 0, 0, None)}

    def demand_of(sid: int) -> P.Demand:
        return JobBook.demand(sid, *numbers[sid])

    d5 = P.Demand(tasks=3, cores=12, gpus=1, node_demand=2.0, idle_nodes=1, busy_nodes=4,
                  max_wall_time=600.0)
    assert demand_of(5) == d5
    assert book.send_demand([5, 6], demand_of) == []  # no agent connected
    book.agent_hello(AGENT, 40, P.Hello(role="agent", proto_version=P.PROTO_VERSION, token=""),
                     WELCOME, POLARIS, NOW)
    assert book.send_demand([5, 6], demand_of) == [Send(40, d5)]
    assert book.send_demand([5, 6], demand_of) == []
    numbers[5] = ((2, 8, 1, 2), 1, 4, 600.0)
    assert book.send_demand([5], demand_of) == [Send(40, sreplace(d5, tasks=2, cores=8))]
    # A reconnected agent hears the demand again, unchanged or not.
    book.agent_hello(AGENT, 41, P.Hello(role="agent", proto_version=P.PROTO_VERSION, token=""),
                     WELCOME, POLARIS, NOW)
    assert book.send_demand([5], demand_of) == [Send(41, sreplace(d5, tasks=2, cores=8))]


def test_load_continues_job_ids_after_the_stored_ones() -> None:
    book = JobBook()
    stored = JobRec(id=41, site_id=5, owner_id=2, state="queued", nodes=1, wall_time_min=30,
                    queue="", project="", created_at=0.0, token_id="t" * 16)
    book.load([stored], {5: P.SiteLimits(max_nodes_per_job=2)})
    assert book.jobs == {41: stored} and book.limits[5].max_nodes_per_job == 2
    j, _ = add(book)
    assert j.id == 42
