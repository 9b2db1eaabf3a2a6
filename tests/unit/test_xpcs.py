"""The XPCS example (tidewater.examples.xpcs): the correlation time fitted to g2 from the
published correlator is the one simulated, and a stack that lies about it is refused."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from tidewater.examples import xpcs


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in ``tmp_path``, as a function task runs in its work directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_simulated_stack_holds_counts_and_the_truth(tmp_path: Path) -> None:
    a = xpcs.simulate(tmp_path / "a.h5", frames=50, size=64, tau=0.1, seed=3)
    b = xpcs.simulate(tmp_path / "b.h5", frames=50, size=64, tau=0.1, seed=3)
    with h5py.File(a) as fa, h5py.File(b) as fb:
        stack = fa["frames"][()]
        assert stack.dtype == np.uint16 and stack.shape == (50, 64, 64)
        np.testing.assert_array_equal(stack, fb["frames"][()])  # the seed decides
        assert fa["frames"].attrs["tau"] == 0.1 and fa["frames"].attrs["beta"] == 0.4
    assert 15 < stack.mean() < 25  # 20 photons per pixel per frame on average
    with pytest.raises(ValueError, match="cannot simulate"):
        xpcs.simulate(tmp_path / "c.h5", beta=1.5)


@pytest.mark.parametrize(("tau", "seed"), [(0.05, 11), (0.2, 12)])
def test_analyse_recovers_the_simulated_correlation_time(
    in_tmp: Path, tau: float, seed: int,
) -> None:
    xpcs.simulate("stack.h5", frames=500, size=128, tau=tau, dt=0.01, seed=seed)
    got = xpcs.analyse("stack.h5", "g2.h5")
    assert got["tau_true"] == tau and got["frames"] == 500 and got["size"] == 128
    assert got["rel_error"] <= xpcs.TOLERANCE
    assert got["tau_fit"] == pytest.approx(tau, rel=xpcs.TOLERANCE)
    assert got["beta_fit"] == pytest.approx(0.4, rel=0.15)
    with h5py.File(in_tmp / "g2.h5") as f:
        assert f["g2"].shape == (4, 499) and f["lag"].shape == (499,)
        assert f.attrs["tau_fit"] == got["tau_fit"] and f.attrs["tau_true"] == tau
        # The correlator's g2 itself, not only the fit: 1 + beta at a lag of one frame
        # (less the decay over that frame), 1 after many correlation times.
        g2 = f["g2_mean"][()]
        assert g2[0] == pytest.approx(1 + 0.4 * np.exp(-2 * 0.01 / tau), abs=0.03)
        assert g2[200] == pytest.approx(1.0, abs=0.03)
    assert not list(in_tmp.glob(".*partial"))


def test_a_fit_off_the_truth_is_an_error_that_says_by_how_much(in_tmp: Path) -> None:
    xpcs.simulate("stack.h5", frames=300, size=96, tau=0.1, seed=5)
    with h5py.File("stack.h5", "r+") as f:
        f["frames"].attrs["tau"] = 0.2  # the stack claims twice its real correlation time
    with pytest.raises(ValueError, match=r"stack.h5 is off: .* against 0.2 s simulated"):
        xpcs.analyse("stack.h5", "g2.h5")
    with h5py.File("g2.h5") as f:  # written before the check, for a look at what failed
        assert f.attrs["tau_fit"] == pytest.approx(0.1, rel=xpcs.TOLERANCE)


def test_fit_of_an_exact_curve_gives_its_parameters() -> None:
    lags = np.arange(1, 200) * 0.01
    tau, beta = xpcs.fit_g2(lags, 1 + 0.3 * np.exp(-2 * lags / 0.15))
    assert tau == pytest.approx(0.15, rel=1e-6) and beta == pytest.approx(0.3, rel=1e-6)


def test_rings_are_concentric_and_leave_the_beamstop_and_corners_out() -> None:
    mask = xpcs.rings((64, 80), 4)
    assert mask.shape == (64, 80) and set(np.unique(mask)) == {0, 1, 2, 3, 4}
    assert mask[32, 40] == 0 and mask[0, 0] == 0  # beamstop, corner
    assert mask[32, 40 + 4] == 1 and mask[32, 40 + 30] == 4


def test_a_file_that_is_not_a_stack_is_refused_saying_what_is_missing(in_tmp: Path) -> None:
    with h5py.File("other.h5", "w") as f:
        f["frames"] = np.zeros((10, 16, 16), np.uint16)
    with pytest.raises(ValueError, match=r"other.h5 is not a stack .* shape \(10, 16, 16\), "
                                         r"no tau, beta, dt"):
        xpcs.analyse("other.h5", "g2.h5")
    with h5py.File("empty.h5", "w"):
        pass
    with pytest.raises(ValueError, match="found no dataset"):
        xpcs.analyse("empty.h5", "g2.h5")
    assert not Path("g2.h5").exists()
