"""bufdemo load: concurrent clients that check every reply, and the server-model comparison."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import typer
from matplotlib.figure import Figure
from typer.testing import CliRunner

from bufdemo.errors import ConfigError
from bufdemo.lecture.cli import register
from bufdemo.lecture.loadgen import (
    LoadConfig,
    LoadResult,
    ModelCost,
    ServerProcess,
    plot_cost,
    run_load,
)
from bufdemo.lecture.servers import MODELS

CLI = [sys.executable, "-m", "bufdemo"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )


@contextmanager
def corrupting_echo(clients: int) -> Iterator[int]:
    """An echo server that answers every message in upper case: wrong replies."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(clients)

        def serve() -> None:
            conns = [listener.accept()[0] for _ in range(clients)]
            for conn in conns:
                with conn:
                    conn.sendall(conn.recv(65536).upper())

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            yield listener.getsockname()[1]
        finally:
            thread.join()


def test_every_reply_is_checked_and_a_wrong_one_is_a_failure() -> None:
    with corrupting_echo(4) as port:
        result = run_load(LoadConfig("127.0.0.1", port, clients=4, messages=5))
    assert result.replies_ok == 0
    assert result.failures == 4
    assert result.reasons == {"reply differs from the message sent": 4}
    assert not result.ok


def test_refused_clients_are_counted_with_the_reason() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connect is refused
        result = run_load(LoadConfig("127.0.0.1", port, clients=3, messages=1))
    assert result.connected == 0
    assert result.reasons == {"connect: connection refused": 3}


def test_load_against_a_running_server_reports_throughput_and_the_server_cost() -> None:
    with ServerProcess("thread") as srv:
        proc = run_cli("load", "--to", f"127.0.0.1:{srv.port}", "--clients", "8", "-n", "25")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("8 clients x 25 messages of 64 B: 200/200 replies correct")
    assert lines[1] == "connected: 8, failures: 0"
    # psutil found the server by its listening port: a thread per client at the peak.
    assert f"server pid {srv.pid} at peak: 1 processes, 9 threads" in lines[2]


def test_compare_measures_each_model_under_the_same_load(tmp_path: Path) -> None:
    plot = tmp_path / "cost.png"
    proc = run_cli(
        "load", "--compare", "--clients", "6", "--messages", "10", "--json", "--plot", str(plot)
    )
    assert proc.returncode == 0, proc.stderr
    rows = {row["model"]: row for row in json.loads(proc.stdout)}
    assert list(rows) == list(MODELS)
    for row in rows.values():
        assert row["load_replies_ok"] == 60
        assert row["load_failures"] == 0
        assert row["rss_mib"] > 0
        assert 0 < row["uss_mib"] <= row["rss_mib"]
    # The cost the lecture is about: a process per client, a thread per client, or one loop.
    assert rows["fork"]["processes"] == 7
    assert rows["fork"]["threads"] == 7
    assert rows["thread"]["processes"] == 1
    assert rows["thread"]["threads"] == 7
    for model in ("select", "poll", "epoll"):
        assert (rows[model]["processes"], rows[model]["threads"]) == (1, 1)
    assert plot.read_bytes().startswith(b"\x89PNG")


def _cost(model: str, processes: int, threads: int, rss: int, cpu: float) -> ModelCost:
    load = LoadResult(10, 10, 64, 10, 100, 0, {}, 0.5)
    return ModelCost(model, load, processes, threads, rss, rss // 4, cpu)


def test_plot_cost_draws_one_bar_per_model_with_its_value() -> None:
    costs = [_cost("fork", 11, 11, 200 << 20, 0.4), _cost("epoll", 1, 1, 20 << 20, 0.1)]
    ax = Figure().subplots()
    bars = plot_cost(ax, costs, "rss")
    assert [b.get_height() for b in bars] == [200.0, 20.0]
    assert [b.get_height() for b in plot_cost(Figure().subplots(), costs, "uss")] == [50.0, 5.0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["fork", "epoll"]
    assert "MiB" in ax.get_title()


@pytest.mark.parametrize(
    ("field", "value"),
    [("clients", 0), ("messages", 0), ("size", 8)],
)
def test_load_config_names_the_setting_that_is_out_of_range(field: str, value: int) -> None:
    with pytest.raises(ConfigError, match=f"^{field}: must be between") as caught:
        LoadConfig("127.0.0.1", 7, **{field: value})
    assert caught.value.setting == field


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ([], "--to: give --to HOST:PORT, or --compare"),
        (["--to", "127.0.0.1:7", "--compare"], "--compare: cannot be combined with --to"),
        (["--to", "127.0.0.1:7", "--clients", "0"], "--clients: must be between 1 and 10000"),
        (["--to", "nowhere"], "--to: expected HOST:PORT"),
        (["--compare", "--models", "fork,fiber"], "--models: must be one of"),
        (["--to", "127.0.0.1:7", "--plot", "x.png"], "--plot: needs --compare"),
    ],
)
def test_load_usage_errors_are_one_line_exit_2(args: list[str], needle: str) -> None:
    proc = run_cli("load", *args)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert needle in proc.stderr


def test_load_with_failures_exits_1_after_the_report() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        proc = run_cli("load", "--to", f"127.0.0.1:{port}", "--clients", "2", "-n", "1")
    assert proc.returncode == 1
    assert "2 x connect: connection refused" in proc.stdout
    assert proc.stderr == "PeerError: 2 of 2 clients failed\n"


def test_register_adds_the_lecture_commands_to_a_typer_app() -> None:
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    for command, options in (
        (["serve"], ["--model", "--listen", "--events"]),
        (["client"], ["HOST:PORT"]),
        (["load"], ["--to", "--clients", "--messages", "--compare", "--plot"]),
        (["lab", "run"], ["NAME", "--json"]),
    ):
        result = runner.invoke(app, [*command, "--help"])
        assert result.exit_code == 0, result.output
        for option in options:
            assert option in result.output
