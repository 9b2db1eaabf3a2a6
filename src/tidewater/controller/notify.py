"""Watchers and waiters: who hears about committed transitions. Pure.

A *watcher* is a client connection's ``Watch`` with a filter; it gets every
committed event of the owner's tasks that matches, pushed in commit order.
A *waiter* is a ``Wait`` on tasks not yet final; it gets each task's final
record once that is committed.

Both are fed only from commit callbacks (:meth:`Notify.emit`,
:meth:`Notify.answer`) and aggregated over one committed batch, then sent by
:meth:`Notify.flush` after the batch: one ``Events`` frame per watch and one
``Results`` frame (or a few, within the frame limit) per Wait, not one per
task. A watch that replays history from the store registers first and holds
live events back (``held``) until its replay is sent, so the client sees
every event once, in id order.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import proto as P
from ..errors import LimitExceeded, NotFound
from .effects import Out, Send
from .model import Event, LiveTask, StoredEvent


@dataclass
class WatchSub:
    peer: int
    watch_id: int
    filter: P.TaskFilter
    held: list[P.TaskEvent] | None = None
    """Live events kept back while history replays (None: not replaying)."""


class Notify:
    """Watch subscriptions per owner, waiters per task, and what one batch owes them."""

    def __init__(self, max_watches: int, max_frame_bytes: int) -> None:
        self.max_watches = max_watches
        self.max_frame_bytes = max_frame_bytes
        self.watchers: dict[int, dict[tuple[int, int], WatchSub]] = {}
        self.waiters: dict[int, list[tuple[int, int]]] = {}
        self.next_watch = 1
        self.committed_event = 0
        """Every event id up to this one is committed."""
        self._events: dict[int, dict[int, list[P.TaskEvent]]] = {}
        self._results: dict[tuple[int, int], list[P.TaskInfo]] = {}

    # ------------------------------------------------------------------ watches

    def watch(self, owner: int, peer: int, flt: P.TaskFilter, *, replay: bool) -> WatchSub:
        """Register a watch; raises LimitExceeded past ``max_watches`` on one connection."""
        open_here = sum(1 for k in self.watchers.get(owner, {}) if k[0] == peer)
        if open_here >= self.max_watches:
            raise LimitExceeded(
                f"{open_here} watches are open on this connection; the limit is "
                f"{self.max_watches} (close some with Unwatch, or filter by tags)"
            )
        sub = WatchSub(peer, self.next_watch, flt, held=[] if replay else None)
        self.next_watch += 1
        self.watchers.setdefault(owner, {})[(peer, sub.watch_id)] = sub
        return sub

    def replayed(self, sub: WatchSub, since: int, stored: list[StoredEvent]) -> list[Out]:
        """The history read for ``sub`` (ids > ``since``), then the live events it held."""
        held, sub.held = sub.held or [], None
        wanted = set(sub.filter.states)
        events = [
            P.TaskEvent(id=e.id, task_id=e.task_id, from_state=e.src, to_state=e.dst,
                        time=e.time, data=e.data, tags=e.tags)
            for e in stored if not wanted or e.dst in wanted
        ]
        last = events[-1].id if events else since
        events += [e for e in held if e.id > last]
        if not events:
            return []
        return [Send(sub.peer, P.Events(watch_id=sub.watch_id, events=events))]

    def unwatch(self, owner: int, peer: int, watch_id: int) -> None:
        """Raises NotFound for a watch this connection does not have."""
        if self.watchers.get(owner, {}).pop((peer, watch_id), None) is None:
            raise NotFound(f"no watch {watch_id} on this connection")

    # ------------------------------------------------------------------ waits

    def wait(self, peer: int, req_id: int, task_ids: list[int]) -> None:
        for tid in task_ids:
            self.waiters.setdefault(tid, []).append((peer, req_id))

    def client_gone(self, owner: int, peer: int) -> None:
        subs = self.watchers.get(owner)
        if subs:
            for key in [k for k in subs if k[0] == peer]:
                del subs[key]
        for tid in list(self.waiters):
            rest = [w for w in self.waiters[tid] if w[0] != peer]
            if rest:
                self.waiters[tid] = rest
            else:
                del self.waiters[tid]

    # ------------------------------------------------------------------ from commits

    def emit(self, t: LiveTask, events: list[Event], site_name: str) -> None:
        """Queue committed events for the owner's matching watchers."""
        subs = self.watchers.get(t.owner_id)
        if not subs or not events:
            return
        tags = t.tags
        for sub in subs.values():
            f = sub.filter
            if f.ids and t.id not in f.ids:
                continue
            if f.site is not None and f.site != site_name:
                continue
            if f.app is not None and f.app != t.app:
                continue
            if f.tags and any(tags.get(k) != v for k, v in f.tags.items()):
                continue
            chosen = [
                P.TaskEvent(id=e.id, task_id=t.id, from_state=e.src, to_state=e.dst,
                            time=e.time, data=e.data, tags=tags)
                for e in events if not f.states or e.dst in f.states
            ]
            if not chosen:
                continue
            if sub.held is not None:
                sub.held.extend(chosen)
                continue
            self._events.setdefault(sub.peer, {}).setdefault(sub.watch_id, []).extend(chosen)

    def waiting_for(self, task_id: int) -> bool:
        return task_id in self.waiters

    def answer(self, task_id: int, info: P.TaskInfo) -> None:
        """The task's final record is committed: queue it for everyone waiting on it."""
        for peer, req_id in self.waiters.pop(task_id, ()):
            self._results.setdefault((peer, req_id), []).append(info)

    def flush(self) -> list[Out]:
        """What the batch just committed owes watchers and waiters, aggregated."""
        out: list[Out] = []
        for peer, by_watch in self._events.items():
            for watch_id, events in by_watch.items():
                out.append(Send(peer, P.Events(watch_id=watch_id, events=events)))
        self._events.clear()
        budget = self.max_frame_bytes // 2
        for (peer, req_id), infos in self._results.items():
            for run in P.chunk_by_size(infos, P.payload, budget):
                out.append(Send(peer, P.Results(req_id=req_id, tasks=run)))
        self._results.clear()
        return out
