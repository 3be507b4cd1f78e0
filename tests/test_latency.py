"""Per-message latency, --send-rate, --notsent-lowat, sweeps and comparisons.

Pure tests of the decomposition, the offset unwrapping and the sweep's parsing on
synthetic input; usage errors in-process through :func:`bufdemo.cli.main`; one small
real run on 127.0.0.1 that checks what the sender records (timestamps reach the last
byte, the granted TCP_NOTSENT_LOWAT, a paced sender that never blocks).
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import bufdemo
from bufdemo import analysis, runformat
from bufdemo.analysis.comparison import compare_table, sweep_figure, timelines_figure
from bufdemo.analysis.latency import decompose, latency_figure, stage_times
from bufdemo.cli import main
from bufdemo.errors import ConfigError
from bufdemo.experiment.config import Mode, RunConfig
from bufdemo.experiment.sweep import parse_spec, parse_values, plan, value_label
from bufdemo.experiment.txstamps import NO_QDISC, TxStampReader
from tests.procs import complete_run

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "run-format.md"
MS = 1_000_000


# -- the decomposition, sans-IO --------------------------------------------------------


def _stamps(rows: list[tuple[int, int, int]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["kind", "offset", "t_ns"])


def test_a_stage_reaches_a_message_with_the_first_report_at_or_beyond_its_last_byte() -> None:
    # size 100: message 0 ends at byte 99, 1 at 199, 2 at 299, 3 at 399.
    stamps = _stamps([(0, 99, 10), (0, 299, 30), (2, 299, 35), (0, 350, 40)])
    last = np.array([99, 199, 299, 399])
    assert list(stage_times(stamps, 0, last)[:3]) == [10, 30, 30]
    assert np.isnan(stage_times(stamps, 0, last)[3])  # never reported: unknown
    ack = stage_times(stamps, 2, last)
    assert list(ack[:3]) == [35, 35, 35]
    assert np.isnan(ack[3])


def test_the_earliest_report_counts_when_reports_are_out_of_order() -> None:
    stamps = _stamps([(0, 499, 50), (0, 199, 70)])  # a later offset stamped earlier
    assert list(stage_times(stamps, 0, np.array([99, 199]))) == [50, 50]


def test_decompose_splits_end_to_end_into_parts_that_add_up() -> None:
    size = 100
    sends = pd.DataFrame({"seq": [0, 1], "t_ns": [0, 1 * MS]})
    stamps = _stamps([(0, 99, 5 * MS), (2, 99, 6 * MS), (0, 199, 7 * MS), (2, 199, 8 * MS)])
    consumed = pd.DataFrame(
        {"seq": [0, 1], "t_start_ns": [10 * MS, 20 * MS], "t_end_ns": [20 * MS, 30 * MS]}
    )
    frame = decompose(sends, consumed, size, stamps)
    assert tuple(frame.columns) == runformat.LATENCY.columns
    row = frame.iloc[1]
    assert row["queued_in_send_buffer"] == pytest.approx(0.006)
    assert row["in_flight_until_ack"] == pytest.approx(0.001)
    assert row["waiting_in_receive_queue"] == pytest.approx(0.012)
    assert row["service"] == pytest.approx(0.010)
    assert row["end_to_end"] == pytest.approx(0.029)
    parts = frame[["queued_in_send_buffer", "in_flight_until_ack"]].sum(axis=1)
    parts += frame["waiting_in_receive_queue"] + frame["service"]
    assert np.allclose(parts, frame["end_to_end"])


def test_a_message_sent_during_its_send_call_was_not_queued_and_parts_still_add_up() -> None:
    sends = pd.DataFrame({"seq": [0], "t_ns": [5 * MS]})
    stamps = _stamps([(0, 99, 4 * MS), (2, 99, 40 * MS)])  # a delayed ACK, after service began
    consumed = pd.DataFrame({"seq": [0], "t_start_ns": [6 * MS], "t_end_ns": [7 * MS]})
    row = decompose(sends, consumed, 100, stamps).iloc[0]
    assert row["queued_in_send_buffer"] == 0
    assert row["in_flight_until_ack"] == pytest.approx(0.001)  # capped at the service start
    assert row["waiting_in_receive_queue"] == 0
    assert row["end_to_end"] == pytest.approx(0.002)


def test_without_timestamps_the_kernel_parts_are_unknown_and_end_to_end_is_there() -> None:
    sends = pd.DataFrame({"seq": [0, 1, 2], "t_ns": [0, MS, 2 * MS]})
    consumed = pd.DataFrame(
        {"seq": [0, 1], "t_start_ns": [MS, 3 * MS], "t_end_ns": [3 * MS, 5 * MS]}
    )
    frame = decompose(sends, consumed, 100, None)
    assert frame["queued_in_send_buffer"].isna().all()
    assert frame["in_flight_until_ack"].isna().all()
    assert frame["waiting_in_receive_queue"].isna().all()
    assert list(frame["end_to_end"][:2]) == pytest.approx([0.003, 0.004])
    assert list(frame["service"][:2]) == pytest.approx([0.002, 0.002])
    assert np.isnan(frame["end_to_end"][2])  # never consumed


def test_the_32_bit_offset_is_unwrapped_per_kind() -> None:
    with socket.socket() as sock:
        reader = TxStampReader(sock, base=10)
    top = (1 << 32) - 100
    for raw in (top, top + 50, 20, 4000):  # 20 and 4000 are past the wrap
        reader._append(0, raw, reader.offset_ns + 1)
    reader._append(2, top, reader.offset_ns + 2)  # another kind keeps its own history
    # stored as stream offsets; the base (here 10) is subtracted on output
    assert [o - reader.base for o in reader.offset] == [
        top - 10,
        top + 40,
        (1 << 32) + 10,
        (1 << 32) + 3990,
        top - 10,
    ]
    assert list(reader.t_ns) == [1, 1, 1, 1, 2]  # converted to the monotonic clock
    assert reader.counts() == {"SND": 4, "SCHED": 0, "ACK": 1}


def test_the_last_acked_offset_counts_message_bytes_not_the_clock_frames_after_them() -> None:
    with socket.socket() as sock:
        reader = TxStampReader(sock, base=10)
    reader._append(2, 10 + 4095, reader.offset_ns)  # the data's last byte
    assert reader.record()["last_acked_offset"] == 4095
    reader._append(2, 10 + 4096 + 47, reader.offset_ns)  # a 48-byte clock frame after it
    assert reader.record()["last_acked_offset"] == 4096 + 47  # data size not known yet
    reader.data_bytes = 4096
    assert reader.record()["last_acked_offset"] == 4095


# -- sweeps: parsing and planning -------------------------------------------------------


def test_a_sweep_spec_names_an_option_and_its_values() -> None:
    assert parse_spec("send-rate=250,500") == ("--send-rate", "250,500")
    assert parse_spec("--sndbuf=auto,65536") == ("--sndbuf", "auto,65536")
    assert parse_values("--sndbuf", "auto,65536") == [None, 65536]
    assert parse_values("--send-rate", "250, 500.5,off") == [250.0, 500.5, None]
    assert parse_values("--mode", "blocking,select") == ["blocking", "select"]
    assert value_label(None, "--sndbuf") == "auto"
    assert value_label(None, "--notsent-lowat") == "off"
    assert value_label(500.0, "--send-rate") == "500"


@pytest.mark.parametrize(
    ("option", "text", "rule"),
    [
        ("--send-rate", "500,,2000", "comma-separated list of numbers"),
        ("--send-rate", "", "comma-separated list"),
        ("--send-rate", "fast,slow", "comma-separated list of numbers"),
        ("--sndbuf", "1.5,2", "integers (bytes) or auto"),
        ("--mode", "blocking,poll", "modes (blocking, select, asyncio, asyncio-nodrain)"),
        ("--size", "1024,1024", "each value once"),
    ],
)
def test_a_bad_list_names_the_option(option: str, text: str, rule: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_values(option, text)
    assert info.value.setting == option
    assert rule in info.value.message


def test_plan_checks_every_value_before_anything_runs() -> None:
    configs = plan({"messages": 10}, "--send-rate", [100.0, None])
    assert [c.send_rate for c in configs] == [100.0, None]
    assert all(c.messages == 10 for c in configs)
    with pytest.raises(ConfigError) as info:
        plan({"messages": 10}, "--sndbuf", [65536, -1])
    assert info.value.setting == "sndbuf"


# -- usage errors: one line, exit 2 ----------------------------------------------------

# The bad values of --send-rate, --notsent-lowat and the sweep's lists are among
# tests/test_cli_usage.py's USAGE_CASES (one table, one test for every usage error).


def test_compare_of_a_missing_run_fails_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["compare", str(tmp_path / "nothing")])
    (line,) = capsys.readouterr().err.splitlines()
    assert code != 0
    assert "no such run directory" in line


# -- the run format ---------------------------------------------------------------------


def _doc_names() -> set[str]:
    names = set(re.findall(r"`([^`\s]+)`", DOC.read_text()))
    return names | {part for name in names for part in re.split(r"[./]", name)}


@pytest.mark.parametrize(
    "table", [*runformat.OPTIONAL_TABLE_FORMATS, runformat.SWEEP], ids=lambda t: t.stem
)
def test_the_document_names_every_new_table_and_column(table: runformat.TableFormat) -> None:
    text = DOC.read_text()
    assert re.search(rf"^##.*\b{re.escape(table.file)}\b", text, re.MULTILINE), table.file
    missing = [c for c in table.columns if c not in _doc_names()]
    assert not missing, f"{table.file}: columns not in {DOC.name}: {missing}"


def test_the_document_names_the_new_meta_and_summary_keys() -> None:
    names = _doc_names()
    for key in (
        "send_rate",
        "notsent_lowat",
        "timestamping",
        "last_acked_offset",
        "realtime_minus_monotonic_ns",
        "littles_law",
        "send_buffer_share",
    ):
        assert key in names, key


# -- a real run on loopback -------------------------------------------------------------


@pytest.fixture(scope="module")
def paced_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Paced well below the receiver (as fast as it can read), NOTSENT_LOWAT set."""
    return complete_run(
        tmp_path_factory.mktemp("runs"),
        messages=300,
        recv_delay=0,
        send_rate=3000,
        notsent_lowat=16384,
        timestamps=True,
    )


def test_a_paced_run_records_timestamps_to_the_last_byte_and_the_granted_lowat(
    paced_run: Path,
) -> None:
    meta = json.loads((paced_run / "meta.json").read_text())
    sender = meta["sender"]
    assert meta["config"]["send_rate"] == 3000
    assert sender["notsent_lowat"] == 16384
    stamping = sender["timestamping"]
    if not stamping["enabled"]:
        pytest.skip(f"no transmit timestamps here: {stamping['reason']}")
    assert stamping["last_acked_offset"] == 300 * 1024 - 1  # every byte ACKed, none dropped
    assert sender["blocking_sends"] == 0
    stamps = pd.read_csv(paced_run / runformat.TX_TIMESTAMPS.file)
    assert tuple(stamps.columns) == runformat.TX_TIMESTAMPS.columns
    # On loopback (noqueue) SCHED is not asked for: it would only repeat SND's moment.
    assert stamping["sched_reason"] == NO_QDISC
    assert stamping["notifications"]["SCHED"] == 0
    assert set(stamps["kind"]) == {0, 2}


def test_a_paced_sender_keeps_its_pace(paced_run: Path) -> None:
    sends = pd.read_csv(paced_run / "sends.csv")
    t = sends["t_ns"].to_numpy()
    # Slots of 1/3000 s from the loop's start (t_start = t_0 - duration_0): message i is
    # handed over no earlier than its slot, so its stamp (taken after the write) is not
    # before it. Measured from t_0 instead, a late first write (preempted, ~1 ms on a busy
    # machine) makes the catch-up that the pacer allows look like a burst.
    origin = t[0] - sends["duration_ns"].iloc[0]
    slots = origin + np.arange(len(t)) * round(1e9 / 3000)
    assert np.all(t >= slots)
    assert sends["blocked"].sum() == 0  # paced far below the reader: the pace alone set t


def test_report_writes_latency_csv_and_the_summary_has_its_parts(paced_run: Path) -> None:
    run = analysis.load_run(paced_run)
    summary = json.loads(analysis.write_summary(run).read_text())
    frame = pd.read_csv(paced_run / runformat.LATENCY.file)
    assert tuple(frame.columns) == runformat.LATENCY.columns
    assert len(frame) == 300
    assert frame["end_to_end"].notna().all()
    lat = summary["latency"]
    assert lat["end_to_end"]["p50"] <= lat["end_to_end"]["p99"] <= lat["end_to_end"]["max"]
    assert lat["timestamping"] is None
    assert lat["queued_in_send_buffer"]["p50"] is not None
    latency_figure(run)


def test_compare_two_runs_writes_the_table_and_the_figures(
    paced_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["compare", str(paced_run), str(paced_run), "--json", "--out", str(tmp_path)])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)["runs"]
    assert len(rows) == 2
    assert rows[0]["blocking_sends"] == 0
    assert set(rows[0]) == set(runformat.SWEEP.columns)
    for name in ("compare.csv", "compare.json", "compare.png", "timelines.png"):
        assert (tmp_path / name).is_file(), name
    run = analysis.load_run(paced_run)
    table = compare_table({"a": run}, values={"a": "3000"})
    assert table["value"].tolist() == ["3000"]
    sweep_figure(table, "value")
    timelines_figure({"a": run})


def test_a_sweep_writes_one_run_per_value_and_the_comparison(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["sweep", "send-rate=3000,off", "-n", "200", "-d", "0", "--no-plot", "--json"]
    code = main([*argv, "-o", str(tmp_path)])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    (sweep_dir,) = tmp_path.iterdir()
    assert report["sweep_dir"] == str(sweep_dir)
    assert [row["value"] for row in report["runs"]] == ["3000", "off"]
    assert [row["send_rate"] for row in report["runs"]] == [3000, None]
    runs = sorted(p for p in sweep_dir.iterdir() if p.is_dir())
    assert len(runs) == 2
    assert all((r / "meta.json").is_file() and (r / "latency.csv").is_file() for r in runs)
    table = pd.read_csv(sweep_dir / "sweep.csv")
    assert tuple(table.columns) == runformat.SWEEP.columns
    assert (sweep_dir / "sweep.png").is_file()
    assert (sweep_dir / "sweep.svg").is_file()


LOOPBACK_SEGMENT = 65536  # the kernel checks the mark per skb: up to one segment beyond it


@pytest.mark.parametrize("mode", ["blocking", "select"])
def test_notsent_lowat_caps_the_unsent_bytes_in_every_mode(mode: str, tmp_path: Path) -> None:
    cfg = RunConfig(
        messages=3000,
        recv_delay=0.0002,
        mode=Mode(mode),
        notsent_lowat=16384,
        out=tmp_path,
        plot=False,
    )
    result = bufdemo.run_experiment(cfg)
    assert result.complete, result.reason
    samples = pd.read_csv(result.run_dir / "sender_samples.csv")
    unsent = samples["outq_nsd"].dropna()
    if unsent.empty:
        pytest.skip("SIOCOUTQNSD is not available here")
    assert unsent.max() <= 16384 + LOOPBACK_SEGMENT + 1024
    meta = json.loads((result.run_dir / "meta.json").read_text())
    assert meta["sender"]["notsent_lowat"] == 16384
