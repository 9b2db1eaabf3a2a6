"""Task latencies the controller's core observes, per site: pure bucket counts, no clock.

Two figures, each a histogram per site (:class:`SiteHistogram`), exposed by
:mod:`.metrics` at scrape time with the site's and owner's names:

* **submit -> start**: from the controller taking the Submit (the task's
  ``created_at``) to the pilot's "started" stamp (``started_at``) of its
  first attempt, once per task (a later attempt -- an automatic retry, a
  user's retry, a requeue after its pilot was lost -- waited for an earlier
  one, not for the queue alone, and is not counted). The same two stamps
  as ``TaskInfo`` and ``bench/latency.py``'s "start"; they come from two
  clocks when the pilot runs on another host, so a negative difference
  (skew) counts as 0.
* **dispatch**: from the moment a task is runnable and queued for a pilot
  (after the commit that made it so: submitted, its parents done, a retry,
  a pilot lost before it started) to the moment its ``RunTasks`` is queued
  to the pilot, both on the controller's clock.

The dispatch figure needs the moment each queued task became runnable. A
million tasks may be queued; a stamp each would cost the controller ~70 MB,
so at most :data:`MAX_TIMED` queued tasks carry one: under a longer queue
the tasks that became runnable while it was over the bound are not timed
(the histogram's count is then below the number of tasks dispatched).

Written and read on the event loop's thread only, so no lock: an
observation is a bisect and two additions, cheap enough to make for every
task.
"""

from __future__ import annotations

from bisect import bisect_left

LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0, 1800.0, 3600.0)
"""Upper bounds (seconds) of the latency buckets; a last one, +Inf, holds the rest."""

MAX_TIMED = 10_000
"""Queued tasks that carry their runnable stamp at most (see the module's docstring)."""


class SiteHistogram:
    """Observations per site id (or any int key): how many fell in each bucket, and their sum."""

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise ValueError(f"bucket bounds must increase strictly: {bounds}")
        self.bounds = bounds
        self.by_site: dict[int, list[float]] = {}
        """Site id -> [count in bucket 0, ..., count in +Inf, sum of the values]."""

    def observe(self, site_id: int, value: float) -> None:
        row = self.by_site.get(site_id)
        if row is None:
            row = self.by_site[site_id] = [0.0] * (len(self.bounds) + 2)
        row[bisect_left(self.bounds, value)] += 1  # bucket i holds bounds[i-1] < v <= bounds[i]
        row[-1] += value

    def cumulative(self, site_id: int) -> tuple[list[tuple[float, float]], float, float]:
        """``([(upper bound, count <= it), ..., (inf, count)], count, sum)`` of one site."""
        row = self.by_site.get(site_id) or [0.0] * (len(self.bounds) + 2)
        out: list[tuple[float, float]] = []
        total = 0.0
        for bound, n in zip((*self.bounds, float("inf")), row[:-1], strict=True):
            total += n
            out.append((bound, total))
        return out, total, row[-1]


class TaskTimes:
    """The two task latencies per site, fed by the core as tasks move (see the module)."""

    def __init__(self, max_timed: int = MAX_TIMED) -> None:
        self.start = SiteHistogram()
        """Submit -> first start, per site."""
        self.dispatch = SiteHistogram()
        """Runnable -> sent to a pilot, per site."""
        self.max_timed = max_timed
        self.runnable_since: dict[int, float] = {}
        """Queued task id -> when it became runnable (at most ``max_timed`` of them)."""

    def runnable(self, task_id: int, now: float) -> None:
        """The task is queued for a pilot from ``now`` (a task already stamped keeps its stamp)."""
        since = self.runnable_since
        if task_id not in since and len(since) < self.max_timed:
            since[task_id] = now

    def dispatched(self, task_id: int, site_id: int, now: float) -> None:
        """The task's RunTasks is queued to a pilot at ``now``."""
        since = self.runnable_since.pop(task_id, None)
        if since is not None:
            self.dispatch.observe(site_id, max(0.0, now - since))

    def started(self, site_id: int, created_at: float, started_at: float) -> None:
        """A task started for the first time."""
        self.start.observe(site_id, max(0.0, started_at - created_at))

    def forget(self, task_id: int) -> None:
        """The task is final: drop its stamp, if it still had one (cancelled while queued)."""
        self.runnable_since.pop(task_id, None)
