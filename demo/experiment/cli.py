"""The experiment's commands: ``run``, ``send``, ``receive``, ``plot`` and ``report``.

A thin layer over :mod:`bufdemo.experiment.run` and :mod:`bufdemo.analysis`: it parses
the options, builds the one :class:`RunConfig`, shows progress
(:mod:`bufdemo.experiment.live`) and prints. Results go to stdout (the summary, the
by-hand halves' counts, ``--json``), status to stderr (progress, "listening on",
warnings, errors), so a result can be piped while the progress stays visible.

Errors are raised, not printed: :func:`bufdemo.cli.main` turns them into one line
(usage errors exit 2, runtime failures exit 1, Ctrl-C exits 130).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import sys
import threading
import time
from array import array
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from bufdemo.console import err, one_line, out
from bufdemo.errors import BufdemoError, ConfigError
from bufdemo.experiment import clocksync
from bufdemo.experiment.config import (
    DEFAULT_MESSAGES,
    DEFAULT_RECV_DELAY,
    DEFAULT_SAMPLE_INTERVAL,
    DEFAULT_SIZE,
    MAX_SIZE,
    Mode,
    RunConfig,
    parse_write_buffer_limits,
)
from bufdemo.experiment.live import Reading, live_display, run_reading
from bufdemo.experiment.recorder import (
    PROGRESS_BLOCKED_SINCE,
    PROGRESS_BLOCKING,
    PROGRESS_COUNT,
    PROGRESS_INQ,
    PROGRESS_INTACT,
    PROGRESS_OUTQ,
    PROGRESS_SLOTS,
)
from bufdemo.experiment.wire import HEADER_SIZE
from bufdemo.net import Address, parse_address

if TYPE_CHECKING:
    from bufdemo.experiment.run import LazyRunDir, Progress

__all__ = ["register"]


# -- the options, one definition each: the same name, flag, unit and default everywhere --

MessagesOpt = Annotated[
    int,
    typer.Option("--messages", "-n", metavar="N", help="How many messages the sender sends."),
]
SizeOpt = Annotated[
    int,
    typer.Option(
        "--size",
        metavar="BYTES",
        help=f"Bytes per message on the wire, everything included (its {HEADER_SIZE}-byte "
        f"frame header: the payload is BYTES - {HEADER_SIZE}).",
    ),
]
DelayOpt = Annotated[
    float,
    typer.Option(
        "--recv-delay",
        "-d",
        metavar="SECONDS",
        help="The receiver's work per message, in seconds: it consumes at most 1/SECONDS "
        "messages a second. 0: as fast as it can read.",
    ),
]
SndbufOpt = Annotated[
    int | None,
    typer.Option(
        "--sndbuf",
        metavar="BYTES",
        help="setsockopt(SO_SNDBUF) on the sender's socket, before connect(). Linux grants "
        "twice the request and turns autotuning off for that socket. Unset: autotuning.",
    ),
]
RcvbufOpt = Annotated[
    int | None,
    typer.Option(
        "--rcvbuf",
        metavar="BYTES",
        help="setsockopt(SO_RCVBUF) on the receiver's socket, before listen(). Linux grants "
        "twice the request and turns autotuning off for that socket. Unset: autotuning.",
    ),
]
ModeOpt = Annotated[
    Mode,
    typer.Option(
        "--mode",
        help="How the sender waits when the send buffer is full. blocking: a real blocking "
        "send(), the kernel puts it to sleep. select: a non-blocking socket that waits for "
        "select()'s writable event. asyncio: StreamWriter.write() then await drain(); a "
        "blocking send is a drain() that waited. asyncio-nodrain: write() only, the "
        "messages pile up in the transport's user-space buffer (memory grows).",
    ),
]
WriteLimitsOpt = Annotated[
    str | None,
    typer.Option(
        "--write-buffer-limits",
        metavar="HIGH[,LOW]",
        help="asyncio modes only: transport.set_write_buffer_limits(HIGH, LOW) in bytes; "
        "drain() waits once the transport holds more than HIGH, until it is down to LOW. "
        "Unset: asyncio's defaults (64 KiB, 16 KiB); LOW unset: HIGH/4.",
    ),
]
OutOpt = Annotated[
    Path,
    typer.Option(
        "--out",
        "-o",
        metavar="DIR",
        help="Where run directories go: each run creates a new one inside DIR (made if missing).",
    ),
]
SampleOpt = Annotated[
    float,
    typer.Option(
        "--sample-interval",
        metavar="SECONDS",
        help="How often each side samples its socket's queues and tcp_info, in seconds.",
    ),
]
TimeoutOpt = Annotated[
    float | None,
    typer.Option(
        "--timeout",
        metavar="SECONDS",
        help="Give up when one wait for the peer lasts longer than SECONDS (the sender "
        "waiting for buffer space, the receiver for a sender or for data), and say which "
        "side was stuck. Unset: wait as long as it takes.",
    ),
]
NoPlotOpt = Annotated[
    bool,
    typer.Option(
        "--no-plot",
        metavar="",
        help="Do not draw the timeline, zoom and latency figures (bufdemo plot RUN draws them).",
    ),
]
SendRateOpt = Annotated[
    float | None,
    typer.Option(
        "--send-rate",
        metavar="MSGS_PER_S",
        help="Pace the sender at this many messages a second (slots of 1/MSGS_PER_S, no "
        "drift, like the receiver; iperf3 -b). Unset: as fast as the kernel accepts them.",
    ),
]
NotsentLowatOpt = Annotated[
    int | None,
    typer.Option(
        "--notsent-lowat",
        metavar="BYTES",
        help="setsockopt(TCP_NOTSENT_LOWAT) on the sender's socket: send() and select() "
        "wait while more than BYTES are queued unsent. Unset: the host's default (off).",
    ),
]
TimestampsOpt = Annotated[
    bool,
    typer.Option(
        "--timestamps",
        help="Ask the kernel for per-byte transmit timestamps (SO_TIMESTAMPING), so "
        "latency.csv splits each message's time into send buffer, in flight and receive "
        "queue. Off by default: each timestamp wakes a send() blocked for buffer space, "
        "which then resumes before the kernel's 2/3 mark.",
    ),
]
TraceOpt = Annotated[
    bool,
    typer.Option(
        "--trace",
        metavar="",
        help="Record the kernel's own events (tcp:tcp_probe per ACK, buffer autotuning, "
        "resets) for the run's two sockets into kernel_events.csv, from a private tracefs "
        "instance. Needs root; without it the run goes on and says why.",
    ),
]
CaptureOpt = Annotated[
    bool,
    typer.Option(
        "--capture",
        metavar="",
        help="Capture the run's packets (headers only) with tcpdump into capture.pcap and "
        "list zero windows, window updates, probes, retransmissions, FIN/RST in "
        "wire_events.csv. Needs tcpdump and root; without them the run goes on and says why.",
    ),
]
NetnsOpt = Annotated[
    bool,
    typer.Option(
        "--netns",
        metavar="",
        help="Run each side in its own network namespace, joined by a veth pair (a real "
        "link: 1500-byte MTU, a queue where --link-rate puts one). Needs root and iproute2; "
        "the namespaces are removed at the end (bufdemo cleanup removes a killed run's).",
    ),
]
LinkRateOpt = Annotated[
    str | None,
    typer.Option(
        "--link-rate",
        metavar="RATE",
        help="With --netns: a bottleneck of RATE (tc units: 20mbit, 500kbit, 1gbit; "
        "tbf on the sender's egress).",
    ),
]
LinkQueueOpt = Annotated[
    str | None,
    typer.Option(
        "--link-queue",
        metavar="SIZE|TIME",
        help="With --link-rate: the bottleneck's queue, in bytes (64kb) or in time at the "
        "rate (50ms). Default 100ms.",
    ),
]
MtuOpt = Annotated[
    int | None,
    typer.Option("--mtu", metavar="BYTES", help="With --netns: the veth pair's MTU (576-65535)."),
]
LinkDelayOpt = Annotated[
    str | None,
    typer.Option(
        "--link-delay",
        metavar="TIME",
        help="With --netns: added one-way delay (10ms); needs the netem qdisc in the kernel "
        "(refused at once where it is missing).",
    ),
]
LinkLossOpt = Annotated[
    str | None,
    typer.Option(
        "--link-loss",
        metavar="PERCENT",
        help="With --netns: random loss on the sender's egress (1%); needs netem, like "
        "--link-delay.",
    ),
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        metavar="HEX",
        help="32 hex digits shared by the two halves: the receiver accepts only a sender "
        "that sends this token. Unset: any bufdemo sender is accepted.",
    ),
]


def _json_option(what: str, *, progress: bool = True) -> Any:
    shown = " Progress is then shown only if stderr is a terminal." if progress else ""
    return typer.Option(
        "--json",
        metavar="",
        help=f"Print {what} on stdout as JSON, and nothing else there.{shown}",
    )


def _progress_shown(as_json: bool) -> bool:
    """The live display and its header: on a terminal, or when stdout is the report."""
    return err.is_terminal or not as_json


def _display(read: Callable[[], Reading], shown: bool, mode: Mode) -> AbstractContextManager[None]:
    return live_display(read, err, mode=mode.value) if shown else nullcontext()


def _say(text: str) -> None:
    """A result line on stdout, unwrapped and unstyled (a path may hold brackets)."""
    out.print(text, markup=False, highlight=False, soft_wrap=True)


# -- run ---------------------------------------------------------------------------


def run(
    messages: MessagesOpt = DEFAULT_MESSAGES,
    size: SizeOpt = DEFAULT_SIZE,
    recv_delay: DelayOpt = DEFAULT_RECV_DELAY,
    sndbuf: SndbufOpt = None,
    rcvbuf: RcvbufOpt = None,
    mode: ModeOpt = Mode.BLOCKING,
    out_dir: OutOpt = Path("runs"),
    no_plot: NoPlotOpt = False,
    as_json: Annotated[bool, _json_option("only the summary (summary.json)")] = False,
    sample_interval: SampleOpt = DEFAULT_SAMPLE_INTERVAL,
    timeout: TimeoutOpt = None,
    write_buffer_limits: WriteLimitsOpt = None,
    trace: TraceOpt = False,
    capture: CaptureOpt = False,
    send_rate: SendRateOpt = None,
    notsent_lowat: NotsentLowatOpt = None,
    timestamps: TimestampsOpt = False,
    use_netns: NetnsOpt = False,
    link_rate: LinkRateOpt = None,
    link_queue: LinkQueueOpt = None,
    mtu: MtuOpt = None,
    link_delay: LinkDelayOpt = None,
    link_loss: LinkLossOpt = None,
) -> int:
    """Run the experiment on loopback (with --netns: over a veth link between two network
    namespaces): a receiver process that spends --recv-delay on each message and a
    sender process that pushes --messages as fast as the kernel accepts them. Records
    every send, logs every blocking send with the queues around it,
    samples both sockets, then writes a run directory (inside --out), its summary and
    the timeline plot. Progress on stderr; the summary on stdout.
    """
    from bufdemo.experiment.run import create_run_dir, run_experiment, run_label

    cfg = RunConfig(
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
        **_write_limits_setting(write_buffer_limits),
        trace=trace,
        capture=capture,
        send_rate=send_rate,
        notsent_lowat=notsent_lowat,
        timestamps=timestamps,
        netns=use_netns,
        link_rate=link_rate,
        link_queue=link_queue,
        mtu=mtu,
        link_delay=link_delay,
        link_loss=link_loss,
    )
    if cfg.netns:  # before anything is created: what is missing is a usage error, exit 2
        from bufdemo.experiment import netns

        netns.check_can_create()
        if cfg.link_delay is not None or cfg.link_loss is not None:
            netns.check_netem("link_delay" if cfg.link_delay is not None else "link_loss")
    latest: list[Progress | None] = [None]

    def read() -> Reading:
        return run_reading(latest[0], cfg.messages)

    def on_progress(p: Progress) -> None:
        latest[0] = p

    run_dir = create_run_dir(cfg.out, run_label(cfg))  # fails here, before any output
    shown = _progress_shown(as_json)
    if shown:
        err.print(
            f"[bold]bufdemo run[/]: {cfg.messages:,} messages of {cfg.size:,} B, the "
            f"receiver spending {cfg.recv_delay * 1e3:g} ms on each\n"
            f"SO_SNDBUF {_requested(cfg.sndbuf)}, SO_RCVBUF {_requested(cfg.rcvbuf)}, "
            f"mode {cfg.mode.value}",
            soft_wrap=True,
        )
    # The analysis stack loads while the two sides start (spawned interpreters loading
    # bufdemo), and the sender is given the receiver's address only once it has loaded:
    # nothing of it runs beside the measured phase, and the summary and first plot
    # follow the run's end sooner.
    warm = _warm_up_analysis(cfg.plot)
    with _display(read, shown, cfg.mode):
        result = run_experiment(
            cfg, on_progress, run_dir=run_dir, before_sender=lambda: _warmed_up(warm, cfg)
        )
    for note in result.notes:  # a witness skipped or degraded: one line each, and why
        one_line(note)
    warm.join()  # matplotlib is not thread-safe: one thread draws at a time
    return _finish_run(result.run_dir, cfg.plot, as_json, result.reason, result.interrupted)


# How long the sender's start waits for the warm-up (a busy machine): past it, the run
# starts and the warm-up goes on at SCHED_IDLE, on CPU time nothing else wants.
WARM_UP_WAIT = 10.0


def _warm_up_analysis(draw: bool) -> threading.Thread:
    """Import bufdemo.analysis and warm matplotlib up (:func:`bufdemo.analysis.report.warm_up`)
    in a thread of its own."""

    def work() -> None:
        try:
            from bufdemo.analysis.report import warm_up

            warm_up(draw)
        except Exception:  # the same import at the end reports it properly
            return

    thread = threading.Thread(target=work, name="bufdemo-warm-up", daemon=True)
    thread.start()
    return thread


def _warmed_up(warm: threading.Thread, cfg: RunConfig) -> None:
    """Before the sender is given its address: wait for the warm-up (up to WARM_UP_WAIT,
    or half of --timeout); if it is still going, demote it to SCHED_IDLE so it cannot
    take CPU time from the run."""
    wait = WARM_UP_WAIT if cfg.timeout is None else min(WARM_UP_WAIT, cfg.timeout / 2)
    warm.join(wait)
    if warm.is_alive() and warm.native_id is not None and sys.platform == "linux":
        with contextlib.suppress(OSError):
            os.sched_setscheduler(warm.native_id, os.SCHED_IDLE, os.sched_param(0))


def _requested(buffer: int | None) -> str:
    return "auto" if buffer is None else f"{buffer:,} B requested"


def _finish_run(
    run_dir: Path, plot: bool, as_json: bool, reason: str | None, interrupted: bool
) -> int:
    """Summary (always), plots (unless --no-plot), then the report; exit code."""
    from bufdemo import analysis
    from bufdemo.analysis.report import RunFigures

    run_data = analysis.load_run(run_dir)
    figures: list[Path] = []
    drawn = RunFigures(run_data) if plot and len(run_data.sends) else None
    if drawn is not None:  # the picture first: what the user waits for
        figures.append(drawn.save("timeline", "png"))
    summary = json.loads(analysis.write_summary(run_data).read_text())
    if drawn is not None:
        figures = drawn.save_all(done=tuple(figures))
    if as_json:
        out.print_json(data=summary)
    else:
        _print_summary(summary, run_dir, figures)
        _print_witnesses(run_data)
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
    ("limited_by", "limited by (tcp_info)", ""),
    ("goodput_mbit", "goodput (message bytes)", "Mbit/s"),
    ("link_mbit", "bottleneck rate while queued", "Mbit/s"),
    ("complete", "complete", ""),
)


def _print_latency(latency: dict[str, Any] | None) -> None:
    """summary.json's latency: p50/p99/max of end-to-end and of each part, in ms."""
    if not latency:
        return
    table = Table(title="latency per message (ms)", title_justify="left")
    for column in ("", "p50", "p99", "max"):
        table.add_column(column, justify="left" if not column else "right")
    for key in (
        "end_to_end",
        "queued_in_send_buffer",
        "in_flight_until_ack",
        "waiting_in_receive_queue",
        "service",
    ):
        stats = latency.get(key) or {}
        table.add_row(
            key.replace("_", " "),
            *(
                _fmt(None if stats.get(q) is None else stats[q] * 1e3)
                for q in ("p50", "p99", "max")
            ),
        )
    out.print(table)
    if latency.get("timestamping"):
        out.print(f"[yellow]note:[/] no transmit timestamps: {escape(latency['timestamping'])}")


def _print_summary(summary: dict[str, Any], run_dir: Path, figures: list[Path]) -> None:
    """The summary as a table on stdout, with its notes (part of the summary, as in
    --json), the figures and the run directory."""
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
    _print_latency(summary.get("latency"))
    for note in summary.get("notes", []):
        out.print(f"[yellow]note:[/] {escape(note)}")
    for path in figures:
        if path.suffix == ".png":
            _say(f"plot: {path}")
    _say(f"run directory: {run_dir}")


def _print_witnesses(run_data: Any) -> None:
    """The cross-check of the witnesses (--trace, --capture), if the run had any."""
    from bufdemo.analysis import witness

    for line in witness.report_lines(witness.cross_check(run_data)):
        _say(line)


# -- the two halves by hand ------------------------------------------------------------


def receive(
    listen: Annotated[
        str,
        typer.Option(
            "--listen",
            "-l",
            metavar="HOST:PORT",
            help="Where to listen; port 0: a free port, printed. An address other than "
            "loopback is reachable by other hosts (pass --token).",
        ),
    ] = "127.0.0.1:0",
    recv_delay: DelayOpt = DEFAULT_RECV_DELAY,
    rcvbuf: RcvbufOpt = None,
    token: TokenOpt = None,
    max_size: Annotated[
        int,
        typer.Option(
            "--max-size",
            metavar="BYTES",
            help="The largest message a sender may announce (its --size): a bound on "
            "what a stranger can make this process allocate.",
        ),
    ] = MAX_SIZE,
    out_dir: OutOpt = Path("runs"),
    as_json: Annotated[
        bool, _json_option("the receiver's record (as in meta.json) and its run directory")
    ] = False,
    sample_interval: SampleOpt = DEFAULT_SAMPLE_INTERVAL,
    timeout: TimeoutOpt = None,
) -> int:
    """The receiving half by hand: listen, consume one sender's messages at --recv-delay
    each, write the receiver's tables in a run directory (inside --out). Start it first,
    then `bufdemo send --to` the address it prints (the lecture: start the server, then
    the client).
    """
    from bufdemo.experiment.receiver import ReceiverResult, run_receiver
    from bufdemo.experiment.run import LazyRunDir, check_out_dir

    address = parse_address(listen, "--listen")
    token_bytes = _parse_token(token)
    if not HEADER_SIZE <= max_size <= MAX_SIZE:
        raise ConfigError(
            "--max-size",
            f"must be between {HEADER_SIZE} (the frame header) and {MAX_SIZE}, got {max_size}",
        )
    cfg = RunConfig(
        recv_delay=recv_delay,
        rcvbuf=rcvbuf,
        out=out_dir,
        sample_interval=sample_interval,
        timeout=timeout,
        **_token_setting(token_bytes),
    )
    if not address.is_loopback:
        generated = ""
        if token_bytes is None:  # reachable by strangers: only a sender with the token
            token_bytes = secrets.token_bytes(16)
            cfg = dataclasses.replace(cfg, token=token_bytes)
            generated = (
                f"; a token is required, generated: {token_bytes.hex()} "
                f"(pass --token {token_bytes.hex()} to bufdemo send)"
            )
        one_line(f"warning: listening on {address}: other hosts can reach this port{generated}")
    shift = clocksync.clock_shift_ns()  # the test hook; 0 in normal use
    check_out_dir(cfg.out)
    progress = array("q", [0] * PROGRESS_SLOTS)
    result = ReceiverResult(clock_shift_ns=shift)
    made = LazyRunDir(cfg.out, f"receive-d{cfg.recv_delay:g}")

    def on_listening(addr: Address) -> None:
        with_token = "" if token_bytes is None else f" --token {token_bytes.hex()}"
        one_line(f"listening on {addr}; now start: bufdemo send --to {addr}{with_token}")

    def read() -> Reading:
        now, t0 = time.perf_counter_ns(), result.t_connected_ns
        return Reading(
            now,
            (now - t0) / 1e9 if t0 else 0.0,
            total=result.messages_expected,
            consumed=progress[PROGRESS_COUNT],
            intact=progress[PROGRESS_INTACT],
            recv_queue=progress[PROGRESS_INQ],
        )

    with _by_hand(made, cfg, read, as_json, receiver=result):
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
        if shift and made.path is not None:
            clocksync.shift_receiver_run(made.path, result, shift)
    counts = f"consumed {result.messages:,} messages ({result.intact:,} intact)"
    if result.rejected:
        counts += f", {result.rejected:,} stray connection(s) rejected"
    reason = None if result.complete else result.error or "the receiver did not finish"
    return _half_done(made, dict(result.as_dict()), as_json, counts, reason)


def send(
    to: Annotated[
        str,
        typer.Option(
            "--to",
            "-t",
            metavar="HOST:PORT",
            help="The address a `bufdemo receive` printed.",
        ),
    ],
    messages: MessagesOpt = DEFAULT_MESSAGES,
    size: SizeOpt = DEFAULT_SIZE,
    sndbuf: SndbufOpt = None,
    mode: ModeOpt = Mode.BLOCKING,
    token: TokenOpt = None,
    out_dir: OutOpt = Path("runs"),
    as_json: Annotated[
        bool, _json_option("the sender's record (as in meta.json) and its run directory")
    ] = False,
    sample_interval: SampleOpt = DEFAULT_SAMPLE_INTERVAL,
    timeout: TimeoutOpt = None,
    write_buffer_limits: WriteLimitsOpt = None,
    send_rate: SendRateOpt = None,
    notsent_lowat: NotsentLowatOpt = None,
    timestamps: TimestampsOpt = False,
) -> int:
    """The sending half by hand: connect to a `bufdemo receive`, push --messages as fast
    as the kernel accepts them, record every send, write the sender's tables in a run
    directory (inside --out).
    """
    from bufdemo.experiment.run import LazyRunDir, check_out_dir
    from bufdemo.experiment.sender import SenderResult, run_sender

    address = parse_address(to, "--to", allow_port_zero=False)
    token_bytes = _parse_token(token)
    cfg = RunConfig(
        messages=messages,
        size=size,
        sndbuf=sndbuf,
        mode=mode,
        out=out_dir,
        sample_interval=sample_interval,
        timeout=timeout,
        send_rate=send_rate,
        notsent_lowat=notsent_lowat,
        timestamps=timestamps,
        **_token_setting(token_bytes),
        **_write_limits_setting(write_buffer_limits),
    )
    check_out_dir(cfg.out)
    progress = array("q", [0] * PROGRESS_SLOTS)
    result = SenderResult()
    made = LazyRunDir(cfg.out, f"send-n{cfg.messages}")

    def read() -> Reading:
        now, t0 = time.perf_counter_ns(), result.t_connected_ns
        return Reading(
            now,
            (now - t0) / 1e9 if t0 else 0.0,
            total=cfg.messages,
            sent=progress[PROGRESS_COUNT],
            send_queue=progress[PROGRESS_OUTQ],
            blocking_sends=progress[PROGRESS_BLOCKING],
            blocked_since_ns=progress[PROGRESS_BLOCKED_SINCE],
        )

    with _by_hand(made, cfg, read, as_json, sender=result):
        run_sender(cfg, address, made.create, progress=progress, result=result, clock_sync=True)
    counts = f"sent {result.messages:,} messages, {result.blocking_sends:,} blocking"
    reason = None if result.complete else result.error or "the sender did not finish"
    return _half_done(made, dict(result.as_dict()), as_json, counts, reason)


@contextlib.contextmanager
def _by_hand(
    made: LazyRunDir, cfg: RunConfig, read: Callable[[], Reading], as_json: bool, **side: Any
) -> Iterator[None]:
    """Around a by-hand half (``sender=`` or ``receiver=`` its result): Ctrl-C or
    `kill PID` stops it (later ones cannot cut the writing), meta.json is written into
    its run directory whatever happens, and the live display shows ``read``. With
    --json the record is printed also when the half is stopped or fails with a
    runtime error once its run directory exists, as :func:`_half_done` prints it
    (before that, the one-line error alone)."""
    from bufdemo.experiment.run import kept_on_failure
    from bufdemo.signals import StopSignals, cleanup_begins

    with StopSignals():  # around the printing too: a later stop cannot cut it short
        try:
            with (
                kept_on_failure(made, cfg, **side),
                _display(read, _progress_shown(as_json), cfg.mode),
            ):
                yield
        except ConfigError:
            raise
        except BufdemoError:  # Interrupted included; kept_on_failure named the directory
            cleanup_begins()
            if as_json and made.path is not None:
                (result,) = side.values()
                with contextlib.suppress(OSError):  # stdout gone: the error still reported
                    _print_record(made.path, dict(result.as_dict()))
            raise


def _print_record(run_dir: Path | None, record: dict[str, Any]) -> None:
    """A by-hand half's --json output: its record (as in meta.json) and its run directory."""
    out.print_json(data={**record, "run_dir": str(run_dir)})


def _half_done(
    made: LazyRunDir, record: dict[str, Any], as_json: bool, counts: str, error: str | None
) -> int:
    """A by-hand half's report (its record with --json) and exit code; ``error`` is None
    when it completed."""
    if as_json:
        _print_record(made.path, record)
    if error is not None:
        one_line(f"RunIncomplete: {error} ({counts}; kept in {made.path})")
        return 1
    if not as_json:
        _say(f"{counts} -> {made.path}")
    return 0


def _write_limits_setting(text: str | None) -> dict[str, Any]:
    """``--write-buffer-limits`` as RunConfig's setting (absent: asyncio's defaults)."""
    return {} if text is None else {"write_buffer_limits": parse_write_buffer_limits(text)}


def _token_setting(token: bytes | None) -> dict[str, Any]:
    """The token for RunConfig: the user's, or (when unset) the config's random one."""
    return {} if token is None else {"token": token}


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


RunArg = Annotated[
    Path, typer.Argument(metavar="RUN", help="A run directory written by bufdemo run/send/receive.")
]


def plot(run_dir: RunArg) -> int:
    """Redraw timeline, zoom and latency .png/.svg in a run directory: the plots
    `bufdemo run` draws unless --no-plot. Prints the files written."""
    from bufdemo import analysis

    for path in analysis.save_figures(analysis.load_run(run_dir)):
        _say(f"wrote {path}")
    return 0


def report(
    run_dir: RunArg,
    as_json: Annotated[
        bool, _json_option("only the summary (summary.json)", progress=False)
    ] = False,
) -> int:
    """Recompute summary.json from a run directory's tables and print it: the summary
    `bufdemo run` prints at its end."""
    from bufdemo import analysis

    summary = json.loads(analysis.write_summary(analysis.load_run(run_dir)).read_text())
    if as_json:
        out.print_json(data=summary)
    else:
        run_data = analysis.load_run(run_dir)
        _print_summary(summary, run_dir, [])
        _print_witnesses(run_data)
    return 0


def merge(
    sender_run: Annotated[
        Path, typer.Argument(metavar="SENDER_RUN", help="The run directory bufdemo send wrote.")
    ],
    receiver_run: Annotated[
        Path,
        typer.Argument(metavar="RECEIVER_RUN", help="The run directory bufdemo receive wrote."),
    ],
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            metavar="DIR",
            help="Where to create the merged run directory. Default: beside SENDER_RUN.",
        ),
    ] = None,
) -> int:
    """Merge the two halves of a two-host run (bufdemo send on one host, bufdemo receive on
    the other) into one run directory on the sender's clock, using the clock readings
    they exchanged before and after the data. Prints the offset, its error bound and the
    drift (also in meta.json's clock); plot and report then read it like a run's."""
    from bufdemo.experiment.merge import merge_runs

    run_dir = merge_runs(sender_run, receiver_run, out_dir)
    clock = json.loads((run_dir / "meta.json").read_text())["clock"]
    drift = clock["drift_ppm"]
    _say(
        f"receiver clock - sender clock: {clock['offset_seconds']:+.6f} s "
        f"± {clock['error_ns'] / 1e6:.3f} ms (half the exchange's round trip); drift "
        + (
            "unknown (one exchange)"
            if drift is None
            else f"{drift:+.1f} ± {clock['drift_error_ppm']:.1f} ppm"
        )
    )
    _say(f"merged run directory: {run_dir}")
    return 0


def cleanup() -> int:
    """Remove what bufdemo runs killed outright (SIGKILL) left in the kernel: network
    namespaces (with the veths and queues inside them) and tracefs instances whose owner
    process is gone. A run in progress is left alone. Prints each one removed."""
    from bufdemo import leftovers
    from bufdemo.experiment import netns, tracing  # noqa: F401  (each registers its kind)

    removed, failures = leftovers.sweep()
    for res in removed:
        _say(f"removed {res.kind} {res.name} (owner pid {res.owner} is gone)")
    for line in failures:
        one_line(f"cleanup: could not remove {line}")
    if not removed and not failures:
        _say("nothing to clean up")
    return 1 if failures else 0


def register(app: typer.Typer) -> None:
    """Add ``run``, ``send``, ``receive``, ``plot``, ``report`` and ``cleanup`` to ``app``."""
    for command in (run, send, receive, plot, report, merge, cleanup):
        app.command()(command)
