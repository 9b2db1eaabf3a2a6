"""What a client says while it waits: one line per kind of wait. Pure.

``Task.result()``, ``Client.wait()`` and ``tidewater submit --wait`` wait
for tasks that may never start -- the site has nothing connected, a parent
is stuck -- and silence is the worst answer (a dead pilot leaving ``wait()``
hanging with no word is the complaint users of such systems make most).
Every ``Timeouts.progress`` seconds the client reads the tasks it still
waits for and their sites' health, and :func:`waiting_notices` turns them
into sentences such as::

    still waiting after 60 s for 3 tasks: 3 READY on site aps -- site aps is
    down: no agent and no pilot connected: tasks will wait

A notice is *trouble* when a site it names is down or degraded.
"""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple

from .proto import SiteInfo, TaskInfo


class Notice(NamedTuple):
    text: str
    trouble: bool
    """A site the tasks wait on is down or degraded: worth a warning, not just a line."""


def waiting_notices(waiting: int, infos: list[TaskInfo], sites: list[SiteInfo],
                    waited: float) -> list[Notice]:
    """Sentences about ``waiting`` tasks, ``infos`` being (some of) them as they are now."""
    if waiting <= 0:
        return []
    by_site = {s.name: s for s in sites}
    counts = Counter((i.site, i.state) for i in infos)
    per_site: dict[str, list[str]] = {}
    for (site, state), n in sorted(counts.items()):
        per_site.setdefault(site, []).append(f"{n} {state}")
    secs = f"{waited:.1f}" if waited < 10 else f"{waited:.0f}"
    head = f"still waiting after {secs} s for {waiting} task{'s' if waiting != 1 else ''}"
    if not per_site:
        return [Notice(head, False)]
    out: list[Notice] = []
    for site, parts in per_site.items():
        s = by_site.get(site)
        text = f"{head}: {', '.join(parts)} on site {site}"
        trouble = s is not None and s.health in ("down", "degraded")
        if s is not None and s.health and s.health != "up":
            text += f" -- site {site} is {s.health}: {s.health_reason}"
        out.append(Notice(text, trouble))
    return out
