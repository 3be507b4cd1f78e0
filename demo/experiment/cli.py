"""The ``bufdemo`` command line: a thin layer over demo.run and analysis.

Errors are one line: usage errors (a bad option value) exit 2, runtime failures exit 1
as ``ErrorName: message``, Ctrl-C exits 130. No traceback reaches the user.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from bufdemo.console import err, one_line, out
from bufdemo.errors import ConfigError
from bufdemo.experiment.config import (
    DEFAULT_MESSAGES,
    DEFAULT_RECV_DELAY,
    DEFAULT_SAMPLE_INTERVAL,
    DEFAULT_SIZE,
    MAX_SIZE,
    RunConfig,
)
from bufdemo.experiment.recorder import (
    PROGRESS_COUNT,
    PROGRESS_EXTRA,
    PROGRESS_OUTQ,
    PROGRESS_SLOTS,
)
from bufdemo.net import Address, parse_address
from rich.console import Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

__all__ = ["register"]


class Mode(StrEnum):
    blocking = "blocking"
    select = "select"


# -- shared options -----------------------------------------------------------------

MessagesOpt = Annotated[
    int, typer.Option("--messages", "-n", help="Messages to send.", show_default=True)
]
SizeOpt = Annotated[
    int,
    typer.Option("--size", help="Bytes per message, 24-byte header included.", show_default=True),
]
DelayOpt = Annotated[
    float,
    typer.Option(
        "--recv-delay",
        "-d",
        help="Seconds of receiver work per message (0 = as fast as it can read).",
        show_default=True,
    ),
]
SndbufOpt = Annotated[
    int | None,
    typer.Option(
        "--sndbuf",
        help="setsockopt(SO_SNDBUF) before connect. Linux doubles it and turns send "
        "autotuning off. Unset: kernel autotuning.",
    ),
]
RcvbufOpt = Annotated[
    int | None,
    typer.Option(
        "--rcvbuf",
        help="setsockopt(SO_RCVBUF) before listen. Linux doubles it. Unset: autotuning.",
    ),
]
ModeOpt = Annotated[
    Mode,
    typer.Option(
        "--mode",
        help="blocking: MSG_DONTWAIT attempt, then a real blocking send. "
        "select: non-blocking socket, wait for select()'s writable event.",
    ),
]
OutOpt = Annotated[
    Path, typer.Option("--out", "-o", help="Parent directory; each run gets a new one.")
]
SampleOpt = Annotated[
    float,
    typer.Option("--sample-interval", help="Seconds between queue samples on each side."),
]
TimeoutOpt = Annotated[
    float | None,
    typer.Option(
        "--timeout",
        help="Give up when one wait (for buffer space, or for data) exceeds this many "
        "seconds, and say which side was stuck. Unset: wait as long as it takes.",
    ),
]


def _config(**kwargs: Any) -> RunConfig:
    """Build the validated config; ConfigError reaches main() as a usage error."""
    if isinstance(kwargs.get("mode"), Mode):
        kwargs["mode"] = kwargs["mode"].value
    return RunConfig(**kwargs)


# -- live progress -----------------------------------------------------------------


def _mb(n: int | None) -> str:
    if n is None or n < 0:
        return "n/a"
    return f"{n / 1e6:.2f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


def _bar_row(label: str, done: int, total: int) -> Table:
    row = Table.grid(padding=(0, 1))
    row.add_column(width=9)
    row.add_column(width=40)
    row.add_column()
    row.add_row(
        label, ProgressBar(total=total, completed=done, width=40), f"{done:>9,} / {total:,}"
    )
    return row


def _progress_view(
    total: int,
    *,
    elapsed: float,
    sent: int | None = None,
    consumed: int | None = None,
    send_queue: int | None = None,
    recv_queue: int | None = None,
    blocking: int | None = None,
) -> Group:
    rows: list[Any] = []
    if sent is not None:
        rows.append(_bar_row("sent", sent, total))
    if consumed is not None:
        rows.append(_bar_row("consumed", consumed, total))
    facts = [f"elapsed {elapsed:6.1f} s"]
    if send_queue is not None:
        facts.append(f"send queue {_mb(send_queue)}")
    if recv_queue is not None:
        facts.append(f"receive queue {_mb(recv_queue)}")
    if blocking is not None:
        facts.append(f"blocking sends {blocking:,}")
    rows.append(Text("   ".join(facts), style="dim"))
    return Group(*rows)


@contextmanager
def _live(render: Callable[[], Any], enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    try:
        with Live(get_renderable=render, console=err, refresh_per_second=4, transient=False):
            yield
    finally:
        if not err.is_terminal:
            err.print()  # a file or pipe gets the final frame without its line end


# -- run ---------------------------------------------------------------------------


def run(
    messages: MessagesOpt = DEFAULT_MESSAGES,
    size: SizeOpt = DEFAULT_SIZE,
    recv_delay: DelayOpt = DEFAULT_RECV_DELAY,
    sndbuf: SndbufOpt = None,
    rcvbuf: RcvbufOpt = None,
    mode: ModeOpt = Mode.blocking,
    out_dir: OutOpt = Path("runs"),
    no_plot: Annotated[bool, typer.Option("--no-plot", help="Skip the plots.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print only the summary, as JSON, on stdout.")
    ] = False,
    sample_interval: SampleOpt = DEFAULT_SAMPLE_INTERVAL,
    timeout: TimeoutOpt = None,
) -> int:
    """Run the experiment: a receiver process that spends --recv-delay on each message and
    a sender process that pushes --messages as fast as the kernel accepts them. Records
    every send, logs every blocking send with the queues around it, samples both sockets,
    then writes a run directory, a summary and the timeline plot.
    """
    from bufdemo.experiment.run import Progress, create_run_dir, run_experiment, run_label

    cfg = _config(
        messages=messages,
        size=size,
        recv_delay=recv_delay,
        sndbuf=sndbuf,
        rcvbuf=rcvbuf,
        mode=mode,
        out=out_dir,
        plot=not no_plot,
        sample_interval=sample_interval,
        timeout=timeout,
    )
    latest = [Progress(0.0, 0, 0, 0, 0, 0)]

    def render() -> Group:
        p = latest[0]
        return _progress_view(
            cfg.messages,
            elapsed=p.elapsed,
            sent=p.sent,
            consumed=p.consumed,
            send_queue=p.send_queue,
            recv_queue=p.recv_queue,
            blocking=p.blocking_sends,
        )

    def on_progress(p: Progress) -> None:
        latest[0] = p

    run_dir = create_run_dir(cfg.out, run_label(cfg))  # fails here, before any output
    if not as_json:
        err.print(
            f"[bold]bufdemo run[/]: {cfg.messages:,} x {cfg.size} B, receiver "
            f"{cfg.recv_delay * 1e3:g} ms/message, SO_SNDBUF "
            f"{cfg.sndbuf if cfg.sndbuf is not None else 'auto'}, SO_RCVBUF "
            f"{cfg.rcvbuf if cfg.rcvbuf is not None else 'auto'}, mode {cfg.mode}"
        )
    with _live(render, enabled=err.is_terminal or not as_json):
        result = run_experiment(cfg, on_progress, run_dir=run_dir)
    return _finish_run(result.run_dir, cfg.plot, as_json, result.reason, result.interrupted)


def _finish_run(
    run_dir: Path, plot: bool, as_json: bool, reason: str | None, interrupted: bool
) -> int:
    """Summary (always), plots (unless --no-plot), then the report; exit code."""
    from bufdemo import analysis

    run_data = analysis.load_run(run_dir)
    summary = json.loads(analysis.write_summary(run_data).read_text())
    figures: list[Path] = []
    if plot and len(run_data.sends):
        figures = analysis.save_figures(run_data)
    if as_json:
        out.print_json(data=summary)
    else:
        _print_summary(summary, run_dir, figures)
    if interrupted:
        one_line(f"interrupted: partial run kept in {run_dir}")
        return 130
    if not summary["complete"]:
        one_line(f"RunIncomplete: {reason or 'the run did not finish'} (kept in {run_dir})")
        return 1
    return 0


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.3f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


SUMMARY_ROWS = (
    ("messages_sent", "messages sent", ""),
    ("messages_received", "messages received", ""),
    ("messages_intact", "intact (seq + checksum)", ""),
    ("messages_lost", "lost", ""),
    ("blocking_sends", "blocking sends (stalls)", ""),
    ("stall_seconds", "time the sender was blocked", "s"),
    ("first_stall_seconds", "first stall began at", "s"),
    ("resume_queue_ratio_median", "queue at wake-up / at stall (median)", ""),
    ("sender_seconds", "sender done (last message to the kernel)", "s"),
    ("receiver_seconds", "receiver done (last message consumed)", "s"),
    ("service_seconds_mean", "receiver time per message (mean)", "ms"),
    ("sndbuf_requested", "SO_SNDBUF requested", "B"),
    ("sndbuf_granted", "SO_SNDBUF granted", "B"),
    ("rcvbuf_requested", "SO_RCVBUF requested", "B"),
    ("rcvbuf_granted", "SO_RCVBUF granted", "B"),
    ("max_send_queue_bytes", "peak send queue (SIOCOUTQ)", "B"),
    ("max_recv_queue_bytes", "peak receive queue (SIOCINQ)", "B"),
    ("complete", "complete", ""),
)


def _print_summary(summary: dict[str, Any], run_dir: Path, figures: Sequence[Path]) -> None:
    table = Table(title="bufdemo summary", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_column(style="dim")
    for key, label, unit in SUMMARY_ROWS:
        if key in summary:
            value = summary[key]
            if unit == "ms" and isinstance(value, int | float):
                value = value * 1e3
            shown = "auto" if value is None and key.endswith("_requested") else _fmt(value)
            table.add_row(label, shown, unit)
    out.print(table)
    for note in summary.get("notes", []):
        out.print(f"[yellow]note:[/] {note}")
    for path in figures:
        if path.suffix == ".png":
            out.print(f"plot: {path}")
    out.print(f"run directory: {run_dir}")


# -- the two halves by hand ------------------------------------------------------------


def receive(
    listen: Annotated[
        str,
        typer.Option(
            "--listen",
            "-l",
            help="HOST:PORT to listen on (port 0: any free port). A non-loopback "
            "address is reachable by other hosts.",
        ),
    ] = "127.0.0.1:0",
    recv_delay: DelayOpt = DEFAULT_RECV_DELAY,
    rcvbuf: RcvbufOpt = None,
    token: Annotated[
        str | None,
        typer.Option("--token", help="Accept only a sender with this hex token (32 hex digits)."),
    ] = None,
    max_size: Annotated[
        int, typer.Option("--max-size", help="Largest frame a sender may announce, bytes.")
    ] = MAX_SIZE,
    out_dir: OutOpt = Path("runs"),
    sample_interval: SampleOpt = DEFAULT_SAMPLE_INTERVAL,
    timeout: TimeoutOpt = None,
) -> int:
    """The receiving half by hand: listen, consume one sender's messages at --recv-delay
    each, write the receiver's tables. Start it first, then `bufdemo send` (the lecture:
    start the server, then the client).
    """
    from bufdemo.experiment.receiver import ReceiverResult, run_receiver
    from bufdemo.experiment.run import LazyRunDir, StopSignals, check_out_dir, kept_on_failure

    address = parse_address(listen, "--listen")
    token_bytes = _parse_token(token)
    if not 24 <= max_size <= MAX_SIZE:
        raise ConfigError(
            "--max-size", f"must be between 24 (the frame header) and {MAX_SIZE}, got {max_size}"
        )
    cfg = _config(
        recv_delay=recv_delay,
        rcvbuf=rcvbuf,
        out=out_dir,
        sample_interval=sample_interval,
        timeout=timeout,
        **({"token": token_bytes} if token_bytes else {}),
    )
    if not address.is_loopback:
        err.print(
            f"[yellow]warning:[/] listening on {address}: other hosts can reach this port"
            + ("" if token_bytes else "; pass --token so only your sender is accepted"),
            soft_wrap=True,
        )
    check_out_dir(cfg.out)
    progress = array("q", [0] * PROGRESS_SLOTS)
    result = ReceiverResult()
    made = LazyRunDir(cfg.out, f"receive-d{cfg.recv_delay:g}")

    def on_listening(addr: Address) -> None:
        err.print(f"listening on {addr}; now start: bufdemo send --to {addr}", soft_wrap=True)

    # Ctrl-C or `kill PID`: the first stops the run, later ones cannot cut the writing.
    with StopSignals(), kept_on_failure(made, cfg, receiver=result):
        run_receiver(
            cfg,
            address,
            made.create,
            token=token_bytes,
            on_listening=on_listening,
            progress=progress,
            max_size=max_size,
            result=result,
        )
    counts = f"consumed {result.messages:,} messages ({result.intact:,} intact)"
    if result.rejected:
        counts += f", {result.rejected:,} stray connection(s) rejected"
    if not result.complete:
        one_line(f"RunIncomplete: {result.error} ({counts}; kept in {made.path})")
        return 1
    err.print(f"{counts} -> {made.path}")
    return 0


def send(
    to: Annotated[str, typer.Option("--to", "-t", help="HOST:PORT of a `bufdemo receive`.")],
    messages: MessagesOpt = DEFAULT_MESSAGES,
    size: SizeOpt = DEFAULT_SIZE,
    sndbuf: SndbufOpt = None,
    mode: ModeOpt = Mode.blocking,
    token: Annotated[
        str | None, typer.Option("--token", help="The receiver's token, if it set one.")
    ] = None,
    out_dir: OutOpt = Path("runs"),
    sample_interval: SampleOpt = DEFAULT_SAMPLE_INTERVAL,
    timeout: TimeoutOpt = None,
) -> int:
    """The sending half by hand: connect to a `bufdemo receive`, push --messages as fast
    as the kernel accepts them, record every send, write the sender's tables.
    """
    from bufdemo.experiment.run import LazyRunDir, StopSignals, check_out_dir, kept_on_failure
    from bufdemo.experiment.sender import SenderResult, run_sender

    address = parse_address(to, "--to", allow_port_zero=False)
    token_bytes = _parse_token(token)
    cfg = _config(
        messages=messages,
        size=size,
        sndbuf=sndbuf,
        mode=mode,
        out=out_dir,
        sample_interval=sample_interval,
        timeout=timeout,
        **({"token": token_bytes} if token_bytes else {}),
    )
    check_out_dir(cfg.out)
    progress = array("q", [0] * PROGRESS_SLOTS)
    started = [0.0]
    result = SenderResult()
    made = LazyRunDir(cfg.out, f"send-n{cfg.messages}")

    def render() -> Group:
        return _progress_view(
            cfg.messages,
            elapsed=_since(started),
            sent=progress[PROGRESS_COUNT],
            send_queue=progress[PROGRESS_OUTQ],
            blocking=progress[PROGRESS_EXTRA],
        )

    with (
        StopSignals(),  # Ctrl-C or `kill PID`: the first stops, later ones are ignored
        kept_on_failure(made, cfg, sender=result),
        _live(render, enabled=err.is_terminal),
    ):
        started[0] = _now()
        run_sender(cfg, address, made.create, progress=progress, result=result)
    err.print(
        f"sent {result.messages:,} messages, {result.blocking_sends:,} blocking -> {made.path}"
    )
    return 0 if result.complete else 1


def _now() -> float:
    import time

    return time.monotonic()


def _since(started: list[float]) -> float:
    return _now() - started[0] if started[0] else 0.0


def _parse_token(token: str | None) -> bytes | None:
    if token is None:
        return None
    try:
        raw = bytes.fromhex(token)
    except ValueError:
        raise ConfigError("--token", f"must be 32 hex digits, got {token!r}") from None
    if len(raw) != 16:
        raise ConfigError("--token", f"must be 32 hex digits, got {len(token)} characters")
    return raw


# -- analysis of a run directory ---------------------------------------------------


RunArg = Annotated[Path, typer.Argument(help="A run directory written by bufdemo run.")]


def plot(run_dir: RunArg) -> int:
    """Rebuild timeline.png/.svg and zoom.png/.svg from a run directory."""
    from bufdemo import analysis

    for path in analysis.save_figures(analysis.load_run(run_dir)):
        out.print(f"wrote {path}")
    return 0


def report(
    run_dir: RunArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> int:
    """Recompute summary.json from a run directory's tables and print it."""
    from bufdemo import analysis

    summary = json.loads(analysis.write_summary(analysis.load_run(run_dir)).read_text())
    if as_json:
        out.print_json(data=summary)
    else:
        _print_summary(summary, run_dir, [])
    return 0


def register(app: typer.Typer) -> None:
    """Add ``run``, ``send``, ``receive``, ``plot`` and ``report`` to ``app``."""
    for command in (run, send, receive, plot, report):
        app.command()(command)
