"""The controller's Prometheus metrics: one registry per controller, read at each scrape.

``GET /metrics`` (admins only, see :mod:`.app`) renders
:meth:`ControllerMetrics.render`. Every family, its type and labels are
listed in ``docs/monitoring.md``. Where each number comes from, and what it
costs the controller between scrapes:

* **tasks by state and site** -- the counts the task table keeps as tasks
  move (:attr:`.tasks.TaskTable.by_site` and ``ended``: a few dict
  operations per transition). A scrape reads them as they are: its cost
  grows with sites × states, not with tasks. Live tasks are a gauge per
  state; final states are counters since this controller started (the
  store holds every task ever run, and a ``GROUP BY`` over it at each scrape
  reads the whole task table: about a second per million tasks on SQLite).
  ``rate()`` over the counters gives throughput per site, across restarts.
* **latencies** -- submit -> start and dispatch, per site, observed by the
  core (:mod:`.timings`: a bisect and two additions per task, no lock).
* **store** -- commit time and ops per batch, one call per committed batch
  (:attr:`.store.writer.GroupCommit.on_batch`).
* **frames and bytes** in and out per role -- plain ints the app's read and
  write loops add to per frame (:class:`Frames`), no lock.
* **connections** -- pilots and agents from the core's books, clients from
  the app's tally.
* **the process** -- prometheus-client's process (memory, CPU, open files),
  platform and GC collectors, on this registry (never the global default
  one: several controllers may run in one process, as in the tests).

Label names and values come from the core's books and the users' names,
read at scrape time: a site is named by its owner (``user``) and its name
(``site``), since site names are only unique per user.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from .timings import SiteHistogram

if TYPE_CHECKING:
    from .state import ControllerState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The exposition format :meth:`ControllerMetrics.render` writes (Prometheus text 0.0.4)."""

ROLES = ("client", "agent", "pilot")
IN, OUT, BYTES_IN, BYTES_OUT, OPEN = range(5)
"""Indices into a role's tally in :attr:`Frames.by_role`."""

COMMIT_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""Upper bounds (seconds) of the store's commit-time buckets."""
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
"""Upper bounds of the store's batch-size buckets (ops per transaction)."""


class Frames:
    """Per role: frames and bytes received and sent, and connections open. Plain ints.

    The app takes a role's list once per connection and adds to it per
    frame (``tally[IN] += 1``): nothing else on the hot path.
    """

    def __init__(self) -> None:
        self.by_role: dict[str, list[int]] = {role: [0, 0, 0, 0, 0] for role in ROLES}

    def tally(self, role: str) -> list[int]:
        """The list a connection of ``role`` adds to (made for a role not known yet)."""
        t = self.by_role.get(role)
        if t is None:
            t = self.by_role[role] = [0, 0, 0, 0, 0]
        return t


class ControllerMetrics:
    """The registry of one controller, what the driver and the app feed, and the collector.

    ``state`` is the controller's core (read at scrape time, never changed),
    ``store_counts`` says (batches, ops) committed so far, ``started_at`` is
    when the controller started (wall clock).
    """

    def __init__(self, state: ControllerState, *, store_counts: Callable[[], tuple[int, int]],
                 started_at: float) -> None:
        self.registry = CollectorRegistry()
        self.frames = Frames()
        self.user_names: dict[int, str] = {}
        """User id -> name, for the labels; refreshed by the driver before each render."""
        # Observed like the task latencies (no lock, one key): see .timings.
        self.commit_seconds = SiteHistogram(COMMIT_BUCKETS)
        self.batch_ops = SiteHistogram(BATCH_BUCKETS)
        self.registry.register(_Collector(self, state, store_counts, started_at))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    def store_batch(self, seconds: float, ops: int) -> None:
        """One committed batch (the store's ``on_batch``)."""
        self.commit_seconds.observe(0, seconds)
        self.batch_ops.observe(0, ops)

    def render(self) -> bytes:
        """Every family in the Prometheus text format (:data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)


class _Collector:
    """What is read at scrape time: the core's counts and histograms, frames, connections."""

    def __init__(self, metrics: ControllerMetrics, state: ControllerState,
                 store_counts: Callable[[], tuple[int, int]], started_at: float) -> None:
        self.m = metrics
        self.st = state
        self.store_counts = store_counts
        self.started_at = started_at

    def _site_labels(self) -> dict[int, list[str]]:
        names = self.m.user_names
        return {sid: [names.get(rec.owner_id, str(rec.owner_id)), rec.name]
                for sid, rec in self.st.registry.sites.items()}

    def collect(self) -> Iterator[Metric]:
        st = self.st
        sites = self._site_labels()
        yield from self._tasks(sites)
        yield from self._latencies(sites)
        yield from self._connections(sites)
        yield from self._frames()
        yield _histogram("tidewater_store_commit_seconds",
                         "Time the store took to commit one batch of writes (one transaction).",
                         self.m.commit_seconds, None)
        yield _histogram("tidewater_store_batch_ops",
                         "Writes (ops: one per request or report handled) committed together "
                         "in one transaction.", self.m.batch_ops, None)
        batches, ops = self.store_counts()
        yield _counter("tidewater_store_batches", "Store transactions committed.", batches)
        yield _counter("tidewater_store_ops", "Writes (ops) committed to the store.", ops)
        yield _gauge("tidewater_uptime_seconds", "Seconds since the controller started.",
                     time.time() - self.started_at)
        yield _gauge("tidewater_live_tasks", "Tasks not yet final (held in memory).",
                     len(st.tasks.live))
        yield _gauge("tidewater_queued_tasks",
                     "Runnable tasks waiting for a pilot with room for them.",
                     st.dispatcher.queued())

    def _tasks(self, sites: dict[int, list[str]]) -> Iterable[Metric]:
        st = self.st
        live = GaugeMetricFamily(
            "tidewater_tasks", "Tasks not yet final, by site and state, across all users.",
            labels=["user", "site", "state"])
        for sid, counts in sorted(st.tasks.by_site.items()):
            labels = sites.get(sid, ["", str(sid)])
            for state, n in sorted(counts.items()):
                if n:
                    live.add_metric([*labels, state.value], n)
        yield live
        ended = CounterMetricFamily(
            "tidewater_tasks_ended",
            "Tasks that reached a final state (JOB_FINISHED, FAILED, KILLED) since the "
            "controller started, by site and state.", labels=["user", "site", "state"])
        for sid, counts in sorted(st.tasks.ended.items()):
            labels = sites.get(sid, ["", str(sid)])
            for state, n in sorted(counts.items()):
                ended.add_metric([*labels, state.value], n)
        yield ended
        helps = {
            "tasks_submitted": "Tasks accepted by Submit since the controller started.",
            "tasks_finished": "Tasks whose JOB_FINISHED was committed since the controller "
                              "started.",
            "tasks_failed": "Tasks whose FAILED was committed since the controller started.",
            "tasks_killed": "Tasks whose KILLED was committed since the controller started.",
            "tasks_retried": "Attempts that failed and were retried.",
            "tasks_retried_by_user": "FAILED tasks brought back by a user's retry.",
            "stale_reports": "Pilot reports about an attempt that was no longer current "
                             "(ignored).",
        }
        for key, value in st.tasks.counters.items():
            yield _counter(f"tidewater_{key}", helps.get(key, key), value)

    def _latencies(self, sites: dict[int, list[str]]) -> Iterable[Metric]:
        times = self.st.times
        yield _histogram(
            "tidewater_task_start_latency_seconds",
            "From the controller taking the Submit to the start of the task's first attempt "
            "(TaskInfo.started_at - created_at), per site.", times.start, sites)
        yield _histogram(
            "tidewater_dispatch_latency_seconds",
            "From a task being runnable (committed, queued for a pilot) to its RunTasks "
            "being sent to a pilot, per site.", times.dispatch, sites)

    def _connections(self, sites: dict[int, list[str]]) -> Iterable[Metric]:
        st = self.st
        pilots = GaugeMetricFamily("tidewater_pilots_connected",
                                   "Pilots connected now, by site.", labels=["user", "site"])
        agents = GaugeMetricFamily("tidewater_agents_connected",
                                   "Whether the site's agent is connected now (0 or 1).",
                                   labels=["user", "site"])
        for sid in sorted(sites):
            pilots.add_metric(sites[sid], st.pilots.count(sid)[0])
            agents.add_metric(sites[sid], 1 if sid in st.jobs.agents else 0)
        yield pilots
        yield agents
        yield _gauge("tidewater_clients_connected", "Client connections open now.",
                     self.m.frames.tally("client")[OPEN])

    def _frames(self) -> Iterable[Metric]:
        families = [
            (IN, "tidewater_frames_received", "Websocket frames received, by peer role."),
            (OUT, "tidewater_frames_sent", "Websocket frames sent, by peer role."),
            (BYTES_IN, "tidewater_frame_bytes_received",
             "Bytes of websocket frames received, by peer role."),
            (BYTES_OUT, "tidewater_frame_bytes_sent",
             "Bytes of websocket frames sent, by peer role."),
        ]
        by_role = self.m.frames.by_role
        for index, name, doc in families:
            fam = CounterMetricFamily(name, doc, labels=["role"])
            for role in sorted(by_role):
                fam.add_metric([role], by_role[role][index])
            yield fam


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _histogram(name: str, doc: str, h: SiteHistogram,
               sites: dict[int, list[str]] | None) -> HistogramMetricFamily:
    """Per site (labelled user and site), or with ``sites`` None the one series of key 0."""
    if sites is None:
        buckets, _count, total = h.cumulative(0)
        fam = HistogramMetricFamily(name, doc, labels=[])
        fam.add_metric([], [(_le(bound), n) for bound, n in buckets], total)
        return fam
    fam = HistogramMetricFamily(name, doc, labels=["user", "site"])
    for sid in sorted(h.by_site):
        buckets, _count, total = h.cumulative(sid)
        fam.add_metric(sites.get(sid, ["", str(sid)]),
                       [(_le(bound), n) for bound, n in buckets], total)
    return fam


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))
