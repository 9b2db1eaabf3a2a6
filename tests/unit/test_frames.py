"""The demo's analysis (tidewater.examples.frames): the peaks it finds are the ones simulated,
and the reduction refuses an incomplete set of frames."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tidewater.examples import frames as fr


def test_simulated_frames_look_like_detector_counts() -> None:
    frame, truth = fr.simulate(7, size=128)
    again, _ = fr.simulate(7, size=128)
    assert frame.dtype == np.uint16 and frame.shape == (128, 128)
    np.testing.assert_array_equal(frame, again)  # the index is the seed
    assert 3 <= len(truth) <= 11 and truth.shape[1] == 2
    assert 3 < float(np.median(frame)) < 7  # Poisson background of mean 5


def test_peaks_found_are_where_they_were_simulated() -> None:
    simulated = found = matched = 0
    for i in range(40):
        frame, truth = fr.simulate(i)
        peaks = fr.find_peaks(frame)
        n = len(peaks["intensity"])
        assert peaks["centroids"].shape == (n, 2) and peaks["pixels"].shape == (n,)
        assert (peaks["intensity"] > 0).all() and (peaks["pixels"] >= 3).all()
        simulated, found = simulated + len(truth), found + n
        matched += fr.match(peaks["centroids"], truth)
    # Peaks that overlap merge into one region: most, not all, are found.
    assert matched >= 0.9 * simulated and matched >= 0.9 * found


def test_a_frame_of_noise_has_no_peaks() -> None:
    noise = np.random.default_rng(0).poisson(5.0, (256, 256)).astype(np.uint16)
    peaks = fr.find_peaks(noise)
    assert peaks["centroids"].shape == (0, 2) and len(peaks["intensity"]) == 0


def test_match_uses_each_centre_and_each_centroid_once() -> None:
    truth = np.array([[10.0, 10.0], [10.0, 11.0], [50.0, 50.0]])
    assert fr.match(np.array([[10.2, 10.4]]), truth) == 1  # one blob for two close peaks
    assert fr.match(np.array([[10.0, 10.0], [10.0, 11.0], [80.0, 80.0]]), truth) == 2
    assert fr.match(np.zeros((0, 2)), truth) == 0


def test_reduce_merges_the_frames_and_refuses_a_missing_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "results"
    values = [fr.analyze(fr.simulate(i)[0], i, str(out)) for i in range(3)]
    monkeypatch.chdir(tmp_path)  # reduce writes summary.json where it runs: its work directory
    summary = fr.reduce(str(out), 3)
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert summary["frames"] == 3
    assert summary["peaks"] == sum(len(v["intensity"]) for v in values)
    os.unlink(out / "frame-1.json")
    with pytest.raises(ValueError, match="expected 3 frame results .* found 2"):
        fr.reduce(str(out), 3)
