"""Matching runnable tasks to pilot credit. Pure: no I/O, no clock.

Each site has one priority queue (highest priority first, FIFO by task id
within a priority). Each pilot has *credit*: cores and GPUs it has granted
and not yet been sent work for. :meth:`Dispatcher.match` never hands a
pilot more than its credit, and never a task larger than the pilot itself.
"""

from __future__ import annotations

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

    def fits(self, cores: int, gpus: int) -> bool:
        return (
            cores <= self.cores
            and gpus <= self.gpus
            and cores <= self.credit_cores
            and gpus <= self.credit_gpus
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


@dataclass(frozen=True, slots=True)
class Queued:
    task_id: int
    site_id: int
    priority: int
    cores: int
    gpus: int


class Dispatcher:
    def __init__(self) -> None:
        self._heaps: dict[int, list[tuple[int, int]]] = {}
        self._queued: dict[int, QueuedTask] = {}
        self._pilots: dict[str, PilotSlot] = {}
        self._site_pilots: dict[int, dict[str, PilotSlot]] = {}

    # -- tasks

    def push(self, task: QueuedTask) -> None:
        """Make a task runnable (idempotent)."""
        if task.task_id in self._queued:
            return
        self._queued[task.task_id] = task
        heapq.heappush(self._heaps.setdefault(task.site_id, []), (-task.priority, task.task_id))

    def discard(self, task_id: int) -> bool:
        """Withdraw a queued task (cancelled); False if it was not queued."""
        return self._queued.pop(task_id, None) is not None

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
        self._site_pilots.setdefault(slot.site_id, {})[slot.pilot_id] = slot

    def remove_pilot(self, pilot_id: str) -> None:
        slot = self._pilots.pop(pilot_id, None)
        if slot is not None:
            self._site_pilots.get(slot.site_id, {}).pop(pilot_id, None)

    def pilot(self, pilot_id: str) -> PilotSlot | None:
        return self._pilots.get(pilot_id)

    def grant(self, pilot_id: str, cores: int, gpus: int) -> None:
        slot = self._pilots.get(pilot_id)
        if slot is not None:
            slot.credit_cores = min(slot.credit_cores + max(cores, 0), 1 << 30)
            slot.credit_gpus = min(slot.credit_gpus + max(gpus, 0), 1 << 30)

    # -- matching

    def match(self) -> list[tuple[str, int]]:
        """Pair queued tasks with pilots that have credit for them.

        Returns ``(pilot_id, task_id)`` pairs, already removed from the
        queues and charged against the pilots' credit.
        """
        out: list[tuple[str, int]] = []
        for site_id, pilots in self._site_pilots.items():
            heap = self._heaps.get(site_id)
            if not heap or not pilots:
                continue
            ready = [p for p in pilots.values() if p.credit_cores > 0 or p.credit_gpus > 0]
            if not ready:
                continue
            skipped: list[tuple[int, int]] = []
            while heap and ready and len(skipped) < SCAN_LIMIT:
                key = heap[0]
                task = self._queued.get(key[1])
                if task is None or task.site_id != site_id or -task.priority != key[0]:
                    heapq.heappop(heap)  # withdrawn or re-pushed since: drop lazily
                    continue
                best: PilotSlot | None = None
                for p in ready:
                    if p.fits(task.cores, task.gpus) and (
                        best is None or p.credit_cores > best.credit_cores
                    ):
                        best = p
                heapq.heappop(heap)
                if best is None:
                    skipped.append(key)
                    continue
                best.credit_cores -= task.cores
                best.credit_gpus -= task.gpus
                del self._queued[task.task_id]
                out.append((best.pilot_id, task.task_id))
                if best.credit_cores <= 0 and best.credit_gpus <= 0:
                    ready.remove(best)
            for key in skipped:
                heapq.heappush(heap, key)
        return out
