"""The async client's latency accounting: phases of tasks and the reports drawn from them.

Mixed into :class:`tidewater.client.Client`, which supplies the connection
(``_request``); the arithmetic is :mod:`tidewater.latency`'s.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from . import latency
from . import proto as P


class Reports:
    """Phases per task and the latency, throughput and utilisation reports (Balsam's)."""

    if TYPE_CHECKING:
        async def _request(self, build: Callable[[int], P.Msg], *,
                           timeout: float | None = None,
                           on_reply: Callable[[Any], bool] | None = None) -> Any: ...

    async def phases(
        self, *, ids: Sequence[int] = (), state: str | Sequence[str] | None = None,
        tags: Mapping[str, str] | None = None, site: str | None = None,
        app: str | None = None, limit: int = 100_000, after_id: int = 0,
        since: float | None = None, until: float | None = None,
    ) -> list[P.TaskPhases]:
        """Latency accounting: the seconds each matching task spent in each phase
        (stage in, run delay, run, stage out, total; :mod:`tidewater.latency`
        defines them), oldest first, at most ``limit`` (read a page at a time).
        ``since``/``until`` (epoch seconds): only tasks created in that window.
        Raises NotFound for an unknown site, InvalidRequest for an unknown state."""
        states = [state] if isinstance(state, str) else list(state or [])
        f = P.TaskFilter(ids=list(ids), states=states, tags=dict(tags or {}), site=site, app=app)
        out: list[P.TaskPhases] = []
        while len(out) < limit:
            r: P.PhaseList = await self._request(functools.partial(
                _phases_msg, filter=f, limit=limit - len(out), after_id=after_id,
                since=since, until=until))
            out.extend(r.tasks)
            following = r.next_after or (r.tasks[-1].id if r.tasks else after_id)
            if not r.more or following <= after_id:
                break
            after_id = following
        return out[:limit]

    async def latency_report(self, *, by_tag: str | None = None, finished_only: bool = True,
                             **filters: Any) -> list[latency.LatencyRow]:
        """The median seconds of each phase per route (site, and the ``by_tag`` key's
        value when given) of the tasks matching ``filters`` (as :meth:`phases`)."""
        return latency.latency_table(await self.phases(**filters), by_tag=by_tag,
                                     finished_only=finished_only)

    async def throughput_report(self, *, bin_seconds: float = 60.0, cumulative: bool = True,
                                **filters: Any) -> dict[str, latency.Series]:
        """Per site, (time, tasks finished by then) at every bin edge (per bin
        unless ``cumulative``): Balsam's ``throughput_report``."""
        return latency.throughput(await self.phases(**filters), bin_seconds=bin_seconds,
                                  cumulative=cumulative)

    async def utilization_report(self, *, bin_seconds: float = 60.0, unit: str = "cores",
                                 capacity: dict[str, float] | None = None,
                                 **filters: Any) -> dict[str, latency.Series]:
        """Per site, (time, average busy cores or running tasks over the bin), as a
        fraction of ``capacity`` when given: Balsam's ``utilization_report``."""
        return latency.utilization(await self.phases(**filters), now=time.time(),
                                   bin_seconds=bin_seconds, unit=unit, capacity=capacity)


def _phases_msg(req_id: int, *, filter: P.TaskFilter, limit: int, after_id: int,
                since: float | None, until: float | None) -> P.Msg:
    return P.ListPhases(req_id=req_id, filter=filter, limit=limit, after_id=after_id,
                        since=since, until=until)
