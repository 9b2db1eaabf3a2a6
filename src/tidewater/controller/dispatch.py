"""Matching runnable tasks to pilot credit. Pure: no I/O, no clock.

Each site has one priority queue (highest priority first, FIFO by task id
within a priority). Each pilot has *credit*: cores and GPUs it has granted
and not yet been sent work for. :meth:`Dispatcher.match` never hands a
pilot more than its credit, and never a task larger than the pilot itself.

A pilot serves one node (node mode) or every node of its batch job (head
mode, ``nodes > 1``). A single-node task takes its cores, or its share of a
node when it sets ``node_packing_count``. A multi-node task goes to a head
pilot with enough whole nodes of credit, or reserves that many idle
node-mode pilots of one batch job: it is sent to the first, the others are
charged in full and get their credit back from :meth:`Dispatcher.release`
when the task's attempt ends.

Cost: a round's work does not grow with a site's pilots. Pilots without
credit are not looked at (each site keeps an index of the pilots that have
some, filed by free cores, updated when credit is granted or charged), so
2,000 busy pilots cost a round nothing; a single-node task goes to the
first pilot that fits in the fullest credit level, so 2,000 idle ones cost
it a look at one level. What still scales with pilots: a task that fits
few of them (a GPU task among CPU pilots, a wall time few batch jobs
have left) looks through those with enough credit, and a multi-node task
through every pilot with credit (``examined`` counts both).
"""

from __future__ import annotations

import bisect
import heapq
from dataclasses import dataclass
from typing import Protocol

# Tasks at the head of a queue that fit no pilot right now are set aside so
# smaller tasks behind them can go; this bounds how far one match looks.
SCAN_LIMIT = 256


@dataclass
class PilotSlot:
    pilot_id: str
    site_id: int
    cores: int
    gpus: int
    credit_cores: int = 0
    credit_gpus: int = 0
    batch_job: int = 0
    nodes: int = 1
    busy: int = 0
    """Tasks sent to this pilot (or reserving it) whose attempt has not ended."""
    end_time: float | None = None
    """Tasks must be done by then (the batch job's end less the pilot's margin)."""

    @property
    def node_cores(self) -> int:
        return self.cores // max(self.nodes, 1)

    @property
    def node_gpus(self) -> int:
        return self.gpus // max(self.nodes, 1)

    def footprint(self, task: QueuedTask) -> tuple[int, int]:
        """Cores and GPUs ``task`` takes on this pilot."""
        n = task.num_nodes
        if n > 1:
            return n * self.node_cores, n * self.node_gpus
        cores = task.cores
        if task.packing > 0:
            cores = max(cores, min(self.node_cores, -(-self.node_cores // task.packing)))
        return cores, task.gpus

    def in_time(self, task: QueuedTask, now: float | None) -> bool:
        if self.end_time is None or now is None:
            return True
        return now + (task.wall_time or 0.0) <= self.end_time and now < self.end_time

    def fits(self, task: QueuedTask, now: float | None = None) -> bool:
        if not self.in_time(task, now):
            return False
        if task.num_nodes > self.nodes:
            return False
        if task.cores > self.node_cores or task.gpus > self.node_gpus:
            return False
        cores, gpus = self.footprint(task)
        return cores <= self.credit_cores and gpus <= self.credit_gpus

    def whole_and_idle(self, task: QueuedTask, now: float | None) -> bool:
        return (
            self.in_time(task, now) and
            self.nodes == 1 and self.busy == 0 and self.batch_job != 0
            and self.credit_cores >= self.cores and self.credit_gpus >= self.gpus
        )


class QueuedTask(Protocol):
    """What the dispatcher reads of a runnable task (the controller passes its own record)."""

    @property
    def task_id(self) -> int: ...
    @property
    def site_id(self) -> int: ...
    @property
    def priority(self) -> int: ...
    @property
    def cores(self) -> int: ...
    @property
    def gpus(self) -> int: ...
    @property
    def num_nodes(self) -> int: ...
    @property
    def packing(self) -> int: ...
    @property
    def wall_time(self) -> float | None: ...


@dataclass(frozen=True, slots=True)
class Queued:
    task_id: int
    site_id: int
    priority: int
    cores: int
    gpus: int
    num_nodes: int = 1
    packing: int = 0
    wall_time: float | None = None


_ID_BITS = 64
_ID_MASK = (1 << _ID_BITS) - 1


def heap_key(priority: int, task_id: int) -> int:
    """The order of (highest priority, lowest id) as one int, smallest first.

    ``-priority * 2**64 + task_id`` orders as the pair ``(-priority,
    task_id)`` does for ids below 2**64, in one int instead of a tuple and
    its int: with a million tasks queued that is about 70 bytes each. At
    priority 0 the key is the task's own id object, shared.
    """
    return task_id if priority == 0 else (-priority << _ID_BITS) + task_id


class Dispatcher:
    def __init__(self) -> None:
        # Per site, a heap of heap_key()s; entries of tasks withdrawn since are dropped lazily.
        self._heaps: dict[int, list[int]] = {}
        self._queued: dict[int, QueuedTask] = {}
        self._pilots: dict[str, PilotSlot] = {}
        # Per site, the pilots with some credit, filed by free cores (then by arrival in
        # that level), and the levels in use in ascending order; pilot -> its level.
        self._ready: dict[int, dict[int, dict[str, PilotSlot]]] = {}
        self._levels: dict[int, list[int]] = {}
        self._level_of: dict[str, int] = {}
        self.examined = 0
        """Pilots :meth:`match` has looked at, all rounds together: its work, for tests."""
        # Per site: queued tasks, cores of single-node ones, GPUs, nodes of multi-node ones.
        self._demand: dict[int, list[int]] = {}
        self._walls: dict[int, dict[float, int]] = {}  # site -> wall-time estimate -> count
        # Multi-node task -> (pilot, cores, gpus held back, whether it is a reserved
        # node rather than the one the task was sent to).
        self._reserved: dict[int, list[tuple[str, int, int, bool]]] = {}

    # -- tasks

    def _count(self, task: QueuedTask, sign: int) -> None:
        d = self._demand.setdefault(task.site_id, [0, 0, 0, 0])
        d[0] += sign
        if task.num_nodes > 1:
            d[3] += sign * task.num_nodes
        else:
            d[1] += sign * task.cores
        d[2] += sign * task.gpus * task.num_nodes
        if task.wall_time:
            walls = self._walls.setdefault(task.site_id, {})
            n = walls.get(task.wall_time, 0) + sign
            if n > 0:
                walls[task.wall_time] = n
            else:
                walls.pop(task.wall_time, None)

    def push(self, task: QueuedTask) -> None:
        """Make a task runnable (idempotent)."""
        if task.task_id in self._queued:
            return
        self._queued[task.task_id] = task
        self._count(task, +1)
        heapq.heappush(self._heaps.setdefault(task.site_id, []),
                       heap_key(task.priority, task.task_id))

    def discard(self, task_id: int) -> bool:
        """Withdraw a queued task (cancelled); False if it was not queued."""
        task = self._queued.pop(task_id, None)
        if task is None:
            return False
        self._count(task, -1)
        return True

    def demand(self, site_id: int) -> tuple[int, int, int, int]:
        """Queued tasks of a site: count, cores (single-node), GPUs, whole nodes (multi-node)."""
        d = self._demand.get(site_id, [0, 0, 0, 0])
        return d[0], d[1], d[2], d[3]

    def longest_wall_time(self, site_id: int) -> float | None:
        """The longest wall-time estimate among a site's queued tasks (None: none has one)."""
        walls = self._walls.get(site_id)
        return max(walls) if walls else None

    def reserved(self, task_id: int) -> list[str]:
        """Pilots a multi-node task reserved besides the one it was sent to."""
        return [p for p, _, _, other in self._reserved.get(task_id, ()) if other]

    def release(self, task_id: int) -> None:
        """A task's attempt ended: give its reserved pilots their credit back."""
        for pilot_id, cores, gpus, other in self._reserved.pop(task_id, ()):
            if other:
                self.task_left(pilot_id)
            self.grant(pilot_id, cores, gpus)

    def task_left(self, pilot_id: str) -> None:
        slot = self._pilots.get(pilot_id)
        if slot is not None and slot.busy > 0:
            slot.busy -= 1

    def __contains__(self, task_id: int) -> bool:
        return task_id in self._queued

    def queued(self, site_id: int | None = None) -> int:
        if site_id is None:
            return len(self._queued)
        return sum(1 for t in self._queued.values() if t.site_id == site_id)

    # -- pilots

    def add_pilot(self, slot: PilotSlot) -> None:
        self.remove_pilot(slot.pilot_id)
        self._pilots[slot.pilot_id] = slot
        self._file(slot)

    def remove_pilot(self, pilot_id: str) -> None:
        slot = self._pilots.pop(pilot_id, None)
        if slot is not None:
            self._unfile(slot)

    def pilot(self, pilot_id: str) -> PilotSlot | None:
        """The pilot's slot; change its credit only through :meth:`grant`."""
        return self._pilots.get(pilot_id)

    def grant(self, pilot_id: str, cores: int, gpus: int) -> None:
        slot = self._pilots.get(pilot_id)
        if slot is not None:
            slot.credit_cores = min(slot.credit_cores + max(cores, 0), 1 << 30)
            slot.credit_gpus = min(slot.credit_gpus + max(gpus, 0), 1 << 30)
            self._file(slot)

    def ready(self, site_id: int) -> int:
        """Pilots of the site with some credit (the only ones :meth:`match` looks at)."""
        return sum(len(b) for b in self._ready.get(site_id, {}).values())

    def _file(self, slot: PilotSlot) -> None:
        """Put the pilot in the level of its free cores now (out of the index without credit)."""
        level = slot.credit_cores if slot.credit_cores > 0 or slot.credit_gpus > 0 else None
        if self._level_of.get(slot.pilot_id) == level:
            return
        self._unfile(slot)
        if level is None:
            return
        buckets = self._ready.setdefault(slot.site_id, {})
        bucket = buckets.get(level)
        if bucket is None:
            bucket = buckets[level] = {}
            bisect.insort(self._levels.setdefault(slot.site_id, []), level)
        bucket[slot.pilot_id] = slot
        self._level_of[slot.pilot_id] = level

    def _unfile(self, slot: PilotSlot) -> None:
        level = self._level_of.pop(slot.pilot_id, None)
        if level is None:
            return
        buckets = self._ready[slot.site_id]
        bucket = buckets[level]
        del bucket[slot.pilot_id]
        if not bucket:
            del buckets[level]
            levels = self._levels[slot.site_id]
            del levels[bisect.bisect_left(levels, level)]

    # -- matching

    def match(self, now: float | None = None) -> list[tuple[str, int]]:
        """Pair queued tasks with pilots that have credit for them.

        With ``now``, a pilot whose batch job ends gets only tasks whose
        wall-time estimate fits in what is left of it.

        Returns ``(pilot_id, task_id)`` pairs, already removed from the
        queues and charged against the pilots' credit.
        """
        out: list[tuple[str, int]] = []
        for site_id, heap in self._heaps.items():
            buckets = self._ready.get(site_id)
            if not heap or not buckets:
                continue
            skipped: list[int] = []
            while heap and buckets and len(skipped) < SCAN_LIMIT:
                key = heap[0]
                task = self._queued.get(key & _ID_MASK)
                if (task is None or task.site_id != site_id
                        or key != heap_key(task.priority, task.task_id)):
                    heapq.heappop(heap)  # withdrawn or re-pushed since: drop lazily
                    continue
                if task.num_nodes > 1:
                    got = self._match_nodes(task, site_id, now)
                else:
                    got = self._best(task, site_id, now)
                heapq.heappop(heap)
                if got is None:
                    skipped.append(key)
                    continue
                del self._queued[task.task_id]
                self._count(task, -1)
                out.append((got.pilot_id, task.task_id))
            for key in skipped:
                heapq.heappush(heap, key)
        return out

    def _charge(self, slot: PilotSlot, cores: int, gpus: int) -> None:
        slot.credit_cores -= cores
        slot.credit_gpus -= gpus
        slot.busy += 1
        self._file(slot)

    def _best(self, task: QueuedTask, site_id: int, now: float | None) -> PilotSlot | None:
        """The first pilot that fits in the fullest level of free cores (None: none fits).

        A task takes at least its own cores, so levels below that are not looked at.
        """
        buckets = self._ready[site_id]
        levels = self._levels[site_id]
        for i in range(len(levels) - 1, -1, -1):
            level = levels[i]
            if level < task.cores:
                break
            for p in buckets[level].values():
                self.examined += 1
                if p.fits(task, now):
                    self._charge(p, *p.footprint(task))
                    return p
        return None

    def _match_nodes(self, task: QueuedTask, site_id: int, now: float | None
                     ) -> PilotSlot | None:
        """A head pilot with enough whole nodes, else idle node pilots of one batch job."""
        buckets = self._ready[site_id]
        ready = [p for level in reversed(self._levels[site_id]) for p in buckets[level].values()]
        self.examined += len(ready)
        for p in ready:
            if p.nodes > 1 and p.fits(task, now):
                self._charge(p, *p.footprint(task))
                return p
        groups: dict[int, list[PilotSlot]] = {}
        for p in ready:
            if (
                p.whole_and_idle(task, now) and task.cores <= p.cores and task.gpus <= p.gpus
            ):
                groups.setdefault(p.batch_job, []).append(p)
        for _job, slots in sorted(groups.items()):
            if len(slots) < task.num_nodes:
                continue
            chosen = sorted(slots, key=lambda p: p.pilot_id)[: task.num_nodes]
            held: list[tuple[str, int, int, bool]] = []
            for i, p in enumerate(chosen):
                # All of a node's credit (prefetch included) is the task's; the first
                # pilot returns its node's share itself when the task ends.
                cores, gpus = p.credit_cores, p.credit_gpus
                self._charge(p, cores, gpus)
                if i == 0:
                    held.append((p.pilot_id, cores - p.cores, gpus - p.gpus, False))
                else:
                    held.append((p.pilot_id, cores, gpus, True))
            self._reserved[task.task_id] = held
            return chosen[0]
        return None
