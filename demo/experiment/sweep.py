"""Sweeps: one run per value of one setting, then the runs side by side.

``bufdemo sweep --send-rate 250,500,900 [run options]`` (or ``send-rate=250,500,900``
as an argument) plans one :class:`RunConfig` per value, every other setting shared,
and validates them all before the first run starts: a bad value fails at once, with
the option's name. Then the runs go one after the other (never two at once: they would
compete for the two cores and for loopback), each in its own run directory inside one
new *sweep directory* (``OUT/YYYYmmdd-HHMMSS-sweep-SETTING``, never reused). At the end
the sweep directory gets the comparison table (``sweep.csv``, ``sweep.json``, the
columns of runformat.SWEEP) and its plot (``sweep.png``/``.svg``: each metric against
the swept value), made by :mod:`bufdemo.analysis.comparison`.

Parsing (:func:`parse_spec`, :func:`parse_values`) and planning (:func:`plan`) are pure;
:func:`run_sweep` runs the experiments and writes the files. A sweep interrupted or
failed part-way still writes the table of the runs it has.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bufdemo.errors import ConfigError
from bufdemo.experiment.config import MODES, RunConfig
from bufdemo.experiment.run import Progress, RunResult, create_run_dir, run_experiment
from bufdemo.runformat import SWEEP

__all__ = [
    "SWEEPABLE",
    "SweepResult",
    "parse_spec",
    "parse_values",
    "plan",
    "run_sweep",
    "value_label",
]

AUTO = "auto"  # a buffer size left to the kernel (autotuning): the setting is None
OFF = "off"  # TCP_NOTSENT_LOWAT left unset, --send-rate unpaced
# Option -> (RunConfig field, kind of value). What a sweep can vary.
SWEEPABLE: dict[str, tuple[str, str]] = {
    "--sndbuf": ("sndbuf", "bytes-or-auto"),
    "--rcvbuf": ("rcvbuf", "bytes-or-auto"),
    "--recv-delay": ("recv_delay", "float"),
    "--send-rate": ("send_rate", "float-or-off"),
    "--size": ("size", "int"),
    "--notsent-lowat": ("notsent_lowat", "int-or-off"),
    "--mode": ("mode", "mode"),
}
MAX_VALUES = 100  # a sweep of more runs than this is a typo (each run takes seconds)
SPEC = "OPTION=V1,V2,..."  # how the sweep argument is named in errors


def _option(name: str) -> str:
    name = name.strip()
    return name if name.startswith("--") else "--" + name


def parse_spec(spec: str) -> tuple[str, str]:
    """``"send-rate=250,500"`` or ``"--send-rate=250,500"`` -> (option, its list)."""
    name, sep, values = spec.partition("=")
    if not sep or not name.strip():
        raise ConfigError(SPEC, f"must be OPTION=V1,V2,... (e.g. send-rate=500,2000), got {spec!r}")
    option = _option(name)
    if option not in SWEEPABLE:
        raise ConfigError(
            SPEC, f"cannot sweep {option}: one of {', '.join(SWEEPABLE)}, got {spec!r}"
        )
    return option, values


def _one(option: str, kind: str, item: str) -> Any:
    word = item.strip().lower()
    if kind == "bytes-or-auto" and word == AUTO:
        return None
    if kind.endswith("-or-off") and word == OFF:
        return None
    if kind == "mode":
        if word not in MODES:
            raise ValueError(item)
        return word
    if kind.startswith("float"):
        return float(word)
    return int(word)


def parse_values(option: str, text: str) -> list[Any]:
    """The comma-separated list of ``option``'s values, parsed (None for auto/off).

    Values are only parsed here; their ranges are checked by :class:`RunConfig` in
    :func:`plan`.
    """
    if option not in SWEEPABLE:
        raise ConfigError(SPEC, f"cannot sweep {option}: one of {', '.join(SWEEPABLE)}")
    _, kind = SWEEPABLE[option]
    items = text.split(",")
    expect = {
        "bytes-or-auto": "integers (bytes) or auto",
        "float": "numbers",
        "float-or-off": "numbers or off",
        "int": "integers",
        "int-or-off": "integers (bytes) or off",
        "mode": f"modes ({', '.join(MODES)})",
    }[kind]
    if not text.strip() or any(not item.strip() for item in items):
        raise ConfigError(option, f"must be a comma-separated list of {expect}, got {text!r}")
    if len(items) > MAX_VALUES:
        raise ConfigError(option, f"at most {MAX_VALUES} values in a sweep, got {len(items)}")
    try:
        values = [_one(option, kind, item) for item in items]
    except ValueError:
        raise ConfigError(
            option, f"must be a comma-separated list of {expect}, got {text!r}"
        ) from None
    if len({repr(v) for v in values}) != len(values):
        raise ConfigError(option, f"each value once, got {text!r}")
    return values


def value_label(value: Any, option: str) -> str:
    """A swept value as the user wrote it: ``auto``/``off`` for None, numbers with %g."""
    if value is None:
        return AUTO if SWEEPABLE[option][1] == "bytes-or-auto" else OFF
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def plan(base: Mapping[str, Any], option: str, values: Sequence[Any]) -> list[RunConfig]:
    """One validated RunConfig per value: ``base`` settings with the swept one replaced.

    Raises :class:`ConfigError` (naming the field) for the first invalid combination,
    before anything runs.
    """
    setting = SWEEPABLE[option][0]
    return [RunConfig(**{**base, setting: value}) for value in values]


@dataclass
class SweepResult:
    sweep_dir: Path
    option: str
    labels: list[str] = field(default_factory=list)  # the swept values, as typed
    results: list[RunResult] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)  # the table and the plot
    interrupted: bool = False

    @property
    def complete(self) -> bool:
        return not self.interrupted and all(r.complete for r in self.results)


def run_sweep(
    configs: Sequence[RunConfig],
    option: str,
    values: Sequence[Any],
    out: Path,
    *,
    on_run: Callable[[int, int, str, Path], None] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    on_done: Callable[[int, RunResult], None] | None = None,
    around: Callable[[RunConfig], AbstractContextManager[None]] | None = None,
    plot: bool = True,
) -> SweepResult:
    """Run each config in turn inside a new sweep directory; write the table and plot.

    ``on_run(i, n, value, run_dir)`` before run i (1-based) of n; ``on_progress`` is
    the run's live progress; ``on_done(i, result)`` after it; ``around(cfg)`` a context
    each run runs inside (the CLI's live display). Stops after a run that
    was interrupted (Ctrl-C); a run that failed is kept and the sweep goes on.
    """
    setting = SWEEPABLE[option][0]
    sweep_dir = create_run_dir(out, f"sweep-{setting.replace('_', '-')}")
    result = SweepResult(sweep_dir, option)
    try:
        for i, (cfg, value) in enumerate(zip(configs, values, strict=True), start=1):
            label = value_label(value, option)
            cfg = dataclasses.replace(cfg, out=sweep_dir)
            run_dir = create_run_dir(sweep_dir, f"{i:02d}-{setting.replace('_', '-')}-{label}")
            if on_run is not None:
                on_run(i, len(configs), label, run_dir)
            with around(cfg) if around is not None else nullcontext():
                run_result = run_experiment(cfg, on_progress or _ignore, run_dir=run_dir)
            result.results.append(run_result)
            result.labels.append(label)
            _analyse_run(run_dir, cfg.plot)
            if on_done is not None:
                on_done(i, run_result)
            if run_result.interrupted:
                result.interrupted = True
                break
    except KeyboardInterrupt:
        result.interrupted = True
    finally:
        if result.results:
            result.files = write_sweep_files(result, plot=plot)
    return result


def _ignore(_: Progress) -> None:
    pass


def _analyse_run(run_dir: Path, plot: bool) -> None:
    """summary.json and latency.csv (and the figures) of one run, as `bufdemo run` does."""
    from bufdemo import analysis

    run = analysis.load_run(run_dir)
    analysis.write_summary(run)
    if plot and len(run.sends):
        analysis.save_figures(run)


def write_sweep_files(result: SweepResult, *, plot: bool = True) -> list[Path]:
    """sweep.csv, sweep.json and (with ``plot``) sweep.png/.svg in the sweep directory."""
    from bufdemo import analysis
    from bufdemo.analysis.comparison import compare_table, sweep_figure

    runs = {r.run_dir.name: analysis.load_run(r.run_dir) for r in result.results}
    values = dict(zip(runs, result.labels, strict=True))
    table = compare_table(runs, values=values)
    base = result.sweep_dir / SWEEP.stem
    csv_path, json_path = base.with_suffix(".csv"), base.with_suffix(".json")
    table.to_csv(csv_path, index=False)
    json_path.write_text(json.dumps(table_records(table), indent=2) + "\n")
    files = [csv_path, json_path]
    if plot:
        fig = sweep_figure(
            table,
            "value",
            title=f"bufdemo sweep {result.option}: {len(table)} runs ({result.sweep_dir.name})",
            xlabel=result.option,
        )
        for ext in ("png", "svg"):
            path = base.with_suffix(f".{ext}")
            fig.savefig(path, dpi=110)
            files.append(path)
    return files


def table_records(table: Any) -> list[dict[str, Any]]:
    """The table's rows as JSON-ready dicts (NaN -> None)."""
    records: list[dict[str, Any]] = json.loads(table.to_json(orient="records"))
    return records
