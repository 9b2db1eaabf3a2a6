"""``tidewater demo`` (what ``scripts/demo.sh`` runs), at a reduced size.

It must pass, print each figure it promises with a sane value (never a timing
threshold: this runs beside other work), give its batch job back, and fail
with exit code 1 when a frame cannot be analysed. The demo embeds its own
SQLite controller, so it does not run once per store like the other
integration tests.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import anyio
import pytest

from .procs import PY

pytestmark = pytest.mark.integration

FRAMES, BURST, WARM_UP = 8, 20, 10


async def demo(tmp_path: Path, *args: str, **env: str) -> tuple[int, str]:
    r = await anyio.run_process(
        [PY, "-m", "tidewater", "demo", "--frames", str(FRAMES), "--burst", str(BURST),
         "--keep", str(tmp_path / "demo"), *args],
        # Wide enough that no table row wraps, so each figure is on its label's line.
        env={**os.environ, "TIDEWATER_HOME": str(tmp_path / "home"), "COLUMNS": "200", **env},
        check=False)
    return r.returncode, r.stderr.decode()


def figure(out: str, label: str) -> list[float]:
    """The numbers in the value cell of the table row whose label starts with ``label``."""
    m = re.search(rf"│ {re.escape(label)}[^│]*│\s*([^│]*?)\s*│", out)
    assert m, f"no row {label!r} in:\n{out}"
    return [float(x) for x in re.findall(r"\d+(?:\.\d+)?", m.group(1))]


async def test_demo_prints_every_figure_and_gives_its_batch_job_back(tmp_path: Path) -> None:
    code, out = await demo(tmp_path)
    assert code == 0, out
    assert re.search(r"demo passed in \d+\.\d s", out)

    # The idle site's reaction, in order.
    reaction = [figure(out, label)[-1] for label in (
        "agent's autoscaler asked for batch job", "the local scheduler's submit command",
        "the job's first pilot process started", "that pilot connected",
        "the first frame started")]
    assert reaction == sorted(reaction) and reaction[0] >= 0

    median, p99 = figure(out, "one frame's analysis in a warm worker")
    assert 0 < median <= p99
    # 2 pilots x 1 core; one pilot may have done every frame before the other connected.
    assert len(figure(out, "a worker's first frame")) in (1, 2)
    first_to_last = figure(out, "all frames: first started -> last finished (s)")
    assert first_to_last[-1] > 0
    if "frames analysed per second" in out:  # only with 10 frames after both workers warm
        assert figure(out, "frames analysed per second")[-1] > 0
    wait_median, wait_max = figure(out, "submit -> start, median / max (s): queueing")
    assert 0 < wait_median <= wait_max
    simulated, found, matched = figure(out, "peaks simulated / found")
    assert matched <= min(simulated, found) and matched >= 0.9 * simulated
    assert "JOB_FINISHED" in out.split("reduce, the child of every frame", 1)[1].split("\n")[0]

    inline = re.search(r"summary.json, reduce's output, returned inline: (.*)", out)
    assert inline, out
    summary = json.loads(inline.group(1))
    assert summary["frames"] == FRAMES and summary["peaks"] == found

    assert "warm round trip: submit() -> result on this client, one task at a time" in out
    p50, p99, worst = figure(out, "round trip p50 / p99 / max (ms)")
    assert 0 < p50 <= p99 <= worst
    assert f"{BURST} no-op function tasks" in out
    assert f"tasks by final state: JOB_FINISHED {FRAMES + 1 + WARM_UP + BURST}\n" in out

    # Its batch job was cancelled on the way out: no pilot is left behind.
    r = await anyio.run_process([PY, "-m", "tidewater.agents.schedulers.localexec", "status",
                                 "--state-dir", str(tmp_path / "demo" / "jobs")])
    states = [json.loads(line)["state"] for line in r.stdout.decode().splitlines()]
    assert states == ["CANCELLED"]


async def test_demo_fails_when_a_frame_cannot_be_analysed(tmp_path: Path) -> None:
    # A scipy that cannot be imported: every frame task fails in its worker.
    broken = tmp_path / "broken" / "scipy"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('this scipy is broken')\n")
    path = os.pathsep.join(p for p in (str(broken.parent), os.environ.get("PYTHONPATH")) if p)
    code, out = await demo(tmp_path, PYTHONPATH=path)
    assert code == 1, out
    assert "demo FAILED" in out
    assert re.search(r"wrong: frame task \d+ FAILED: ImportError: this scipy is broken", out)
    assert re.search(r"wrong: reduce task \d+ FAILED: parent task \d+ failed", out)
