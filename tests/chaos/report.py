"""One row per chaos scenario, and the table the suite prints at the end of a run."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Row:
    """What a scenario injected and measured. Times are seconds from the fault."""

    scenario: str
    backend: str
    seed: int
    tasks: int = 0
    faults: list[str] = field(default_factory=list)
    retried: int = 0
    lost: int = 0
    unrecorded_dups: int = 0
    detect: list[float | None] = field(default_factory=list)
    recover: list[float | None] = field(default_factory=list)
    runtime: float = 0.0


def _times(ts: list[float | None]) -> str:
    return " ".join("-" if t is None else f"{t:.2f}" for t in ts) or "-"


HEAD = ("scenario", "backend", "seed", "tasks", "faults injected", "retried", "lost",
        "unrec. dups", "detect s", "recover s", "runtime s")


def cells(r: Row) -> tuple[str, ...]:
    return (r.scenario, r.backend, str(r.seed), str(r.tasks), ", ".join(r.faults) or "-",
            str(r.retried), str(r.lost), str(r.unrecorded_dups), _times(r.detect),
            _times(r.recover), f"{r.runtime:.1f}")


def table(rows: list[Row]) -> str:
    """A Markdown table (it reads as plain text too)."""
    body = [HEAD, *(cells(r) for r in rows)]
    width = [max(len(line[i]) for line in body) for i in range(len(HEAD))]
    out = ["| " + " | ".join(c.ljust(w) for c, w in zip(line, width, strict=True)) + " |"
           for line in body]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in width) + "|")
    return "\n".join(out)
