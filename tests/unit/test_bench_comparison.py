"""bench/comparison.py: the ratio direction and the met/missed verdicts of the one table."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import comparison as cmp  # noqa: E402


def figures(**systems: dict[str, list[float]]) -> dict[str, dict[str, list[float]]]:
    return {name.replace("_", "-"): figs for name, figs in systems.items()}


def cell(header: list[str], row: list[str], column: str) -> str:
    return row[header.index(column)]


def row_of(body: list[list[str]], key: str) -> list[str]:
    label = cmp.BY_KEY[key].label
    (row,) = [r for r in body if r[0].startswith(label)]
    return row


def test_ratio_is_tidewater_over_peer_of_the_medians() -> None:
    f = figures(tw={"noop_tput": [100.0, 300.0, 200.0]}, parsl={"noop_tput": [50.0, 40.0, 60.0]})
    assert cmp.ratio(f, cmp.TW, "parsl", "noop_tput") == pytest.approx(4.0)


def test_ratio_missing_figure_is_nan() -> None:
    f = figures(tw={"noop_tput": [100.0]})
    assert math.isnan(cmp.ratio(f, cmp.TW, "parsl", "noop_tput"))


def test_throughput_above_its_bound_is_met_and_below_is_missed() -> None:
    """Higher is better for tasks/s: 4× Parsl meets "≥ 3× Parsl", 2× misses it."""
    target = cmp.Target(">=", 3.0, "parsl")
    met = figures(tw={"noop_tput": [4000.0]}, parsl={"noop_tput": [1000.0]})
    missed = figures(tw={"noop_tput": [2000.0]}, parsl={"noop_tput": [1000.0]})
    assert cmp.judge(met, "noop_tput", target) == (True, pytest.approx(4.0))
    assert cmp.judge(missed, "noop_tput", target) == (False, pytest.approx(2.0))


def test_round_trip_below_its_bound_is_met_and_above_is_missed() -> None:
    """Lower is better for ms: 0.5× Parsl's p50 meets "≤ 0.75× Parsl", 1.2× misses it."""
    target = cmp.Target("<=", 0.75, "parsl")
    met = figures(tw={"noop_rtt_p50": [1.0]}, parsl={"noop_rtt_p50": [2.0]})
    missed = figures(tw={"noop_rtt_p50": [2.4]}, parsl={"noop_rtt_p50": [2.0]})
    assert cmp.judge(met, "noop_rtt_p50", target)[0] is True
    assert cmp.judge(missed, "noop_rtt_p50", target)[0] is False


def test_absolute_bound_compares_the_value_itself() -> None:
    target = cmp.Target("<=", 0.35)
    assert cmp.judge(figures(tw={"cpu_ctl_true": [0.3]}), "cpu_ctl_true", target)[0] is True
    assert cmp.judge(figures(tw={"cpu_ctl_true": [0.5]}), "cpu_ctl_true", target)[0] is False


def test_target_without_its_peer_is_not_judged() -> None:
    f = figures(tw={"noop_tput": [4000.0]})
    assert cmp.judge(f, "noop_tput", cmp.Target(">=", 3.0, "parsl"))[0] is None


def test_table_states_medians_ratios_and_verdicts() -> None:
    f = figures(
        tw={"noop_tput": [6000.0, 5000.0, 7000.0], "noop_rtt_p50": [3.0, 2.0, 4.0],
            "cpu_ctl_noop": [0.3, 0.3, 0.3]},
        tw_pg={"noop_tput": [2000.0, 2000.0, 2000.0], "noop_rtt_p50": [6.0, 6.0, 6.0],
               "cpu_ctl_noop": [0.4, 0.4, 0.4]},
        ppe={"noop_tput": [10000.0, 10000.0, 10000.0], "noop_rtt_p50": [0.2, 0.2, 0.2]},
        parsl={"noop_tput": [1000.0, 1000.0, 1000.0], "noop_rtt_p50": [2.0, 2.0, 2.0]},
    )
    header, body = cmp.rows(f)
    assert "Dask" not in header  # not measured: no column
    tput = row_of(body, "noop_tput")
    assert cell(header, tput, "Tidewater (SQLite)") == "6000 [5000-7000]"
    assert cell(header, tput, "better") == "higher"
    assert cell(header, tput, "TW ÷ Parsl (SQLite / PG)") == "6.00 / 2.00"
    assert cell(header, tput, "PG ÷ SQLite") == "0.33"
    # ≥ 3× Parsl: SQLite met, PG missed; ≥ 0.3× PPE: SQLite met (0.6), PG missed (0.2);
    # PG within 2× of SQLite: missed (0.33).
    assert cell(header, tput, "target") == "≥ 3× Parsl; ≥ 0.3× PPE; PG ≥ 0.5× SQLite"
    assert cell(header, tput, "met?") == "met / missed; met / missed; missed"

    rtt = row_of(body, "noop_rtt_p50")
    assert cell(header, rtt, "better") == "lower"
    assert cell(header, rtt, "TW ÷ Parsl (SQLite / PG)") == "1.50 / 3.00"
    assert cell(header, rtt, "met?") == "missed / missed"

    cpu = row_of(body, "cpu_ctl_noop")
    assert cell(header, cpu, "target") == "≤ 0.35 ms"
    assert cell(header, cpu, "met?") == "met / missed"


def test_markdown_escapes_pipes() -> None:
    text = cmp.markdown(["a", "b"], [["x|y", "1"]])
    assert text.splitlines() == ["| a | b |", "| --- | --- |", "| x\\|y | 1 |"]


def test_note_names_the_store_order_only_when_both_were_measured() -> None:
    one = figures(tw={"noop_tput": [1.0]})
    both = figures(tw={"noop_tput": [1.0]}, tw_pg={"noop_tput": [1.0]})
    assert "PostgreSQL" not in cmp.note(one)
    assert "then after ' / ' the PostgreSQL store" in cmp.note(both)
