"""The commands ``sweep`` and ``compare``: many runs, one table, one picture.

A thin layer over :mod:`bufdemo.experiment.sweep` (the runs) and
:mod:`bufdemo.analysis.comparison` (the table and the plots). ``sweep`` takes the options
of ``run``; the one it sweeps gets a comma-separated list (``--send-rate 500,2000``)
or is named in an argument (``send-rate=500,2000``). Progress (which run of how many,
and the live display of the current one) goes to stderr, the table to stdout.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from bufdemo.console import err, one_line, out
from bufdemo.errors import ConfigError
from bufdemo.experiment.cli import (
    MessagesOpt,
    NoPlotOpt,
    OutOpt,
    SampleOpt,
    TimeoutOpt,
    TimestampsOpt,
    _display,
    _json_option,
    _progress_shown,
    _say,
)
from bufdemo.experiment.config import (
    DEFAULT_MESSAGES,
    DEFAULT_SAMPLE_INTERVAL,
    Mode,
    RunConfig,
)
from bufdemo.experiment.live import Reading, run_reading

__all__ = ["register"]

SPEC_METAVAR = "OPTION=V1,V2,..."


def _list_opt(flag: str, what: str, *short: str) -> Any:
    return typer.Option(flag, *short, metavar="V1,V2,...", help=what)


# Columns of the printed table: runformat.SWEEP column -> (title, scale, format).
SHOWN = (
    ("value", "value", None, "{}"),
    ("blocking_sends", "stalls", None, "{:,.0f}"),
    ("stall_seconds", "wait s", None, "{:,.2f}"),
    ("throughput_msgs_per_s", "msg/s", None, "{:,.0f}"),
    ("latency_p50_seconds", "p50 ms", 1e3, "{:,.1f}"),
    ("latency_p99_seconds", "p99 ms", 1e3, "{:,.1f}"),
    ("max_send_queue_bytes", "sendq KiB", 1 / 1024, "{:,.0f}"),
    ("max_unsent_bytes", "unsent KiB", 1 / 1024, "{:,.0f}"),
    ("max_recv_queue_bytes", "recvq KiB", 1 / 1024, "{:,.0f}"),
)
# The granted buffers (and every setting) are in sweep.csv/.json: the printed table
# keeps to 80 columns.


CAPTION = (
    "stalls: blocking sends; wait: time the sender was blocked; p50/p99: end-to-end "
    "latency; peaks: SIOCOUTQ, SIOCOUTQNSD, SIOCINQ"
)


def _cell(value: Any, scale: float | None, fmt: str) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "n/a"
    if scale is not None:
        value = float(value) * scale
    try:
        return fmt.format(value)
    except (TypeError, ValueError):
        return str(value)


def print_table(records: list[dict[str, Any]], title: str, first: str = "value") -> None:
    table = Table(
        title=f"{title} (first column: {first})",
        title_justify="left",
        caption=CAPTION,
        caption_justify="left",
        box=box.SIMPLE_HEAD,  # no vertical rules: nine columns fit in 80
    )
    for _, label, _, _ in SHOWN:
        table.add_column(label, justify="right")
    for row in records:
        table.add_row(*(_cell(row.get(k), s, f) for k, _, s, f in SHOWN))
    out.print(table)


def sweep(
    spec: Annotated[
        str | None,
        typer.Argument(
            metavar=SPEC_METAVAR,
            help="The setting to sweep and its values, e.g. send-rate=250,500,2000 (or give "
            "the list to its option: --send-rate 250,500,2000).",
        ),
    ] = None,
    messages: MessagesOpt = DEFAULT_MESSAGES,
    size: Annotated[str | None, _list_opt("--size", "Bytes per message (as run).")] = None,
    recv_delay: Annotated[
        str | None, _list_opt("--recv-delay", "The receiver's seconds per message (as run).", "-d")
    ] = None,
    sndbuf: Annotated[
        str | None,
        _list_opt("--sndbuf", "SO_SNDBUF request, bytes; auto: autotuning (as run)."),
    ] = None,
    rcvbuf: Annotated[
        str | None,
        _list_opt("--rcvbuf", "SO_RCVBUF request, bytes; auto: autotuning (as run)."),
    ] = None,
    mode: Annotated[str | None, _list_opt("--mode", "blocking or select (as run).")] = None,
    send_rate: Annotated[
        str | None,
        _list_opt("--send-rate", "The sender's pace, messages/s; off: unpaced (as run)."),
    ] = None,
    notsent_lowat: Annotated[
        str | None,
        _list_opt("--notsent-lowat", "TCP_NOTSENT_LOWAT, bytes; off: unset (as run)."),
    ] = None,
    timestamps: TimestampsOpt = False,
    out_dir: OutOpt = Path("runs"),
    no_plot: NoPlotOpt = False,
    as_json: Annotated[bool, _json_option("only the comparison table (sweep.json)")] = False,
    sample_interval: SampleOpt = DEFAULT_SAMPLE_INTERVAL,
    timeout: TimeoutOpt = None,
) -> int:
    """Run the experiment once per value of one setting, one after the other, each in
    its own run directory inside a new sweep directory (inside --out); then write the
    comparison table (sweep.csv, sweep.json) and its plot (sweep.png/.svg: each metric
    against the swept value) there and print the table.

    Example:  bufdemo sweep --send-rate 250,500,900,1100,2000 --messages 5000
    """
    from bufdemo.experiment.run import Progress, check_out_dir
    from bufdemo.experiment.sweep import (
        SPEC,
        SWEEPABLE,
        parse_spec,
        parse_values,
        plan,
        run_sweep,
    )

    given = {
        "--size": size,
        "--recv-delay": recv_delay,
        "--sndbuf": sndbuf,
        "--rcvbuf": rcvbuf,
        "--mode": mode,
        "--send-rate": send_rate,
        "--notsent-lowat": notsent_lowat,
    }
    lists = {opt: parse_values(opt, text) for opt, text in given.items() if text is not None}
    swept = [opt for opt, values in lists.items() if len(values) > 1]
    if spec is not None:
        option, text = parse_spec(spec)
        if option in lists:
            raise ConfigError(SPEC, f"{option} is given twice (as {spec!r} and as an option)")
        lists[option] = parse_values(option, text)
        swept.append(option)
    if not swept:
        raise ConfigError(
            SPEC, "name one option with two or more values, e.g. --send-rate 500,2000"
        )
    if len(swept) > 1:
        raise ConfigError(SPEC, f"sweep one option at a time, got {' and '.join(swept)}")
    option = swept[0]

    base: dict[str, Any] = {
        "messages": messages,
        "out": out_dir,
        "plot": not no_plot,
        "sample_interval": sample_interval,
        "timeout": timeout,
        "timestamps": timestamps,
    }
    for opt, values in lists.items():
        if opt != option:
            base[SWEEPABLE[opt][0]] = values[0]
    values = lists[option]
    configs = plan(base, option, values)  # every value checked before the first run
    check_out_dir(out_dir)
    shown = _progress_shown(as_json)
    latest: list[Progress | None] = [None]
    total = [0]

    def on_run(i: int, n: int, label: str, run_dir: Path) -> None:
        latest[0] = None
        total[0] = configs[i - 1].messages
        if shown:
            err.print(
                f"[bold]bufdemo sweep[/]: run {i} of {n}: {option} {label} -> {run_dir}",
                soft_wrap=True,
                highlight=False,
            )

    def on_progress(p: Progress) -> None:
        latest[0] = p

    def read() -> Reading:
        return run_reading(latest[0], total[0])

    def around(cfg: RunConfig) -> AbstractContextManager[None]:
        return _display(read, shown, Mode(cfg.mode))

    result = run_sweep(
        configs,
        option,
        values,
        out_dir,
        on_run=on_run,
        on_progress=on_progress,
        around=around,
        plot=True,  # the sweep's own plot; --no-plot spares each run's figures
    )
    sweep_json = result.sweep_dir / "sweep.json"
    records = json.loads(sweep_json.read_text()) if result.files else []
    if as_json:
        out.print_json(data={"sweep_dir": str(result.sweep_dir), "option": option, "runs": records})
    else:
        print_table(records, f"bufdemo sweep {option}", first=option)
        for path in result.files:
            if path.suffix in (".png", ".csv"):
                _say(f"{path.suffix[1:]}: {path}")
        _say(f"sweep directory: {result.sweep_dir}")
    if result.interrupted:
        one_line(f"interrupted: {len(result.results)} run(s) kept in {result.sweep_dir}")
        return 130
    failed = [r for r in result.results if not r.complete]
    if failed:
        one_line(
            f"RunIncomplete: {len(failed)} of {len(result.results)} runs did not finish "
            f"(first: {failed[0].run_dir.name}: {failed[0].reason})"
        )
        return 1
    return 0


def compare(
    run_dirs: Annotated[
        list[Path],
        typer.Argument(metavar="RUN...", help="Run directories (bufdemo run/sweep wrote them)."),
    ],
    as_json: Annotated[bool, _json_option("only the comparison table", progress=False)] = False,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            metavar="DIR",
            help="Also write compare.csv, compare.json, compare.png/.svg (each metric per "
            "run) and timelines.png/.svg (the runs on aligned time axes) into DIR.",
        ),
    ] = None,
) -> int:
    """Put existing runs side by side: the table `bufdemo sweep` prints (blocking sends,
    time blocked, throughput, latency p50/p99, peak queues, granted buffers)."""
    from bufdemo import analysis
    from bufdemo.analysis.comparison import compare_table, sweep_figure, timelines_figure
    from bufdemo.experiment.sweep import table_records

    runs: dict[str, analysis.Run] = {}
    for path in run_dirs:
        name = path.name
        while name in runs:
            name += "'"
        runs[name] = analysis.load_run(path)
    table = compare_table(runs)
    table["value"] = list(runs)
    records = table_records(table)
    written: list[Path] = []
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        table.to_csv(out_dir / "compare.csv", index=False)
        (out_dir / "compare.json").write_text(json.dumps(records, indent=2) + "\n")
        written += [out_dir / "compare.csv", out_dir / "compare.json"]
        figures = (
            ("compare", sweep_figure(table, "value", xlabel="run")),
            ("timelines", timelines_figure(runs)),
        )
        for stem, fig in figures:
            for ext in ("png", "svg"):
                fig.savefig(out_dir / f"{stem}.{ext}", dpi=110)
                written.append(out_dir / f"{stem}.{ext}")
    if as_json:
        out.print_json(data={"runs": records})
    else:
        numbered = [{**row, "value": i} for i, row in enumerate(records, start=1)]
        print_table(numbered, "bufdemo compare", first="run number")
        for i, path in enumerate(run_dirs, start=1):
            _say(f"{i}: {path}")
        for path in written:
            _say(f"wrote {path}")
    return 0


def register(app: typer.Typer) -> None:
    """Add ``sweep`` and ``compare`` to ``app``."""
    app.command()(sweep)
    app.command()(compare)
