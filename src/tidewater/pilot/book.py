"""The pilot's book: what it holds, where each task runs, what it owes the controller. Pure.

:class:`PilotBook` is fed the events of a pilot's life (``RunTasks``,
``Kill``, ``Ack``, a task started, a task ended, the pilot stopping) and
returns what to do (:class:`Start` a task on these nodes, :class:`Stop` a
running one); the reports and credit it owes wait in it until the sender
asks for :meth:`PilotBook.outgoing`. No await, no clock (``now`` is an
argument), no processes: :class:`~tidewater.pilot.main.Pilot` executes it.

Credit: at each (re)connection the pilot grants its free cores and GPUs
plus ``prefetch`` cores' worth of queued work, minus what is queued
already; after that it gives back the resources of every assignment that
leaves it (ended, killed while queued, refused as a duplicate). So what the
controller may still send, plus what is queued and running, never exceeds
the pilot's size plus ``prefetch``.

Durability: final reports are numbered into ``Reports`` frames in the
:class:`~tidewater.transport.Outbox` and held until the controller's Ack
(sent after its commit). Until then the task stays in :meth:`PilotBook.held`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .. import proto as P
from ..transport import Outbox
from .nodes import Node, admits

Key = tuple[int, int]
"""(task id, attempt): a new attempt may start while an old one is being killed."""


@dataclass
class NodeRoom:
    """What is free on one node now."""

    cores: int
    gpus: list[int]
    """Ids of its free GPUs."""


@dataclass(frozen=True)
class Placement:
    """Where a running task sits: (node index, cores taken) per node, and its GPU ids."""

    nodes: tuple[tuple[int, int], ...]
    gpu_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Start:
    """Run ``assignment`` now on ``placement`` (its resources are taken already)."""

    assignment: P.Assignment
    placement: Placement


@dataclass(frozen=True)
class Stop:
    """End the running attempt ``key``; ``silent``: the controller asked and wants no report."""

    key: Key
    reason: str
    silent: bool


Command = Start | Stop


@dataclass
class _Running:
    assignment: P.Assignment
    placement: Placement
    started: bool = False


@dataclass
class _Unacked:
    attempt: int
    seq: int | None = None
    """The Reports frame carrying the final report (None: not framed yet)."""


class PilotBook:
    """Credit, placement, the local queue and the outbox of one pilot.

    ``accept_until``: tasks must be finished by then (epoch seconds; None:
    no end known). Every method is synchronous and cheap.
    """

    def __init__(self, nodes: list[Node], *, prefetch: int = 0,
                 accept_until: float | None = None, outbox: Outbox | None = None) -> None:
        self.nodes = list(nodes)
        self.prefetch = prefetch
        self.accept_until = accept_until
        self.outbox = outbox if outbox is not None else Outbox()
        self.queue: deque[P.Assignment] = deque()
        self.running: dict[Key, _Running] = {}
        self.stopping = False
        self.room = [NodeRoom(n.cores, list(range(n.gpus))) for n in self.nodes]
        self.total_cores = sum(n.cores for n in self.nodes)
        self.total_gpus = sum(n.gpus for n in self.nodes)
        self.free_cores = self.total_cores
        self.free_gpus = self.total_gpus
        self.pending_credit = (0, 0)
        """Cores and GPUs given back since the last Credit (or Hello)."""
        self.reports: list[P.Report] = []
        """Reports not yet numbered into a frame."""
        self._unacked: dict[int, _Unacked] = {}  # task id -> its final report

    # ------------------------------------------------------------------ what is held

    def held(self) -> list[Key]:
        """(task, attempt) of every task this pilot has: queued, running, or finished
        with its final report not yet acknowledged; the newest attempt per task.

        The controller relies on this list (sent in every Hello) after it
        restarts: a task listed here is this pilot's, so it never sends a task
        that already ran here to another pilot. A report becomes acknowledged
        only with the Ack that covers its frame.
        """
        newest: dict[int, int] = {}
        pairs = [(tid, u.attempt) for tid, u in self._unacked.items()]
        pairs += list(self.running)
        pairs += [(a.task_id, a.attempt) for a in self.queue]
        for tid, att in pairs:
            newest[tid] = max(att, newest.get(tid, 0))
        return list(newest.items())

    @property
    def busy(self) -> bool:
        """Something is running or queued."""
        return bool(self.running or self.queue)

    def hello_credit(self) -> tuple[int, int]:
        """The credit a new Hello grants (free + prefetch - queued), which replaces what
        was still to be given back: the controller starts counting afresh. None while
        draining: a pilot that is stopping takes no more work."""
        if self.stopping:
            self.pending_credit = (0, 0)
            return (0, 0)
        queued_cores = sum(a.cores for a in self.queue)
        queued_gpus = sum(a.gpus for a in self.queue)
        self.pending_credit = (0, 0)
        return (max(0, self.free_cores + self.prefetch - queued_cores),
                max(0, self.free_gpus - queued_gpus))

    # ------------------------------------------------------------------ events

    def run_tasks(self, tasks: Iterable[P.Assignment], now: float) -> list[Command]:
        """The controller pushed ``tasks``: queue them and start what fits.

        A task already held (a push resent after a reconnect) is not queued
        twice; its credit goes back. While draining, what arrives (sent before
        the controller heard the Drain) is handed back at once.
        """
        have = set(self.held())
        for a in tasks:
            key = (a.task_id, a.attempt)
            if self.stopping and key not in have:
                have.add(key)
                self._hand_back(a, now, "the pilot is stopping")
            elif key in have:
                self._give_back(a)
            else:
                have.add(key)
                self.queue.append(a)
        return self.schedule(now)

    def kill(self, pairs: Iterable[Key], reason: str) -> list[Command]:
        """The controller cancelled these attempts: drop them if queued, stop them if running.

        A killed attempt is reported by nobody: the controller has moved on,
        so a final report still unacknowledged stops counting as held.
        """
        wanted = set(pairs)
        keep: deque[P.Assignment] = deque()
        for a in self.queue:
            if (a.task_id, a.attempt) in wanted:
                self._give_back(a)
            else:
                keep.append(a)
        self.queue = keep
        out: list[Command] = []
        for tid, attempt in wanted:
            if (tid, attempt) in self.running:
                out.append(Stop((tid, attempt), reason or "killed by the controller", True))
            elif (u := self._unacked.get(tid)) is not None and u.attempt == attempt:
                del self._unacked[tid]
        return out

    def started(self, key: Key, now: float) -> None:
        """Report that ``key`` runs (once: a second call is a no-op)."""
        r = self.running.get(key)
        if r is None or r.started:
            return
        r.started = True
        a = r.assignment
        self.reports.append(P.Report(task_id=a.task_id, attempt=a.attempt, kind="started",
                                     time=now))

    def ended(self, key: Key, report: P.Report | None, now: float) -> list[Command]:
        """``key`` is over (``report``: its final report; None when none is owed).

        Its nodes and credit come back and what now fits is started.
        """
        r = self.running.pop(key, None)
        if r is None:
            return []
        self._release(r.placement)
        self.free_cores += r.assignment.cores
        self.free_gpus += r.assignment.gpus
        self._give_back(r.assignment)
        if report is not None:
            self._final(report)
        return self.schedule(now)

    def ack(self, seq: int) -> None:
        """The controller committed every frame up to ``seq``: forget them and their tasks."""
        self.outbox.ack(seq)
        for tid in [t for t, u in self._unacked.items() if u.seq is not None and u.seq <= seq]:
            del self._unacked[tid]

    def drain(self, reason: str, now: float) -> None:
        """The pilot is stopping but lets what runs finish: start nothing more, and hand
        the queued tasks back now (a ``killed`` report each, so the controller gives
        them to another pilot at once, without counting a retry)."""
        self.stopping = True
        while self.queue:
            self._hand_back(self.queue.popleft(), now, reason)

    def stop(self, reason: str, now: float) -> list[Command]:
        """The pilot is stopping now: start nothing more, hand the queue back, and stop
        what runs (each reported ``killed`` with ``reason``: the controller retries it)."""
        self.drain(reason, now)
        return [Stop(key, reason, False) for key in self.running]

    def _hand_back(self, a: P.Assignment, now: float, reason: str) -> None:
        self._give_back(a)
        self._final(P.Report(task_id=a.task_id, attempt=a.attempt, kind="killed", time=now,
                             message=f"{reason}: handed back before it started"))

    # ------------------------------------------------------------------ what to send

    def outgoing(self, budget: int) -> list[bytes]:
        """Frames to send now: reports in numbered ``Reports`` frames of at most about
        ``budget`` bytes each (held in the outbox), then the credit given back."""
        frames = []
        if self.reports:
            batch, self.reports = self.reports, []
            for run in P.chunk_by_size(batch, P.payload, budget):
                frames.append(self.outbox.keep(_reports(run)))
                for r in run:
                    u = self._unacked.get(r.task_id)
                    if r.kind != "started" and u is not None and u.attempt == r.attempt:
                        u.seq = self.outbox.seq
        cores, gpus = self.pending_credit
        if cores or gpus:
            self.pending_credit = (0, 0)
            frames.append(P.encode(P.Credit(cores=cores, gpus=gpus)))
        return frames

    @property
    def owes(self) -> bool:
        """Reports are waiting to be framed or acknowledged."""
        return bool(self.reports or len(self.outbox))

    # ------------------------------------------------------------------ scheduling

    def schedule(self, now: float) -> list[Command]:
        """Start queued tasks in order while the head of the queue fits (no overtaking)."""
        out: list[Command] = []
        while self.queue and not self.stopping:
            a = self.queue[0]
            if not admits(now, self.accept_until, a.wall_time, 0.0):
                # The controller does not send what cannot finish in time; this is the
                # clock-skew backstop: hand it back unstarted.
                self.queue.popleft()
                self._give_back(a)
                self._final(P.Report(task_id=a.task_id, attempt=a.attempt, kind="killed",
                                     time=now,
                                     message="the batch job ends before the task could finish"))
                continue
            if a.cores > self.free_cores or a.gpus > self.free_gpus:
                break
            placed = self._place(a)
            if placed is None:
                break
            self.queue.popleft()
            self.free_cores -= a.cores
            self.free_gpus -= a.gpus
            placement = self._take(a, placed)
            self.running[(a.task_id, a.attempt)] = _Running(a, placement)
            out.append(Start(a, placement))
        return out

    def _place(self, a: P.Assignment) -> list[int] | None:
        """Nodes (indexes) for ``a`` that have room now, or None."""
        if a.hosts or a.num_nodes <= 1:
            # One node's worth here (a node-mode pilot's reserved MPI task included).
            for i, room in enumerate(self.room):
                if room.cores >= min(a.cores, self.nodes[i].cores) and len(room.gpus) >= a.gpus:
                    return [i]
            return None
        whole = [i for i, room in enumerate(self.room) if self._is_whole(i)]
        return whole[: a.num_nodes] if len(whole) >= a.num_nodes else None

    def _is_whole(self, i: int) -> bool:
        room, node = self.room[i], self.nodes[i]
        return room.cores == node.cores and len(room.gpus) == node.gpus

    def _take(self, a: P.Assignment, placed: list[int]) -> Placement:
        if len(placed) == 1:
            i = placed[0]
            room = self.room[i]
            cores = min(a.cores, self.nodes[i].cores)
            gpus = tuple(room.gpus[: a.gpus])
            del room.gpus[: a.gpus]
            room.cores -= cores
            return Placement(((i, cores),), gpus)
        taken = []
        for i in placed:
            taken.append((i, self.room[i].cores))
            self.room[i] = NodeRoom(0, [])
        return Placement(tuple(taken))

    def _release(self, p: Placement) -> None:
        for i, cores in p.nodes:
            self.room[i].cores += cores
        if len(p.nodes) == 1:
            self.room[p.nodes[0][0]].gpus.extend(p.gpu_ids)
        else:
            # Whole nodes were taken: each gets all its GPUs back.
            for i, _ in p.nodes:
                self.room[i].gpus = list(range(self.nodes[i].gpus))

    def _give_back(self, a: P.Assignment) -> None:
        cores, gpus = self.pending_credit
        self.pending_credit = (cores + a.cores, gpus + a.gpus)

    def _final(self, r: P.Report) -> None:
        self.reports.append(r)
        self._unacked[r.task_id] = _Unacked(r.attempt)


def _reports(run: list[P.Report]) -> Callable[[int], P.Reports]:
    return lambda seq: P.Reports(seq=seq, reports=run)
