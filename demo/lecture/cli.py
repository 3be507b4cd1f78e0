"""The lecture's commands: ``serve``, ``client``, ``load`` and ``lab``.

A thin layer: it parses and validates options (a bad value raises ConfigError, exit 2),
calls bufdemo.lecture.servers / client / loadgen / lab, and prints: results on stdout
(echo replies, events, load figures, verdicts, ``--json``), status on stderr ("serving
echo on ...", notices, warnings). ``register(app)`` adds the commands to bufdemo's main
typer app (bufdemo.cli), whose ``main()`` turns errors into one line.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from bufdemo.console import one_line, out
from bufdemo.errors import BufdemoError, ConfigError, PeerError
from bufdemo.lecture import lab as lab_mod
from bufdemo.lecture.client import connect, run_client
from bufdemo.lecture.loadgen import (
    COST_METRICS,
    DEFAULT_CLIENTS,
    DEFAULT_LINE_SIZE,
    DEFAULT_LOAD_TIMEOUT,
    DEFAULT_MESSAGES_PER_CLIENT,
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
from bufdemo.signals import StopSignals

__all__ = ["register"]

# Port 7 is the echo service; 7007 needs no root and is rarely taken (picked for that).
DEFAULT_LISTEN = "127.0.0.1:7007"
# Every model needs a descriptor per client; the usual soft limit of 1024 would stop
# poll/epoll near 1,000 clients and hide select()'s own FD_SETSIZE limit behind EMFILE.
SERVER_NOFILE = 65536

# -- serve ---------------------------------------------------------------------------


def _print_event(event: Event) -> None:
    print(f"{time.strftime('%H:%M:%S')} {event}", flush=True)


def _print_notice(text: str) -> None:
    one_line(f"bufdemo serve: {text}")


def serve_cmd(
    model: Annotated[
        str,
        typer.Option("--model", "-m", metavar="MODEL", help=f"Server shape: {', '.join(MODELS)}."),
    ],
    listen: Annotated[
        str,
        typer.Option(
            "--listen",
            "-l",
            metavar="HOST:PORT",
            help="Where to listen; port 0: a free port, printed. The fixed default port "
            "lets `bufdemo client 127.0.0.1:7007` find it. An address other than loopback "
            "is reachable by other hosts.",
        ),
    ] = DEFAULT_LISTEN,
    events: Annotated[
        bool,
        typer.Option(
            "--events",
            metavar="",
            help="Print each event on stdout: new connection, data readable, peer closed, "
            "writable.",
        ),
    ] = False,
) -> None:
    """Run an echo server in one of the lecture's shapes until Ctrl-C.

    fork: a child process per client. thread: a thread per client. select, poll,
    epoll: one loop watching every socket; select refuses clients past FD_SETSIZE.
    The address it serves on goes to stderr; events (--events) and the closing count
    to stdout.
    """
    chosen = parse_model(model)
    address = parse_address(listen, "--listen")
    if not address.is_loopback:
        one_line(f"warning: listening on {address}: other hosts can reach this echo server")
    raise_nofile_limit(SERVER_NOFILE)
    # bufdemo.signals: Ctrl-C or `kill PID` stops serving (exit 0, being stopped is how
    # a server ends); a second one cannot cut the clean-up short.
    with StopSignals(), open_listener(address.host, address.port) as listener:
        host, port = listener.getsockname()[:2]
        bound = Address(host, port)
        one_line(f"serving echo (model {chosen.value}) on {bound}; Ctrl-C stops")
        stats = serve(
            chosen,
            listener,
            on_event=_print_event if events else None,
            on_notice=_print_notice,
        )
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
        str | None,
        typer.Option(
            "--to", "-t", metavar="HOST:PORT", help="The echo server to load (any echo server)."
        ),
    ] = None,
    clients: Annotated[
        int, typer.Option("--clients", "-c", metavar="N", help="How many clients at once.")
    ] = DEFAULT_CLIENTS,
    messages: Annotated[
        int,
        typer.Option(
            "--messages",
            "-n",
            metavar="N",
            help="How many messages each client sends, one at a time, each reply checked.",
        ),
    ] = DEFAULT_MESSAGES_PER_CLIENT,
    size: Annotated[
        int,
        typer.Option(
            "--size",
            metavar="BYTES",
            help="Bytes per message on the wire, everything included (the client and "
            "message numbers it carries, its line end).",
        ),
    ] = DEFAULT_LINE_SIZE,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout",
            metavar="SECONDS",
            help="Give up on the clients that have not finished SECONDS after the load "
            "began (for the whole load, not one wait: a load always ends).",
        ),
    ] = DEFAULT_LOAD_TIMEOUT,
    compare: Annotated[
        bool,
        typer.Option(
            "--compare",
            metavar="",
            help="Start every server model here in turn, give each the same load and "
            "compare their cost.",
        ),
    ] = False,
    models: Annotated[
        str,
        typer.Option("--models", metavar="LIST", help="Comma-separated models for --compare."),
    ] = ",".join(MODELS),
    plot: Annotated[
        Path | None,
        typer.Option("--plot", metavar="PNG", help="With --compare: save a bar chart there."),
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            metavar="",
            help="Print the results on stdout as JSON, and nothing else there.",
        ),
    ] = False,
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
                print(f"plot: {plot}")
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
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="An experiment (bufdemo lab list), or 'all'.")
    ],
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            metavar="",
            help="Print the result on stdout as JSON (a list for 'all'), and nothing else there.",
        ),
    ] = False,
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
