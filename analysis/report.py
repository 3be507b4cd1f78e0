"""Write a run's derived files into its directory: the figures and summary.json.

This is the one place in ``analysis`` that writes files; the CLI (``bufdemo plot``,
``bufdemo report``) and the end of ``bufdemo run`` call it. The tables are never
touched, so both files can be rebuilt from them at any time.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bufdemo.analysis.latency import latency_figure, write_latency
from bufdemo.analysis.load import Run
from bufdemo.analysis.plots import timeline_figure, zoom_figure
from bufdemo.analysis.summary import summarize

__all__ = ["FIGURE_DPI", "save_figures", "summary_json", "write_summary"]

FIGURE_DPI = 110  # 12x10 in -> 1320x1100 px: legible on a laptop screen, ~200 KB PNG


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(path)  # a reader never sees half a file


def save_figures(run: Run, out_dir: str | Path | None = None) -> list[Path]:
    """Save timeline.png/.svg and zoom.png/.svg (into the run directory by default)."""
    out = Path(out_dir) if out_dir is not None else run.path
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    figures = [
        ("timeline", timeline_figure(run)),
        ("zoom", zoom_figure(run)),
        ("latency", latency_figure(run)),
    ]
    if "link" in run.meta:  # a --netns run: which resource limited the sender
        from bufdemo.analysis.linkplots import limits_figure

        figures.append(("limits", limits_figure(run)))
    for stem, fig in figures:
        for ext in ("png", "svg"):
            path = out / f"{stem}.{ext}"
            tmp = path.with_name(f"{stem}.part.{ext}")  # savefig picks the format by suffix
            fig.savefig(tmp, dpi=FIGURE_DPI)
            tmp.replace(path)
            paths.append(path)
    from bufdemo.analysis.witness import sequence_figure

    seq = sequence_figure(run)  # --trace runs only: the kernel's time-sequence graph
    if seq is not None:
        for ext in ("png", "svg"):
            path = out / f"sequence.{ext}"
            tmp = path.with_name(f"sequence.part.{ext}")
            seq.savefig(tmp, dpi=FIGURE_DPI)
            tmp.replace(path)
            paths.append(path)
    return paths


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
