"""The pilot book: pilots, their leases, what each holds, and the restart hold. Pure.

A pilot is welcomed by :meth:`PilotBook.hello` and stored (a row per pilot,
kept until it is let go), so a restarted controller knows which pilots may
still be running its tasks. Its credit reaches the dispatcher only once that
row is committed (:meth:`PilotBook.slot_ready`).

**Reconciliation.** A Hello names every task the pilot holds -- queued,
running, or finished with its report still unacknowledged -- as
``(task, attempt)``. :func:`reconcile` compares that with what the
controller believes, one row per task:

=================================  ==============================  ===========
controller believes                pilot holds                     decision
=================================  ==============================  ===========
assigned to it, this attempt       this attempt                    KEEP
assigned to it, RUNNING            not it (or another attempt)     LOSE
assigned to it, not yet started    not it (or another attempt)     REQUEUE
unassigned, runnable, same site    a newer attempt                 ADOPT
anything else (final, elsewhere,   it                              KILL
older attempt, another site)
=================================  ==============================  ===========

ADOPT is the restart case: an assignment made in memory just before a crash,
whose task the pilot may already have run. Adopting it keeps the attempt,
and the reports the pilot resends then land on it; it is never sent to
another pilot.

**The restart hold.** After a restart, a site some stored pilot served gets
no dispatch until every such pilot has said Hello again or its lease has run
out (:meth:`PilotBook.held_sites`): until then, nobody knows which of the
site's runnable tasks a returning pilot already holds. Pilots that connect
meanwhile are welcomed and reconciled; their credit waits.

**Counts kept as they change.** The idle and busy nodes of each site's
connected pilots, and how many pilots it has connected, are running totals,
moved whenever a pilot connects, leaves, drains, or gains its first task or
loses its last (:meth:`PilotBook.assign`, :meth:`PilotBook.unassign`), and
the pilots are indexed by site: every dispatch round asks for a site's
Demand and every Submit for its health, and neither may cost a look at
every pilot.

No await, no clock (``now`` is an argument), no peers (ids only).
"""

from __future__ import annotations

from collections.abc import Callable, Set
from dataclasses import dataclass, field
from enum import Enum

from .. import proto as P
from .. import states
from ..config import LONGEST_RECONNECT_DELAY
from ..errors import InvalidRequest
from ..states import TaskState as S
from .dispatch import PilotSlot
from .leases import Leases
from .model import AppRec, LiveTask, PilotRow
from .staging import workdir_of


@dataclass
class PilotRec:
    pilot_id: str
    site_id: int
    owner_id: int
    hostname: str = ""
    cores: int = 0
    gpus: int = 0
    peer: int | None = None
    """The connection it is on (None while away)."""
    batch_job: int = 0
    node_count: int = 1
    draining: bool = False
    slot: PilotSlot | None = None
    """Its credit, kept here until the dispatcher may use it."""
    connected_at: float = 0.0
    """When its current (or last) connection was welcomed; 0: not since a restart."""
    last_seen: float = 0.0
    """When it last said anything (Hello, heartbeat, report); 0: not since a restart."""
    left_at: float | None = None
    """When its connection closed without a Bye (None while connected)."""
    _assigned: set[int] = field(default_factory=set, repr=False)
    _counted: tuple[int, bool] | None = field(default=None, repr=False)
    """The (nodes, busy) this pilot adds to its site's node counts now (None: nothing)."""

    @property
    def assigned(self) -> Set[int]:
        """Tasks whose current attempt is this pilot's (change it through the book)."""
        return self._assigned

    def row(self) -> PilotRow:
        return PilotRow(self.pilot_id, self.site_id, self.owner_id, self.batch_job)


RECONNECT_ALLOWANCE = LONGEST_RECONNECT_DELAY
"""After a restart, how much longer than its lease a stored pilot has to come back: the
longest wait between two of its reconnect attempts (:func:`tidewater.transport.backoff`). A pilot asleep in its backoff while the controller restarted is not
taken for lost, and the tasks it may hold (sent, not yet reported) are not sent elsewhere
while it still runs them."""


class Decision(Enum):
    KEEP = "keep"
    LOSE = "lose"
    REQUEUE = "requeue"
    ADOPT = "adopt"
    KILL = "kill"


def reconcile(pilot_id: str, site_id: int, assigned: set[int], held: dict[int, int],
              task: Callable[[int], LiveTask | None]) -> list[tuple[Decision, int, int]]:
    """The table above, for one Hello: (decision, task id, attempt), in a stable order."""
    out: list[tuple[Decision, int, int]] = []
    for task_id in sorted(assigned):
        t = task(task_id)
        if t is None or t.pilot != pilot_id or t.state in states.FINAL:
            continue  # no longer ours to judge
        if held.get(task_id) == t.attempt:
            out.append((Decision.KEEP, task_id, t.attempt))
        elif t.state == S.RUNNING:
            out.append((Decision.LOSE, task_id, t.attempt))
        else:
            out.append((Decision.REQUEUE, task_id, t.attempt))
    for task_id, attempt in sorted(held.items()):
        t = task(task_id)
        if t is not None and t.pilot == pilot_id and t.attempt == attempt:
            continue  # KEEP, above
        if (
            t is not None and not t.pilot and t.state in states.RUNNABLE
            and attempt > t.attempt and t.site_id == site_id
        ):
            out.append((Decision.ADOPT, task_id, attempt))
        else:
            out.append((Decision.KILL, task_id, attempt))
    return out


def check_hello(hello: P.Hello) -> None:
    """Refuse a malformed pilot Hello (InvalidRequest, nothing changed)."""
    if len(hello.nodes) > 100_000 or any(n.cores < 0 or n.gpus < 0 for n in hello.nodes):
        raise InvalidRequest("invalid node list")
    if not hello.pilot_id or len(hello.pilot_id) > 128:
        raise InvalidRequest("a pilot must send a pilot_id of 1-128 characters")
    if hello.cores < 0 or hello.gpus < 0:
        raise InvalidRequest("cores and gpus must not be negative")


class PilotBook:
    """Pilot records by id, their leases, and the sites held after a restart."""

    def __init__(self, lease_timeout: float, disconnect_grace: float | None = None) -> None:
        self.pilots: dict[str, PilotRec] = {}
        self.leases = Leases(lease_timeout, disconnect_grace)
        self.expected: dict[int, set[str]] = {}
        """Site -> stored pilots not yet back since the restart."""
        self._nodes: dict[int, list[int]] = {}
        """Site -> [idle nodes, busy nodes, pilots] of its connected pilots (module docstring)."""
        self._by_site: dict[int, dict[str, PilotRec]] = {}

    # ------------------------------------------------------------------ restart

    def load(self, rows: list[PilotRow], running: list[LiveTask], now: float) -> None:
        """The pilots stored before a restart, and the tasks they were running."""
        for r in rows:
            self._put(PilotRec(r.pilot_id, r.site_id, r.owner_id, batch_job=r.batch_job))
        for t in running:
            if t.state == S.RUNNING and t.pilot:
                rec = self.pilots.get(t.pilot)
                if rec is None:
                    rec = self._put(PilotRec(t.pilot, t.site_id, t.owner_id))
                self.assign(rec, t.id)
        for rec in self.pilots.values():
            self.leases.touch(rec.pilot_id, now + RECONNECT_ALLOWANCE)
            self.expected.setdefault(rec.site_id, set()).add(rec.pilot_id)

    def held_sites(self) -> set[int]:
        """Sites whose dispatch waits for pilots expected back."""
        return {s for s, ids in self.expected.items() if ids}

    def _back(self, rec: PilotRec) -> list[PilotSlot]:
        """``rec`` is back or gone: the slots its site may now use, if the hold lifted."""
        ids = self.expected.get(rec.site_id)
        if ids is None:
            return []
        ids.discard(rec.pilot_id)
        if ids:
            return []
        del self.expected[rec.site_id]
        return [p.slot for p in self.of_site(rec.site_id)
                if p.slot is not None and p.peer is not None]

    # ------------------------------------------------------------------ connections

    def hello(self, hello: P.Hello, *, site_id: int, owner_id: int, batch_job: int, peer: int,
              now: float) -> tuple[PilotRec, int | None]:
        """Welcome a pilot (new or back); (its record, the connection it replaces, if any).

        Raises InvalidRequest if the pilot id belongs to another site or owner.
        """
        old = self.pilots.get(hello.pilot_id)
        if old is not None and (old.site_id != site_id or old.owner_id != owner_id):
            raise InvalidRequest("pilot_id is in use by another site")
        replaced = old.peer if old is not None and old.peer not in (None, peer) else None
        rec = old or PilotRec(hello.pilot_id, site_id, owner_id)
        rec.hostname, rec.cores, rec.gpus, rec.peer = hello.hostname, hello.cores, hello.gpus, peer
        rec.node_count = max(1, len(hello.nodes))
        rec.draining = False
        rec.connected_at = rec.last_seen = now
        rec.left_at = None
        if batch_job:
            rec.batch_job = batch_job
        rec.slot = None
        self._put(rec)
        self._recount(rec)
        self.leases.touch(rec.pilot_id, now)
        return rec, replaced

    def make_slot(self, rec: PilotRec, hello: P.Hello) -> PilotSlot:
        """The pilot's credit as the dispatcher will hold it (after reconciliation)."""
        rec.slot = PilotSlot(
            rec.pilot_id, rec.site_id, hello.cores, hello.gpus,
            max(hello.credit_cores, 0), max(hello.credit_gpus, 0),
            batch_job=rec.batch_job, nodes=rec.node_count, busy=len(rec.assigned),
            end_time=hello.end_time,
        )
        return rec.slot

    def slot_ready(self, pilot_id: str, peer: int) -> list[PilotSlot]:
        """The pilot's row is committed: the slots the dispatcher may take now.

        Its own, unless its site is held; and if it was the last pilot its
        site waited for, every connected pilot's of that site.
        """
        rec = self.pilots.get(pilot_id)
        if rec is None or rec.peer != peer or rec.slot is None:
            return []
        freed = self._back(rec)
        if freed:
            return freed
        if rec.site_id in self.expected:
            return []
        return [rec.slot]

    def away(self, rec: PilotRec, peer: int) -> bool:
        """The connection ended; False if it was an older one of a pilot already back."""
        if rec.peer != peer:
            return False
        rec.peer = None
        rec.slot = None
        self._recount(rec)
        return True

    def remove(self, rec: PilotRec) -> list[PilotSlot]:
        """Let the pilot go; the slots of its site freed if it was the last one awaited."""
        self.pilots.pop(rec.pilot_id, None)
        self._by_site.get(rec.site_id, {}).pop(rec.pilot_id, None)
        self.leases.drop(rec.pilot_id)
        rec._assigned.clear()
        self._recount(rec)
        return self._back(rec)

    def assign(self, rec: PilotRec, task_id: int) -> None:
        """The task's current attempt is the pilot's."""
        rec._assigned.add(task_id)
        self._recount(rec)

    def unassign(self, rec: PilotRec, task_id: int) -> bool:
        """The task's attempt no longer occupies the pilot; False if it did not."""
        if task_id not in rec._assigned:
            return False
        rec._assigned.discard(task_id)
        self._recount(rec)
        return True

    def drain(self, rec: PilotRec) -> None:
        """The pilot takes no more work (until it says Hello again)."""
        rec.draining = True
        rec.slot = None
        self._recount(rec)

    def _put(self, rec: PilotRec) -> PilotRec:
        self.pilots[rec.pilot_id] = rec
        self._by_site.setdefault(rec.site_id, {})[rec.pilot_id] = rec
        return rec

    def _recount(self, rec: PilotRec) -> None:
        """Move the pilot's share of its site's counts to what it is now."""
        now = None
        if rec.peer is not None and self.pilots.get(rec.pilot_id) is rec:
            now = (max(1, rec.node_count), bool(rec._assigned) or rec.draining)
        if now == rec._counted:
            return
        counts = self._nodes.setdefault(rec.site_id, [0, 0, 0])
        if rec._counted is not None:
            n, busy = rec._counted
            counts[busy] -= n
            counts[2] -= 1
        if now is not None:
            n, busy = now
            counts[busy] += n
            counts[2] += 1
        rec._counted = now

    def expired(self, now: float) -> list[PilotRec]:
        return [rec for pid in self.leases.expired(now)
                if (rec := self.pilots.get(pid)) is not None]

    # ------------------------------------------------------------------ views

    def of_site(self, site_id: int) -> list[PilotRec]:
        """Every pilot held for the site, connected or within its lease."""
        return list(self._by_site.get(site_id, {}).values())

    def count(self, site_id: int) -> tuple[int, int]:
        """(connected, held) pilots of the site; held counts those away within their lease."""
        return self._nodes.get(site_id, (0, 0, 0))[2], len(self._by_site.get(site_id, ()))

    def nodes(self, site_id: int) -> tuple[int, int]:
        """(idle, busy) nodes of the site's connected pilots: busy ones hold a task or drain.

        Kept as running totals: the cost does not grow with the site's pilots.
        """
        idle, busy, _ = self._nodes.get(site_id, (0, 0, 0))
        return idle, busy


def build_assignment(t: LiveTask, rec: PilotRec, slot: PilotSlot | None, others: list[str],
                     app: AppRec | None, inline_limit: int) -> P.Assignment:
    """What a pilot is sent for one attempt of ``t``.

    ``others``: host names of the further nodes a multi-node task reserved
    (the whole node of each is the task's).
    """
    if others and slot is not None:
        cores, gpus = slot.cores, slot.gpus
        hosts = [rec.hostname, *others]
    elif slot is not None:
        cores, gpus = slot.footprint(t)
        hosts = []
    else:
        cores, gpus, hosts = t.cores, t.gpus, []
    extra = t.extra
    return P.Assignment(
        task_id=t.id, attempt=t.attempt, argv=t.argv, shell=t.shell,
        env=t.env, workdir=workdir_of(t), cores=cores,
        gpus=gpus, timeout=t.timeout, wall_time=t.wall_time, hosts=hosts,
        num_nodes=t.num_nodes, function=t.func, args=t.args or b"",
        ranks_per_node=int(extra.get("ranks_per_node", 1)),
        threads_per_rank=int(extra.get("threads_per_rank", 1)),
        gpus_per_rank=int(extra.get("gpus_per_rank", 0)),
        inputs=list(t.in_data.items()) if t.in_data else [],
        outputs=[f.path for f in t.files if f.direction == "out" and not f.url]
        if t.files else [],
        inline_limit=inline_limit,
        hooks=app.hooks if app is not None else None,
    )
