"""A small real analysis: find and measure peaks in synthetic detector frames.

``python -m tidewater.examples.frames analyze --seed 3 --size 256 --out-dir DIR``
simulates one area-detector frame (Poisson background plus Gaussian Bragg-like
peaks), finds the peaks above a noise threshold, and writes their count,
centroids and integrated intensity to ``DIR/frame-<seed>.json``.

``python -m tidewater.examples.frames reduce --dir DIR --expect N`` merges
every frame's result into ``DIR/summary.json`` and prints it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def simulate(seed: int, size: int) -> tuple[np.ndarray, int]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    frame = rng.poisson(5.0, (size, size)).astype(np.float64)
    n_peaks = int(rng.integers(3, 12))
    for _ in range(n_peaks):
        cy, cx = rng.uniform(8, size - 8, 2)
        amp = rng.uniform(200, 800)
        sigma = rng.uniform(1.2, 2.5)
        frame += amp * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    return frame, n_peaks


def find_peaks(frame: np.ndarray, threshold_sigma: float = 8.0) -> list[dict[str, float]]:
    background = float(np.median(frame))
    noise = float(np.std(frame[frame < np.percentile(frame, 90)]))
    mask = frame > background + threshold_sigma * noise
    # Label connected regions with a simple flood fill (4-connectivity).
    labels = np.zeros(frame.shape, dtype=np.int32)
    peaks: list[dict[str, float]] = []
    for y, x in zip(*np.nonzero(mask), strict=True):
        if labels[y, x]:
            continue
        label = len(peaks) + 1
        stack = [(int(y), int(x))]
        labels[y, x] = label
        pix: list[tuple[int, int]] = []
        while stack:
            cy, cx = stack.pop()
            pix.append((cy, cx))
            for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                if (0 <= ny < frame.shape[0] and 0 <= nx < frame.shape[1]
                        and mask[ny, nx] and not labels[ny, nx]):
                    labels[ny, nx] = label
                    stack.append((ny, nx))
        ys = np.array([p[0] for p in pix])
        xs = np.array([p[1] for p in pix])
        w = frame[ys, xs] - background
        peaks.append({
            "y": float((ys * w).sum() / w.sum()),
            "x": float((xs * w).sum() / w.sum()),
            "intensity": float(w.sum()),
            "pixels": len(pix),
        })
    return peaks


def analyze(seed: int, size: int, out_dir: Path) -> dict[str, object]:
    frame, truth = simulate(seed, size)
    peaks = find_peaks(frame)
    result: dict[str, object] = {
        "seed": seed,
        "peaks_found": len(peaks),
        "peaks_simulated": truth,
        "total_intensity": sum(p["intensity"] for p in peaks),
        "peaks": peaks,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".frame-{seed}.json.tmp"
    tmp.write_text(json.dumps(result))
    tmp.replace(out_dir / f"frame-{seed}.json")
    return result


def reduce(directory: Path, expect: int, summary_path: Path | None = None) -> dict[str, object]:
    results = [json.loads(p.read_text()) for p in sorted(directory.glob("frame-*.json"))]
    if len(results) != expect:
        raise SystemExit(f"expected {expect} frame results in {directory}, found {len(results)}")
    found = sum(r["peaks_found"] for r in results)
    simulated = sum(r["peaks_simulated"] for r in results)
    summary = {
        "frames": len(results),
        "peaks_found": found,
        "peaks_simulated": simulated,
        "recall": found / simulated if simulated else 1.0,
        "mean_intensity_per_frame": sum(r["total_intensity"] for r in results) / len(results),
    }
    (summary_path or directory / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="frames")
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("analyze")
    a.add_argument("--seed", type=int, required=True)
    a.add_argument("--size", type=int, default=256)
    a.add_argument("--out-dir", type=Path, required=True)
    r = sub.add_parser("reduce")
    r.add_argument("--dir", type=Path, required=True)
    r.add_argument("--expect", type=int, required=True)
    r.add_argument("--summary", type=Path, default=None,
                   help="where to write summary.json (default: in --dir)")
    args = ap.parse_args(argv)
    if args.cmd == "analyze":
        res = analyze(args.seed, args.size, args.out_dir)
        print(json.dumps({k: v for k, v in res.items() if k != "peaks"}))  # noqa: T201
    else:
        print(json.dumps(reduce(args.dir, args.expect, args.summary)))  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
