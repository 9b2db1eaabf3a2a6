"""The demo's analysis: find and measure peaks in synthetic area-detector frames.

* :func:`simulate` (on the instrument's side, the client): one frame of
  detector counts (``uint16``), Poisson noise on a flat background plus a few
  Gaussian Bragg-like peaks, and where those peaks really are;
* :func:`analyze` (a function app, in a pilot's warm worker): label the
  connected regions above a noise threshold (:func:`scipy.ndimage.label`),
  measure each one's centroid and integrated intensity from its own pixels
  (:func:`find_peaks`), write them to ``<out_dir>/frame-<index>.json`` and
  return them;
* :func:`reduce` (a function app, child of every ``analyze`` task): merge
  those files into ``summary.json`` in its work directory (the task's
  output) and return the summary;
* :func:`match` (the client's check): how many true peaks were found where
  they are.

Everything is vectorised: a 256 x 256 frame takes about 2 ms, so a round
trip through Tidewater is a visible share of a task, as with real fast
analyses. scipy is the ``demo`` extra (``pip install
'tidewater-hpc[demo]'``), imported only where a frame is analysed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

BACKGROUND = 5.0
"""Mean counts per pixel away from the peaks."""


def simulate(index: int, size: int = 256) -> tuple[npt.NDArray[np.uint16], npt.NDArray[np.float64]]:
    """Frame ``index`` (its random seed) of ``size`` x ``size`` pixels, and its peaks' true
    ``(y, x)`` centres, one row per peak (3 to 11 peaks)."""
    rng = np.random.default_rng(index)
    expected = np.full((size, size), BACKGROUND)
    n = int(rng.integers(3, 12))
    centres = rng.uniform(8, size - 8, (n, 2))
    amps = rng.uniform(200, 800, n)
    sigmas = rng.uniform(1.2, 2.5, n)
    r = 12  # a peak is drawn within +-12 px of its centre: past 4.8 sigma it adds nothing
    for (cy, cx), amp, sigma in zip(centres, amps, sigmas, strict=True):
        y0, x0 = max(0, int(cy) - r), max(0, int(cx) - r)
        yy, xx = np.ogrid[y0:min(size, int(cy) + r + 1), x0:min(size, int(cx) + r + 1)]
        expected[yy, xx] += amp * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    frame = np.minimum(rng.poisson(expected), np.iinfo(np.uint16).max).astype(np.uint16)
    return frame, centres


def find_peaks(frame: npt.NDArray[np.integer[Any]], threshold_sigma: float = 8.0,
               min_pixels: int = 3) -> dict[str, Any]:
    """Connected regions of at least ``min_pixels`` pixels whose counts exceed the
    background by ``threshold_sigma`` times the noise, in a frame of detector counts
    (non-negative integers).

    Returns ``{"centroids": (n, 2) array of (y, x), "intensity": (n,) array of counts
    above the background, "pixels": (n,) array}``. Raises ``ValueError`` for a frame
    that is not of non-negative integer counts.
    """
    from scipy import ndimage

    if frame.ndim != 2 or not np.issubdtype(frame.dtype, np.integer) or (
            frame.size and int(frame.min()) < 0):
        raise ValueError(f"a frame is a 2-d array of non-negative integer counts, "
                         f"not {frame.ndim}-d {frame.dtype}")
    # Counts are integers, so their histogram gives the quantiles without a sort.
    hist = np.bincount(frame.ravel())
    cum = np.cumsum(hist)
    background = int(np.searchsorted(cum, (frame.size + 1) // 2))  # the median count
    p90 = int(np.searchsorted(cum, 0.9 * frame.size))
    below = hist[:p90]  # the pixels under the 90th percentile: no peak in them
    values = np.arange(p90, dtype=np.float64)
    mean = float(values @ below) / max(1, int(below.sum()))
    noise = (float(((values - mean) ** 2) @ below) / max(1, int(below.sum()))) ** 0.5
    labels, n = ndimage.label(frame > background + threshold_sigma * noise)
    # Moments of each region from its own pixels only: a frame is mostly background.
    ys, xs = np.nonzero(labels)
    region = labels[ys, xs]
    signal = frame[ys, xs] - float(background)
    pixels = np.bincount(region, minlength=n + 1)
    total = np.bincount(region, weights=signal, minlength=n + 1)
    keep = np.flatnonzero(pixels >= min_pixels)
    keep = keep[keep > 0]  # label 0 is the background; a lone hot pixel is noise
    centroids = np.stack([np.bincount(region, weights=signal * ys, minlength=n + 1)[keep],
                          np.bincount(region, weights=signal * xs, minlength=n + 1)[keep]],
                         axis=1) / total[keep, None]
    return {"centroids": centroids.astype(np.float64), "intensity": total[keep],
            "pixels": pixels[keep].astype(np.int64)}


def analyze(frame: npt.NDArray[Any], index: int, out_dir: str) -> dict[str, Any]:
    """Find the peaks of frame ``index``, write them to ``<out_dir>/frame-<index>.json``
    (atomically) and return them (:func:`find_peaks`' arrays)."""
    peaks = find_peaks(frame)
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".frame-{index}.json.{os.getpid()}"
    tmp.write_text(json.dumps({"index": index, **{k: v.tolist() for k, v in peaks.items()}}))
    tmp.replace(d / f"frame-{index}.json")
    return peaks


def reduce(out_dir: str, expect: int) -> dict[str, Any]:
    """Merge the ``expect`` frame results in ``out_dir`` into ``summary.json`` (in the
    current directory: the task's work directory) and return the summary.

    Raises ``ValueError`` if there are not exactly ``expect`` results.
    """
    results = [json.loads(p.read_text()) for p in sorted(Path(out_dir).glob("frame-*.json"))]
    if len(results) != expect:
        raise ValueError(f"expected {expect} frame results in {out_dir}, found {len(results)}")
    counts = [len(r["intensity"]) for r in results]
    intensity = [i for r in results for i in r["intensity"]]
    summary = {
        "frames": len(results),
        "peaks": sum(counts),
        "peaks_per_frame": {"min": min(counts, default=0), "max": max(counts, default=0),
                            "mean": round(sum(counts) / len(results), 3) if results else 0.0},
        "mean_peak_intensity": round(sum(intensity) / len(intensity), 1) if intensity else 0.0,
    }
    Path("summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def match(found: npt.NDArray[np.float64], truth: npt.NDArray[np.float64],
          tolerance: float = 2.0) -> int:
    """How many true centres have a found centroid within ``tolerance`` pixels (each found
    centroid counted once at most)."""
    if not len(found) or not len(truth):
        return 0
    dist = np.hypot(*(truth[:, None, :] - found[None, :, :]).transpose(2, 0, 1))
    pairs = sorted(np.argwhere(dist <= tolerance).tolist(), key=lambda ij: dist[ij[0], ij[1]])
    true_used: set[int] = set()
    found_used: set[int] = set()
    for i, j in pairs:  # closest pairs first, each centre and each centroid used once
        if i not in true_used and j not in found_used:
            true_used.add(i)
            found_used.add(j)
    return len(true_used)
