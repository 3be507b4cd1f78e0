"""The asyncio sender modes: the transport's buffer above the kernel's, measured.

Pure tests of the option's parsing and rules; real runs on 127.0.0.1 (small, bounded) for
what the modes record; Ctrl-C on `bufdemo run` in both modes, as tests/test_faults.py
does for the blocking mode.
"""

from __future__ import annotations

import gc
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from bufdemo import analysis, runformat
from bufdemo.analysis.userbuffer import transport_samples, user_buffer, user_buffer_notes
from bufdemo.errors import ConfigError
from bufdemo.experiment.asyncio_sender import STATM, rss_reader
from bufdemo.experiment.config import Mode, RunConfig, parse_write_buffer_limits
from tests.procs import (
    Bufdemo,
    complete_run,
    csv_rows,
    gone_within,
    one_line,
    run_sides,
    sides_named,
    wait_for_checkpoint,
)
from tests.synthetic import write_run

SIZE = 1024


# -- the RSS the transport sampler reads --------------------------------------------------


def test_rss_is_psutils_figure_follows_an_allocation_and_closes_its_file() -> None:
    """The statm reader keeps its descriptor open; psutil opens the same file each time."""
    if not Path(STATM).exists():
        pytest.skip(f"no {STATM} here: psutil reads the RSS")
    me = psutil.Process()
    fds = me.num_fds()
    read, missing = rss_reader()
    assert missing is None
    assert me.num_fds() == fds + 1
    before = read()
    assert before is not None
    assert abs(before - me.memory_info().rss) < 1 << 20  # the same pages, read apart
    block = b"\x01" * (64 << 20)  # every byte written, so every page resident
    grown = read()
    assert grown is not None
    assert grown - before >= 60 << 20
    del block
    del read
    gc.collect()
    assert me.num_fds() == fds


# -- the option (pure) -------------------------------------------------------------------


def test_write_buffer_limits_parse_high_and_optional_low() -> None:
    assert parse_write_buffer_limits("65536") == (65536, None)
    assert parse_write_buffer_limits("8192,2048") == (8192, 2048)


@pytest.mark.parametrize("text", ["", "big", "1,2,3", "1.5", "8192,", ",1"])
def test_write_buffer_limits_that_are_not_one_or_two_integers_are_refused(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_write_buffer_limits(text)
    assert info.value.setting == "write_buffer_limits"
    assert repr(text) in info.value.message


@pytest.mark.parametrize(
    ("mode", "limits", "rule"),
    [
        ("blocking", (8192, None), "applies to the asyncio modes only"),
        ("select", (8192, 1024), "applies to the asyncio modes only"),
        ("asyncio", (0, None), "between 1 and"),
        ("asyncio", (8192, 9000), "LOW must be between 0 and HIGH (8192), got 9000"),
        ("asyncio-nodrain", (8192, -1), "LOW must be between 0 and HIGH"),
    ],
)
def test_write_buffer_limits_rules(mode: str, limits: tuple[int, int | None], rule: str) -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig(mode=Mode(mode), write_buffer_limits=limits)
    assert info.value.setting == "write_buffer_limits"
    assert rule in info.value.message


def test_asyncio_modes_are_modes_and_the_limits_reach_meta() -> None:
    cfg = RunConfig(mode=Mode("asyncio"), write_buffer_limits=(8192, 2048))
    assert cfg.as_dict()["mode"] == "asyncio"
    assert cfg.as_dict()["write_buffer_limits"] == [8192, 2048]
    assert RunConfig().as_dict()["write_buffer_limits"] is None


# -- real runs ----------------------------------------------------------------------------


def _run(tmp: Path, **settings: Any) -> Path:
    return complete_run(tmp, size=SIZE, **settings)


@pytest.fixture(scope="module")
def nodrain_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4,000 messages (~4 MB) against a receiver paced at 0.2 ms: most wait in user space."""
    return _run(
        tmp_path_factory.mktemp("nodrain"),
        messages=4000,
        recv_delay=0.0002,
        mode=Mode.ASYNCIO_NODRAIN,
        sndbuf=16384,
        rcvbuf=16384,
    )


@pytest.fixture(scope="module")
def drain_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run(
        tmp_path_factory.mktemp("drain"),
        messages=3000,
        recv_delay=0.0002,
        mode=Mode.ASYNCIO,
        sndbuf=16384,
        rcvbuf=16384,
        write_buffer_limits=(8192, 2048),
    )


@pytest.mark.slow
def test_nodrain_piles_the_messages_up_in_the_transport_and_still_delivers_them(
    nodrain_run: Path,
) -> None:
    run = analysis.load_run(nodrain_run)
    assert int(run.consumed["intact"].sum()) == 4000
    header = (nodrain_run / runformat.TRANSPORT_SAMPLES.file).read_text().split("\n", 1)[0]
    assert tuple(header.split(",")) == runformat.TRANSPORT_SAMPLES.columns
    assert not transport_samples(run).empty
    numbers = user_buffer(run)
    assert numbers is not None
    # The kernel's buffers here are a few tens of KiB: far more than that waited above.
    assert numbers["buffered_peak_bytes"] > 2 * 1024 * 1024
    assert numbers["drain_waits"] == 0 == len(run.blocking_sends)
    # Every byte written is somewhere: the peak is what the kernel and the receiver had
    # not taken (the sampler is a thread: allow 10%, the bound).
    expected = numbers["expected_peak_bytes"]
    assert expected is not None
    assert abs(numbers["sampled_peak_bytes"] - expected) <= 0.1 * expected
    summary = analysis.summarize(run)
    assert summary["asyncio"]["mode"] == "asyncio-nodrain"
    assert any("a drain() that had to wait" in note for note in summary["notes"])


@pytest.mark.slow
def test_drain_keeps_the_transport_under_high_water_plus_one_message(drain_run: Path) -> None:
    run = analysis.load_run(drain_run)
    meta = run.side("sender")
    record = meta["asyncio"]
    assert (record["high_water"], record["low_water"]) == (8192, 2048)
    samples = transport_samples(run)
    assert int(samples["buffered"].max()) <= 8192 + SIZE
    assert record["buffered_peak"] <= 8192 + SIZE
    # A blocking send in this mode is a drain() that waited: one row per wait.
    assert record["drain_waits"] == len(run.blocking_sends) == meta["blocking_sends"] > 0
    assert (run.blocking_sends["bytes_after_wait"] == 0).all()
    assert (run.blocking_sends["t_end_ns"] >= run.blocking_sends["t_start_ns"]).all()
    assert int(run.consumed["intact"].sum()) == 3000


# -- Ctrl-C -------------------------------------------------------------------------------


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[Bufdemo]]:
    procs: list[Bufdemo] = []
    yield procs
    for p in procs:
        p.cleanup()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["asyncio", "asyncio-nodrain"])
def test_ctrl_c_in_the_asyncio_modes_exits_130_keeps_the_tables_leaves_no_orphan(
    started: list[Bufdemo], tmp_path: Path, mode: str
) -> None:
    out = tmp_path / "out"
    argv = ["run", "--mode", mode, "--messages", "20000", "--recv-delay", "0.0005",
            "--sndbuf", "16384", "--rcvbuf", "16384", "--no-plot", "--json",
            "--out", str(out)]  # fmt: skip
    run = Bufdemo(argv, tmp_path)
    started.append(run)
    receiver, sender = run_sides(run)
    run_dir = wait_for_checkpoint(out, rows=20)
    os.killpg(run.pid, signal.SIGINT)  # a terminal's Ctrl-C
    left = gone_within([receiver, sender], 2.0)
    assert left == [], f"{sides_named(left, receiver)} outlived Ctrl-C by 2 s"
    code, stdout, stderr = run.finish()
    assert code == 130
    assert one_line(stderr) == f"interrupted: partial run kept in {run_dir}"
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["outcome"]["complete"] is False
    assert meta["outcome"]["reason"].startswith("interrupted by the user")
    sent = meta["sender"]["messages"]
    assert csv_rows(run_dir / "sends.csv") == sent > 0
    assert csv_rows(run_dir / runformat.TRANSPORT_SAMPLES.file) > 0
    assert meta["sender"]["asyncio"]["high_water"] > 0
    assert json.loads(stdout)["asyncio"]["mode"] == mode
    assert gone_within(run.descendants(), 10) == []


# -- the analysis, on synthetic run directories (no sockets) ------------------------------


def test_user_buffer_is_none_outside_the_asyncio_modes(tmp_path: Path) -> None:
    write_run(tmp_path / "run")
    run = analysis.load_run(tmp_path / "run")
    assert user_buffer(run) is None
    assert user_buffer_notes(None) == []
    assert analysis.summarize(run)["asyncio"] is None


def test_user_buffer_accounts_for_every_byte_at_the_peak(tmp_path: Path) -> None:
    """The expected peak is written minus the kernel's queues minus what was consumed;
    written is what sends.csv stamped by then, not the sample's count (the sender's
    counter moves per block of frames, so it can be a block behind)."""
    write_run(tmp_path / "run")
    meta_path = tmp_path / "run" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["config"]["mode"] = "asyncio-nodrain"
    meta_path.write_text(json.dumps(meta))
    run = analysis.load_run(tmp_path / "run")
    size = int(run.config["size"])
    rs = run.receiver_samples
    t_peak = int(rs["t_ns"].iloc[len(rs) // 2])  # at a receiver sample: its values exactly
    inq, consumed = int(rs["inq"].iloc[len(rs) // 2]), int(rs["count"].iloc[len(rs) // 2])
    written = int((run.sends["t_ns"] <= t_peak).sum())
    count, outq, rss0 = written // 2, 4_096, 50_000_000  # the counter far behind
    expected = written * size - outq - inq - consumed * size
    assert expected > 0
    header = ",".join(runformat.TRANSPORT_SAMPLES.columns)
    rows = [
        f"{t_peak - 1_000_000},100,1000,{outq},{rss0},0",
        f"{t_peak},{count},{expected},{outq},{rss0 + 9_000_000},4000",
        f"{t_peak + 1_000_000},{count},0,0,{rss0 + 5_000_000},8000",
    ]
    (tmp_path / "run" / runformat.TRANSPORT_SAMPLES.file).write_text(
        "\n".join([header, *rows]) + "\n"
    )
    numbers = user_buffer(run)
    assert numbers is not None
    assert numbers["expected_peak_bytes"] == expected == numbers["sampled_peak_bytes"]
    assert numbers["kernel_at_peak_bytes"] == outq + inq
    assert numbers["written_at_peak_bytes"] == written * size
    assert numbers["rss_growth_bytes"] == 9_000_000
    assert numbers["recorder_growth_bytes"] == 4000
    assert numbers["rss_growth_net_bytes"] == 9_000_000 - 4000
    notes = user_buffer_notes(numbers)
    assert any("100.0% of the bytes written" in n for n in notes)
