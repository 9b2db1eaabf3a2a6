"""An XPCS analysis: the intensity autocorrelation g2 of a stack of speckle frames.

* :func:`simulate` (on the instrument's side, the client): an HDF5 stack of
  speckle frames (``uint16`` photon counts) whose g2 is known in closed form,
  the true correlation time and contrast stored as attributes;
* :func:`analyse` (a function app, in a pilot's warm worker, in the task's
  work directory where the stack was staged in): g2 per ring of an ROI mask
  by a published correlator, ``correlator_dense_reference`` of the
  ``xpcs-correlator`` package (``import xpcscorr``, MIT licence, ESRF), not one
  written here; a fit of the correlation time, checked against the simulated
  one; everything written to an HDF5 file for staging out.

The simulation. Each frame's complex field on the detector is
``E_t = ifft2(A * Z_t)``: ``A`` a disc in Fourier space (the speckle size,
about ``size / (2 * radius)`` pixels) and ``Z_t`` one complex Gaussian
AR(1) process per Fourier mode, ``Z_t = a Z_{t-1} + sqrt(1 - a^2) xi_t`` with
``a = exp(-dt / tau)``, started from its stationary law. Every pixel's field
is a sum of such processes with the same ``a``, so it is a stationary
circular Gaussian process with ``g1(t) = exp(-t / tau)``, and by the Siegert
relation ``|E|^2`` has ``g2(t) = 1 + exp(-2 t / tau)``. An incoherent flat
background ``b`` (in units of the mean speckle intensity) lowers the
contrast to ``beta = 1 / (1 + b)^2``; Poisson counting noise is independent
from frame to frame, so it adds nothing to g2 at lags of one frame or more.
Hence ``g2(t) = 1 + beta * exp(-2 t / tau)``, what :func:`analyse` fits.

The dynamics are the same at every q (no diffusion law): each ring of the ROI
mask must give the same ``tau``, which the analysis checks ring by ring too.

h5py, xpcs-correlator and scipy (for the fit) are the ``xpcs`` extra (``pip
install 'tidewater-hpc[xpcs]'``), imported only where a stack is written, read
or fitted.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

TOLERANCE = 0.1
"""The largest relative error of the correlation time fitted to the ring-averaged g2
that :func:`analyse` accepts.

Measured over the default stack (500 frames of 128 x 128, contrast 0.4, 20 photons
per pixel), 160 runs (seeds) at ``tau`` of 5, 10 and 20 frames: the error had a
median of about 1 %, a standard deviation of 0.6 to 1 % (growing with ``tau``: fewer
independent decays in the stack) and was 4.3 % at worst. So a correct analysis passes
with more than twice the worst error seen, ten standard deviations, while the mistakes
this check is for are off by a factor of two or more:
lags in frames taken as seconds, ``exp(-t / tau)`` fitted for ``exp(-2 t / tau)``
(the field's decay for the intensity's), the wrong stack.
"""

RING_TOLERANCE = 0.25
"""The same for each ring on its own: a ring has a fraction of the pixels, so its fit is
about twice as noisy. The worst of each run's four rings was off by 3 to 6 % at the
median and by 12.8 % at worst in the same 160 runs."""

DATASET = "frames"
"""Where in the HDF5 file the stack is, (frames, y, x) of ``uint16`` counts."""


def simulate(path: str | Path, frames: int = 500, size: int = 128, tau: float = 0.1,
             dt: float = 0.01, beta: float = 0.4, counts: float = 20.0,
             speckle: float = 3.0, seed: int = 0) -> Path:
    """Write a stack of ``frames`` speckle frames of ``size`` x ``size`` pixels to the
    HDF5 file ``path`` (dataset ``frames``, ``uint16`` counts) and return its path.

    ``tau`` is the true correlation time (seconds) of g2, ``dt`` the time between
    frames (seconds), ``beta`` the speckle contrast (0 < beta <= 1), ``counts`` the mean
    photons per pixel per frame, ``speckle`` the speckle size in pixels. The dataset's
    attributes hold ``tau``, ``beta``, ``dt`` and ``seed``. The same arguments write the
    same frames. Raises ``ValueError`` for a parameter out of range.
    """
    import h5py

    if not (frames >= 2 and size >= 8 and tau > 0 and dt > 0 and 0 < beta <= 1
            and counts > 0 and 1 <= speckle <= size / 4):
        raise ValueError(f"cannot simulate frames={frames} size={size} tau={tau} dt={dt} "
                         f"beta={beta} counts={counts} speckle={speckle}: need at least 2 "
                         f"frames of 8 x 8, tau, dt and counts > 0, 0 < beta <= 1 and "
                         f"1 <= speckle <= size / 4")
    rng = np.random.default_rng(seed)
    k = np.fft.fftfreq(size) * size
    aperture = np.hypot(k[:, None], k[None, :]) <= size / (2 * speckle)
    modes = int(aperture.sum())
    a = float(np.exp(-dt / tau))
    innovation = float(np.sqrt(1.0 - a * a))
    # ifft2 of unit-variance modes gives a field of variance modes / size^4: rescale so
    # the speckle intensity has mean 1 before the background and the count rate.
    scale = size * size / np.sqrt(modes)
    background = 1.0 / np.sqrt(beta) - 1.0
    gain = counts / (1.0 + background)

    def noise() -> npt.NDArray[np.complex128]:
        z = np.empty(modes, np.complex128)
        z.real, z.imag = rng.standard_normal((2, modes)) / np.sqrt(2.0)
        return z

    z = noise()
    field = np.zeros((size, size), np.complex128)
    stack = np.empty((frames, size, size), np.uint16)
    for t in range(frames):
        if t:
            z = a * z + innovation * noise()
        field[aperture] = z
        speckles = np.abs(np.fft.ifft2(field) * scale) ** 2
        stack[t] = np.minimum(rng.poisson(gain * (speckles + background)),
                              np.iinfo(np.uint16).max)
    out = Path(path)
    with h5py.File(out, "w") as f:
        ds = f.create_dataset(DATASET, data=stack, chunks=(1, size, size))
        ds.attrs.update({"tau": tau, "beta": beta, "dt": dt, "seed": seed,
                         "counts": counts, "speckle": speckle})
    return out


def rings(shape: tuple[int, int], n: int = 4, beamstop: float = 0.1) -> npt.NDArray[np.int32]:
    """An ROI mask of ``n`` concentric rings (labels 1..n, 0 outside) about the centre of
    a frame of ``shape`` (y, x), from ``beamstop`` of the shorter half-width out to it."""
    h, w = shape
    yy, xx = np.indices((h, w))
    r = np.hypot(yy - (h - 1) / 2, xx - (w - 1) / 2) / (min(h, w) / 2)
    edges = np.linspace(beamstop, 1.0, n + 1)
    label = np.digitize(r, edges)
    return np.where((r >= beamstop) & (r < 1.0), label, 0).astype(np.int32)


def fit_g2(lags: npt.NDArray[np.float64], g2: npt.NDArray[np.float64],
           err: npt.NDArray[np.float64] | None = None) -> tuple[float, float]:
    """``(tau, beta)`` of ``g2 = 1 + beta * exp(-2 * lag / tau)`` fitted by least squares
    (weighted by ``err`` where given). Raises ``ValueError`` if the fit does not converge."""
    from scipy.optimize import curve_fit

    def model(t: npt.NDArray[np.float64], tau: float, beta: float) -> Any:
        return 1.0 + beta * np.exp(-2.0 * t / tau)

    ok = np.isfinite(g2) & (np.isfinite(err) & (err > 0) if err is not None else True)
    # A first guess from where g2 - 1 falls below 1/e of its first value.
    first = float(g2[ok][0] - 1.0)
    below = np.flatnonzero(g2[ok] - 1.0 < first / np.e)
    guess = float(lags[ok][below[0]] if len(below) else lags[ok][-1]) * 2.0
    try:
        (tau, beta), _ = curve_fit(model, lags[ok], g2[ok], p0=(guess, max(first, 1e-3)),
                                   sigma=None if err is None else err[ok],
                                   bounds=((0.0, 0.0), (np.inf, 2.0)))
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"the fit of g2 over {int(ok.sum())} lags did not converge: "
                         f"{exc}") from exc
    return float(tau), float(beta)


def analyse(stack: str = "stack.h5", out: str = "g2.h5", rings_n: int = 4,
            tolerance: float = TOLERANCE,
            ring_tolerance: float = RING_TOLERANCE) -> dict[str, Any]:
    """g2 of the frames in the HDF5 file ``stack`` (as :func:`simulate` writes it) in
    ``rings_n`` rings, by ``xpcscorr.correlator_dense_reference``; the fitted correlation
    time and contrast; all written to the HDF5 file ``out`` (written whole under another
    name, then renamed). Relative paths are in the current directory: a function task's
    work directory, where its inputs were staged in.

    Returns ``{"tau_fit", "tau_true", "beta_fit", "beta_true", "rel_error", "frames",
    "size", "seconds"}`` (``rel_error`` of ``tau``; ``seconds`` of the whole analysis).
    Raises ``ValueError`` for a file without such a stack, and if the fitted ``tau`` of the ring-averaged g2 is off the
    simulated one by more than ``tolerance`` (relative), or that of any ring by more than
    ``ring_tolerance``: ``out`` is written first, so the failed result can be looked at.
    """
    import h5py
    import xpcscorr

    start = time.perf_counter()
    with h5py.File(stack, "r") as f:
        ds = f.get(DATASET)
        missing = [k for k in ("tau", "beta", "dt") if ds is None or k not in ds.attrs]
        if ds is None or missing or ds.ndim != 3 or ds.shape[0] < 4:
            raise ValueError(
                f"{stack} is not a stack as simulate() writes it: it needs a dataset "
                f"'{DATASET}' of at least 4 frames (frames, y, x) with the attributes tau, "
                f"beta and dt; found {'no dataset' if ds is None else f'shape {ds.shape}'}"
                f"{', no ' + ', '.join(missing) if missing and ds is not None else ''}")
        frames = np.asarray(ds[()])
        tau_true, beta_true, dt = (float(ds.attrs[k]) for k in ("tau", "beta", "dt"))
    n, size = frames.shape[0], frames.shape[1]
    roimask = rings((frames.shape[1], frames.shape[2]), rings_n)
    res = xpcscorr.correlator_dense_reference(frames, roimask)
    g2 = np.asarray(res.g2, np.float64)  # (ring, lag): lags of 1 .. n - 1 frames
    err = np.asarray(res.g2_err, np.float64)
    lags = np.arange(1, n, dtype=np.float64) * dt
    # Fit up to half the stack: past it fewer than n/2 frame pairs make each point.
    use = slice(0, max(2, n // 2))
    weights = np.bincount(roimask.ravel(), minlength=rings_n + 1)[1:].astype(np.float64)
    g2_mean = weights @ g2 / weights.sum()
    err_mean = np.sqrt((weights**2) @ err**2) / weights.sum()
    tau_fit, beta_fit = fit_g2(lags[use], g2_mean[use], err_mean[use])
    per_ring = np.array([fit_g2(lags[use], g2[i, use], err[i, use]) for i in range(rings_n)])
    rel_error = abs(tau_fit - tau_true) / tau_true
    ring_errors = np.abs(per_ring[:, 0] - tau_true) / tau_true
    seconds = time.perf_counter() - start

    target = Path(out)
    tmp = target.with_name(f".{target.name}.partial")
    with h5py.File(tmp, "w") as f:
        f["lag"] = lags
        f["g2"] = g2
        f["g2_err"] = err
        f["g2_mean"] = g2_mean
        f["roimask"] = roimask
        f["ring_tau_fit"] = per_ring[:, 0]
        f["ring_beta_fit"] = per_ring[:, 1]
        f.attrs.update({"tau_fit": tau_fit, "beta_fit": beta_fit, "tau_true": tau_true,
                        "beta_true": beta_true, "dt": dt, "rel_error": rel_error,
                        "fit_lags": use.stop, "tolerance": tolerance,
                        "ring_tolerance": ring_tolerance,
                        "correlator": "xpcscorr.correlator_dense_reference",
                        "xpcscorr_version": str(xpcscorr.version)})
    tmp.replace(target)
    if rel_error > tolerance or (ring_errors > ring_tolerance).any():
        worst = int(np.argmax(ring_errors))
        raise ValueError(
            f"the fitted correlation time of {stack} is off: {tau_fit:.4g} s against "
            f"{tau_true:.4g} s simulated ({rel_error:.1%}); worst ring {worst + 1}: "
            f"{per_ring[worst, 0]:.4g} s ({ring_errors[worst]:.1%}); tolerances "
            f"{tolerance:.0%}, {ring_tolerance:.0%} per ring. g2 and the fits are in {out}")
    return {"tau_fit": tau_fit, "tau_true": tau_true, "beta_fit": beta_fit,
            "beta_true": beta_true, "rel_error": rel_error, "frames": int(n),
            "size": int(size), "seconds": seconds}
