"""PNG and SVG plots of the throughput and utilisation reports (matplotlib, optional).

matplotlib is the ``plots`` extra (``pip install 'tidewater-hpc[plots]'``); it
is imported only when a plot is drawn, with the Agg backend (no display).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from .errors import ConfigError
from .latency import Series

FORMATS = (".png", ".svg")


def plot_series(series: dict[str, Series], path: str | Path, *, title: str, ylabel: str,
                step: bool = False) -> Path:
    """Draw one line per site of ``series`` (time, value) into ``path`` (.png or .svg).

    Raises ConfigError if matplotlib is not installed or the suffix is neither,
    OSError if the file cannot be written. Blocking (run it off the event loop).
    """
    out = Path(path)
    if out.suffix.lower() not in FORMATS:
        raise ConfigError(f"cannot plot to {out.name!r}: name a .png or .svg file")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.dates as mdates
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("plots need matplotlib: pip install 'tidewater-hpc[plots]'") from None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    try:
        for site, points in sorted(series.items()):
            times = mdates.date2num(  # type: ignore[no-untyped-call]
                [datetime.fromtimestamp(t) for t, _ in points])
            values = [v for _, v in points]
            if step:
                ax.step(times, values, where="post", label=site)
            else:
                ax.plot(times, values, label=site)
        ax.xaxis_date()
        ax.set_title(title)
        ax.set_xlabel("time")
        ax.set_ylabel(ylabel)
        if series:
            ax.legend(title="site")
        ax.grid(True, alpha=0.3)
        fig.autofmt_xdate()
        fig.tight_layout()
        fig.savefig(out, format=out.suffix.lower().lstrip("."))
    finally:
        plt.close(fig)
    return out
