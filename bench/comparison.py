"""The pure part of ``bench/compare.py``: figures, targets, ratios and the one table.

Nothing here measures, sleeps or reads a clock: :func:`rows` and
:func:`markdown` take the figures (system -> figure -> one value per round)
and return text, so ``tests/unit/test_bench_comparison.py`` can check the
ratio direction and the met/missed verdicts on made-up numbers.

Every ratio is **Tidewater's median ÷ the other system's median**, whatever
the figure. Whether a ratio is good therefore depends on the figure's
direction (:attr:`Figure.better`): for times (ms) lower is better, so a
ratio below 1 means Tidewater is faster; for tasks/s higher is better, so a
ratio above 1 means Tidewater is faster.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from common import Spread, median

# System keys, in table order. "tw" is Tidewater on its SQLite store.
TW = "tw"
TW_PG = "tw-pg"
PEERS = ("ppe", "dask", "parsl")
SYSTEMS = (TW, TW_PG, *PEERS)
LABELS = {TW: "Tidewater (SQLite)", TW_PG: "Tidewater (PostgreSQL)",
          "ppe": "ProcessPool(2)", "dask": "Dask", "parsl": "Parsl HTEX"}
SHORT = {TW: "SQLite", TW_PG: "PG", "ppe": "PPE", "dask": "Dask", "parsl": "Parsl"}

Figures = Mapping[str, Mapping[str, Sequence[float]]]  # system -> figure -> values per round


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    unit: str  # "ms" or "tasks/s"
    better: str  # "lower" or "higher"
    digits: int = 2


FIGURES: tuple[Figure, ...] = (
    Figure("noop_rtt_p50", "no-op function: round trip p50", "ms", "lower"),
    Figure("noop_rtt_p99", "no-op function: round trip p99", "ms", "lower"),
    Figure("noop_tput", "no-op function: throughput", "tasks/s", "higher", 0),
    Figure("true_rtt_p50", "`/bin/true`: round trip p50", "ms", "lower"),
    Figure("true_rtt_p99", "`/bin/true`: round trip p99", "ms", "lower"),
    Figure("true_tput", "`/bin/true`: throughput", "tasks/s", "higher", 0),
    Figure("chain_noop", "chain of no-op functions: wall per link", "ms", "lower"),
    Figure("chain_true", "chain of `/bin/true`: wall per link", "ms", "lower"),
    Figure("cpu_ctl_noop", "controller CPU per task, no-op function", "ms", "lower", 3),
    Figure("cpu_pilot_noop", "busier pilot's CPU per task, no-op function", "ms", "lower", 3),
    Figure("cpu_ctl_true", "controller CPU per task, `/bin/true`", "ms", "lower", 3),
    Figure("cpu_pilot_true", "busier pilot's CPU per task, `/bin/true`", "ms", "lower", 3),
)
BY_KEY = {f.key: f for f in FIGURES}


@dataclass(frozen=True)
class Target:
    """``subject``'s median compared with ``bound``: as it is (``ref`` None: an absolute
    bound in the figure's unit) or as a ratio to ``ref``'s median."""

    op: str  # "<=" or ">="
    bound: float
    ref: str | None = None
    subject: str = TW

    def describe(self, unit: str) -> str:
        sign = "≤" if self.op == "<=" else "≥"
        who = "" if self.subject == TW else f"{SHORT[self.subject]} "
        if self.ref is None:
            return f"{who}{sign} {self.bound:g} {unit}"
        return f"{who}{sign} {self.bound:g}× {SHORT[self.ref]}"


def _ratio_targets(op: str, parsl: float, ppe: float | None = None) -> tuple[Target, ...]:
    out = [Target(op, parsl, "parsl")]
    if ppe is not None:
        out.append(Target(op, ppe, "ppe"))
    return tuple(out)


# From the [performance] issue. Throughput of the PostgreSQL store: within 2× of SQLite.
PG_WITHIN_2X = Target(">=", 0.5, TW, subject=TW_PG)
TARGETS: dict[str, tuple[Target, ...]] = {
    "noop_rtt_p50": _ratio_targets("<=", 0.75),
    "noop_rtt_p99": _ratio_targets("<=", 1.0),
    "noop_tput": (*_ratio_targets(">=", 3.0, 0.3), PG_WITHIN_2X),
    "true_rtt_p50": _ratio_targets("<=", 1.0),
    "true_rtt_p99": _ratio_targets("<=", 1.5),
    "true_tput": (*_ratio_targets(">=", 1.5, 0.5), PG_WITHIN_2X),
    "chain_noop": _ratio_targets("<=", 0.75),
    "chain_true": _ratio_targets("<=", 0.75),
    "cpu_ctl_noop": (Target("<=", 0.35),),
    "cpu_pilot_noop": (Target("<=", 0.4),),
    "cpu_ctl_true": (Target("<=", 0.35),),
    "cpu_pilot_true": (Target("<=", 0.4),),
}


def med(figures: Figures, system: str, key: str) -> float:
    """The median over rounds of one system's figure; NaN if it has none."""
    return median([v for v in figures.get(system, {}).get(key, ()) if not math.isnan(v)])


def ratio(figures: Figures, subject: str, ref: str, key: str) -> float:
    """``subject``'s median ÷ ``ref``'s median (NaN if either is missing or ref is 0)."""
    a, b = med(figures, subject, key), med(figures, ref, key)
    if math.isnan(a) or math.isnan(b) or b == 0:
        return math.nan
    return a / b


def judge(figures: Figures, key: str, target: Target, subject: str | None = None
          ) -> tuple[bool | None, float]:
    """(met?, the value compared with the bound); met is None when a figure is missing.

    ``subject`` overrides the target's own (to judge the PostgreSQL store
    against the same target as SQLite).
    """
    who = subject or target.subject
    value = med(figures, who, key) if target.ref is None else \
        ratio(figures, who, target.ref, key)
    if math.isnan(value):
        return None, value
    return (value <= target.bound if target.op == "<=" else value >= target.bound), value


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "missed")


def _ratio_cell(figures: Figures, ref: str, key: str, stores: Sequence[str]) -> str:
    vals = [ratio(figures, s, ref, key) for s in stores]
    if all(math.isnan(v) for v in vals):
        return ""
    return " / ".join("-" if math.isnan(v) else f"{v:.2f}" for v in vals)


def measured(figures: Figures, system: str) -> bool:
    return any(len(v) for v in figures.get(system, {}).values())


def rows(figures: Figures) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the comparison: per figure, each system's median [min-max],
    Tidewater ÷ each peer, PostgreSQL ÷ SQLite, the targets and whether each is met.

    Systems with no figure at all are left out. A ratio cell holds the SQLite
    store's ratio, then " / " and the PostgreSQL store's when that was measured;
    a verdict cell likewise (targets against a peer or an absolute bound are
    judged for each store; "PG ≥ 0.5× SQLite" once).
    """
    systems = [s for s in SYSTEMS if measured(figures, s)]
    stores = [s for s in (TW, TW_PG) if s in systems]
    peers = [p for p in PEERS if p in systems]
    store_names = " / ".join(SHORT[s] for s in stores)
    header = ["figure", "better", *(LABELS[s] for s in systems),
              *(f"TW ÷ {SHORT[p]} ({store_names})" for p in peers)]
    pg_vs_sqlite = TW in systems and TW_PG in systems
    if pg_vs_sqlite:
        header.append("PG ÷ SQLite")
    header += ["target", "met?"]
    out = []
    for fig in FIGURES:
        cells = [f"{fig.label} ({fig.unit})", fig.better]
        for s in systems:
            sp = Spread.of(figures.get(s, {}).get(fig.key, ()))
            cells.append(sp.fmt(fig.digits))
        cells += [_ratio_cell(figures, p, fig.key, stores) for p in peers]
        if pg_vs_sqlite:
            r = ratio(figures, TW_PG, TW, fig.key)
            cells.append("" if math.isnan(r) else f"{r:.2f}")
        targets, verdicts = [], []
        for t in TARGETS.get(fig.key, ()):
            targets.append(t.describe(fig.unit))
            if t.subject != TW:
                verdicts.append(_verdict(judge(figures, fig.key, t)[0]))
            else:
                verdicts.append(" / ".join(_verdict(judge(figures, fig.key, t, s)[0])
                                           for s in stores) or "n/a")
        cells += ["; ".join(targets), "; ".join(verdicts)]
        out.append(cells)
    return header, out


def markdown(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table (``|`` in a cell escaped)."""
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *(line(r) for r in body)])


def note(figures: Figures) -> str:
    """What the ratios and verdicts of :func:`rows` mean, for the stores measured."""
    both = measured(figures, TW) and measured(figures, TW_PG)
    order = (" (first the SQLite store, then after ' / ' the PostgreSQL store)" if both
             else "")
    return ("Medians over rounds, [min-max] across rounds. Ratios are Tidewater's median ÷ "
            f"the peer's median{order}: for ms rows (lower is better) a ratio below 1 means "
            "Tidewater is faster; for tasks/s rows (higher is better) a ratio above 1 means "
            "Tidewater is faster. Targets are the [performance] issue's; 'met?' judges each "
            "one" + (" for each store in the same order." if both else "."))
