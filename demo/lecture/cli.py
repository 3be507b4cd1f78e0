"""The lecture's commands: ``serve``, ``client``, ``load`` and ``lab``.

A thin layer: it parses and validates options (a bad value raises ConfigError, exit 2),
calls demo.servers / demo.client / demo.load / demo.lab, and prints. ``register(app)``
adds the commands to bufdemo's main typer app (demo/cli.py), whose ``main()`` turns
errors into one line.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from bufdemo.errors import BufdemoError, ConfigError, PeerError
from bufdemo.lecture import lab as lab_mod
from bufdemo.lecture.client import connect, run_client
from bufdemo.lecture.loadgen import (
    COST_METRICS,
    DEFAULT_CLIENTS,
    DEFAULT_MESSAGES,
    DEFAULT_SIZE,
    DEFAULT_TIMEOUT,
    LoadConfig,
    ModelCost,
    compare_models,
    find_listener_pid,
    format_result,
    measure_server,
    plot_cost,
    raise_nofile_limit,
    run_load,
)
from bufdemo.lecture.servers import MODELS, Event, open_listener, parse_model, serve
from bufdemo.net import Address, parse_address
from rich.console import Console
from rich.table import Table

__all__ = ["register"]

# Port 7 is the echo service; 7007 needs no root and is rarely taken (picked for that).
DEFAULT_LISTEN = "127.0.0.1:7007"
# Every model needs a descriptor per client; the usual soft limit of 1024 would stop
# poll/epoll near 1,000 clients and hide select()'s own FD_SETSIZE limit behind EMFILE.
SERVER_NOFILE = 65536

out = Console(highlight=False)


# -- serve ---------------------------------------------------------------------------


def _print_event(event: Event) -> None:
    print(f"{time.strftime('%H:%M:%S')} {event}", flush=True)


def _print_notice(text: str) -> None:
    print(f"bufdemo serve: {text}", file=sys.stderr, flush=True)


def _sigterm_as_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # `kill PID` stops as cleanly as Ctrl-C


def serve_cmd(
    model: Annotated[
        str, typer.Option("--model", "-m", help=f"Server shape: {', '.join(MODELS)}.")
    ],
    listen: Annotated[
        str, typer.Option("--listen", help="HOST:PORT to listen on; port 0 picks a free one.")
    ] = DEFAULT_LISTEN,
    events: Annotated[
        bool,
        typer.Option(
            "--events",
            help="Print each event: new connection, data readable, peer closed, writable.",
        ),
    ] = False,
) -> None:
    """Run an echo server in one of the lecture's shapes until Ctrl-C.

    fork: a child process per client. thread: a thread per client. select, poll,
    epoll: one loop watching every socket; select refuses clients past FD_SETSIZE.
    """
    chosen = parse_model(model)
    address = parse_address(listen, "--listen")
    if not address.is_loopback:
        print(
            f"warning: listening on {address}: other hosts can reach this echo server",
            file=sys.stderr,
            flush=True,
        )
    raise_nofile_limit(SERVER_NOFILE)
    previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        with open_listener(address.host, address.port) as listener:
            host, port = listener.getsockname()[:2]
            bound = Address(host, port)
            print(f"serving echo (model {chosen.value}) on {bound}; Ctrl-C stops", flush=True)
            stats = serve(
                chosen,
                listener,
                on_event=_print_event if events else None,
                on_notice=_print_notice,
            )
    finally:
        signal.signal(signal.SIGTERM, previous)
    workers = {"fork": "child processes ended and reaped", "thread": "threads joined"}
    left = workers.get(chosen.value, "client sockets closed")
    print(
        f"stopped: {stats.accepted} connections accepted, {stats.refused} refused; "
        f"{stats.open_at_stop} still open at stop: {left}",
        flush=True,
    )


# -- client --------------------------------------------------------------------------


def _read_line_interactive() -> str | None:
    try:
        return input("> ")
    except EOFError:
        return None


def _read_line_piped() -> str | None:
    line = sys.stdin.readline()
    return line.rstrip("\n") if line else None


def client_cmd(
    address: Annotated[str, typer.Argument(metavar="HOST:PORT", help="The echo server.")],
) -> None:
    """The lecture's client: read a line, send it, print the reply; Ctrl-D ends.

    Works against any echo server (bufdemo serve, socat, nc).
    """
    addr = parse_address(address, "HOST:PORT", allow_port_zero=False)
    with connect(addr.host, addr.port) as sock:
        interactive = sys.stdin.isatty()
        if interactive:
            print(f"connected to {addr}; type a line and Enter, Ctrl-D ends", file=sys.stderr)
        read = _read_line_interactive if interactive else _read_line_piped
        stats = run_client(sock, read, lambda reply: print(reply, flush=True))
    if interactive:
        print(
            f"bye: {stats.lines_sent} lines sent, {stats.bytes_received} B received",
            file=sys.stderr,
        )


# -- load ----------------------------------------------------------------------------


def _cost_table(costs: Sequence[ModelCost]) -> Table:
    table = Table(title="server cost under the same load (psutil)")
    for col in (
        "model",
        "ok / expected",
        "failures",
        "round trips/s",
        "processes",
        "threads",
        "RSS MiB",
        "USS MiB",
        "CPU s",
    ):
        table.add_column(col, justify="left" if col == "model" else "right")
    for c in costs:
        table.add_row(
            c.model,
            f"{c.load.replies_ok:,} / {c.load.expected:,}",
            str(c.load.failures),
            f"{c.load.messages_per_s:,.0f}",
            str(c.processes),
            str(c.threads),
            f"{c.rss_bytes / 2**20:.1f}",
            f"{c.uss_bytes / 2**20:.1f}",
            f"{c.cpu_s:.3f}",
        )
    return table


def _save_plot(costs: Sequence[ModelCost], path: Path, clients: int, messages: int) -> None:
    from matplotlib.figure import Figure  # Agg via savefig; imported only when plotting

    fig = Figure(figsize=(13, 3.2), layout="constrained")
    axes = fig.subplots(1, len(COST_METRICS))
    for ax, metric in zip(axes, COST_METRICS, strict=True):
        plot_cost(ax, costs, metric)
    fig.suptitle(f"echo server models, {clients} clients x {messages} messages", fontsize=10)
    try:
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise BufdemoError(
            f"cannot write plot {path}: {(exc.strerror or str(exc)).lower()}"
        ) from exc


def load_cmd(
    to: Annotated[
        str | None, typer.Option("--to", help="HOST:PORT of a running echo server.")
    ] = None,
    clients: Annotated[int, typer.Option("--clients", "-c", help="Concurrent clients.")] = (
        DEFAULT_CLIENTS
    ),
    messages: Annotated[
        int, typer.Option("--messages", "-n", help="Messages per client, each checked.")
    ] = DEFAULT_MESSAGES,
    size: Annotated[int, typer.Option("--size", help="Bytes per message.")] = DEFAULT_SIZE,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds before unfinished clients fail.")
    ] = DEFAULT_TIMEOUT,
    compare: Annotated[
        bool,
        typer.Option("--compare", help="Start every server model here and compare their cost."),
    ] = False,
    models: Annotated[
        str, typer.Option("--models", help="Comma-separated models for --compare.")
    ] = ",".join(MODELS),
    plot: Annotated[
        Path | None, typer.Option("--plot", help="With --compare: save a bar chart (PNG).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """N concurrent echo clients, each checking its replies: throughput and failures.

    With --to, the server at HOST:PORT is measured too if it runs on this host. With
    --compare, every server model is started in turn and given the same load; the cost
    (processes, threads, memory, CPU) is printed as a table, and plotted with --plot.
    """
    if to is None and not compare:
        raise ConfigError("--to", "give --to HOST:PORT, or --compare to measure every model")
    if to is not None and compare:
        raise ConfigError("--compare", "cannot be combined with --to: it starts its own servers")
    if plot is not None and not compare:
        raise ConfigError("--plot", "needs --compare")
    if compare:
        chosen = [parse_model(m.strip(), "--models").value for m in models.split(",")]
        LoadConfig("127.0.0.1", 1, clients, messages, size, timeout)  # usage errors first
        costs = compare_models(
            chosen, clients=clients, messages=messages, size=size, timeout=timeout
        )
        if as_json:
            print(json.dumps([c.as_dict() for c in costs], indent=2))
        else:
            out.print(_cost_table(costs))
            out.print(
                "RSS counts pages a forked child shares with its parent once per process; USS "
                "counts only pages unique to each process. CPU includes reaped children."
            )
        if plot is not None:
            _save_plot(costs, plot, clients, messages)
            if not as_json:
                out.print(f"plot: {plot}")
        failed = [c.model for c in costs if not c.load.ok]
        if failed:
            raise PeerError(f"clients failed against: {', '.join(failed)}")
        return
    assert to is not None
    addr = parse_address(to, "--to", allow_port_zero=False)
    cfg = LoadConfig(addr.host, addr.port, clients, messages, size, timeout)
    pid = find_listener_pid(addr.port) if addr.is_loopback else None
    server: dict[str, Any] | None = None
    if pid is not None:
        result, peak, cpu = measure_server(pid, cfg)
        server = {
            "pid": pid,
            "processes": peak.processes,
            "threads": peak.threads,
            "rss_mib": round(peak.rss_bytes / 2**20, 1),
            "uss_mib": round(peak.uss_bytes / 2**20, 1),
            "cpu_s": round(cpu, 3),
        }
    else:
        result = run_load(cfg)
    if as_json:
        print(json.dumps({**result.as_dict(), "server": server}, indent=2))
    else:
        for line in format_result(result):
            print(line)
        if server is not None:
            print(
                f"server pid {pid} at peak: {server['processes']} processes, "
                f"{server['threads']} threads, {server['rss_mib']} MiB RSS, "
                f"{server['uss_mib']} MiB USS; "
                f"{server['cpu_s']} s CPU during the load"
            )
    if not result.ok:
        raise PeerError(f"{result.failures} of {result.clients} clients failed")


# -- lab -----------------------------------------------------------------------------


def lab_list() -> None:
    """List the experiments and the claim each one measures."""
    table = Table(title="bufdemo lab: the lecture's claims, measured")
    table.add_column("name")
    table.add_column("claim")
    table.add_column("needs")
    for e in lab_mod.EXPERIMENTS.values():
        table.add_row(e.name, e.claim, e.needs or "-")
    out.print(table)


def _run_one(name: str) -> lab_mod.LabResult:
    try:
        return lab_mod.run(name)
    except (OSError, RuntimeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise BufdemoError(f"experiment {name} could not run: {exc}") from exc


def lab_run(
    name: Annotated[str, typer.Argument(metavar="NAME", help="An experiment, or 'all'.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Run an experiment: real sockets, measured, with a verdict and its numbers."""
    names = list(lab_mod.EXPERIMENTS) if name == "all" else [lab_mod.get(name).name]
    results = []
    for n in names:
        result = _run_one(n)
        results.append(result)
        if not as_json:
            for line in lab_mod.format_result(result):
                print(line, flush=True)
    if as_json:
        data = [r.as_dict() for r in results]
        print(json.dumps(data if name == "all" else data[0], indent=2))


def register(app: typer.Typer) -> None:
    """Add ``serve``, ``client``, ``load`` and ``lab {list,run}`` to ``app``."""
    app.command("serve")(serve_cmd)
    app.command("client")(client_cmd)
    app.command("load")(load_cmd)
    lab_app = typer.Typer(
        help="The lecture's claims about TCP buffers, each measured on this kernel.",
        no_args_is_help=True,
    )
    lab_app.command("list")(lab_list)
    lab_app.command("run")(lab_run)
    app.add_typer(lab_app, name="lab")
