"""Write a run's derived files into its directory: the figures and summary.json.

This is the one place in ``analysis`` that writes files; the CLI (``bufdemo plot``,
``bufdemo report``) and the end of ``bufdemo run`` call it. The tables are never
touched, so both files can be rebuilt from them at any time.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bufdemo.analysis.latency import latency_figure, write_latency
from bufdemo.analysis.load import Run
from bufdemo.analysis.plots import timeline_figure, zoom_figure
from bufdemo.analysis.summary import summarize

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "FIGURE_DPI",
    "FORMATS",
    "RunFigures",
    "save_figures",
    "summary_json",
    "warm_up",
    "write_summary",
]

FIGURE_DPI = 110  # 12x10 in -> 1320x1100 px: legible on a laptop screen, ~200 KB PNG
FORMATS = ("png", "svg")  # PNG to look at, SVG to zoom into or put in a page


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(path)  # a reader never sees half a file


class RunFigures:
    """A run's figures, each built once when first saved (into the run directory by
    default): timeline, zoom, latency, limits (a --netns run), sequence (a --trace run).

    ``bufdemo run`` saves ``timeline.png`` first, right after loading the run: the
    picture the user waits for comes before summary.json and the other figures."""

    def __init__(self, run: Run, out_dir: str | Path | None = None) -> None:
        self.run = run
        self.out = Path(out_dir) if out_dir is not None else run.path
        self.out.mkdir(parents=True, exist_ok=True)
        self._built: dict[str, Figure | None] = {}

    def stems(self) -> list[str]:
        """The figures this run has, in the order they are saved."""
        stems = ["timeline", "zoom", "latency"]
        if "link" in self.run.meta:  # a --netns run: which resource limited the sender
            stems.append("limits")
        if self._figure("sequence") is not None:  # --trace runs only
            stems.append("sequence")
        return stems

    def _figure(self, stem: str) -> Figure | None:
        if stem not in self._built:
            self._built[stem] = _build(stem, self.run)
        return self._built[stem]

    def save(self, stem: str, ext: str) -> Path:
        fig = self._figure(stem)
        if fig is None:
            raise ValueError(f"this run has no {stem} figure")
        path = self.out / f"{stem}.{ext}"
        tmp = path.with_name(f"{stem}.part.{ext}")  # savefig picks the format by suffix
        fig.savefig(tmp, dpi=FIGURE_DPI)
        tmp.replace(path)  # a reader never sees half a file
        return path

    def save_all(
        self, formats: tuple[str, ...] = FORMATS, done: tuple[Path, ...] = ()
    ) -> list[Path]:
        """Every figure in every format (PNGs first), skipping the paths in ``done``."""
        paths = list(done)
        for ext in formats:
            for stem in self.stems():
                if self.out / f"{stem}.{ext}" not in done:
                    paths.append(self.save(stem, ext))
        return paths


def _build(stem: str, run: Run) -> Figure | None:
    if stem == "timeline":
        return timeline_figure(run)
    if stem == "zoom":
        return zoom_figure(run)
    if stem == "latency":
        return latency_figure(run)
    if stem == "limits":
        from bufdemo.analysis.linkplots import limits_figure

        return limits_figure(run)
    if stem == "sequence":
        from bufdemo.analysis.witness import sequence_figure

        return sequence_figure(run)  # None unless the run was traced
    raise ValueError(f"no figure named {stem!r}")


def save_figures(run: Run, out_dir: str | Path | None = None) -> list[Path]:
    """Save every figure of the run as PNG, then as SVG (into the run directory by
    default): timeline, zoom and latency; limits for a --netns run, sequence for a
    --trace run."""
    return RunFigures(run, out_dir).save_all()


def warm_up(draw: bool = True) -> None:
    """Import the analysis and plotting stack (importing this module does) and, if
    ``draw``, draw one small figure with text, so that the first real figure does not
    pay for loading matplotlib's fonts and the Agg renderer. ``bufdemo run`` calls it
    from a thread while its two sides start, and gives the sender the receiver's address
    once it is done."""
    import io

    if not draw:
        return

    from matplotlib.figure import Figure

    fig = Figure(figsize=(2.0, 1.0))
    ax = fig.add_subplot()
    ax.plot([0.0, 1.0], [0.0, 1.0], label="warm-up")
    ax.set_xlabel("time (s)")
    ax.legend()
    fig.savefig(io.BytesIO(), format="png", dpi=FIGURE_DPI)


def _json_ready(value: Any) -> Any:
    """NaN/inf are not JSON: they become null (unknown), like an empty probe cell."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    return value


def summary_json(run: Run) -> str:
    """The summary as the JSON text summary.json holds (also for ``report --json``)."""
    return json.dumps(_json_ready(summarize(run)), indent=2, allow_nan=False) + "\n"


def write_summary(run: Run) -> Path:
    """Write summary.json (and latency.csv) into the run directory; return its path."""
    if not run.sends.empty:
        write_latency(run)
    path = run.path / "summary.json"
    _write_atomic(path, summary_json(run).encode())
    return path
