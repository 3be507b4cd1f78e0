"""analysis: loading, stalls, phases, summary, on synthetic run directories (no sockets)."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bufdemo import analysis
from bufdemo.analysis import (
    FORMAT_VERSION,
    RunFormatError,
    format_summary,
    interval_indicator,
    load_run,
    phases,
    resumes,
    service_times,
    stalls,
    summarize,
    write_summary,
)
from bufdemo.analysis.stalls import STALL_COLUMNS
from bufdemo.analysis.summary import SUMMARY_KEYS
from bufdemo.runformat import OPTIONAL_TABLES, TABLES
from tests.synthetic import T0_NS, Model, Truth, simulate, write_run

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = Model()  # what default_run is built with: every expected number comes from it


@pytest.fixture(scope="module")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Truth]:
    path = tmp_path_factory.mktemp("run") / "default"
    return path, write_run(path, DEFAULT)


def _edit_meta(path: Path, **changes: object) -> None:
    meta = json.loads((path / "meta.json").read_text())
    meta.update(changes)
    (path / "meta.json").write_text(json.dumps(meta))


# -- load -------------------------------------------------------------------------------


def test_load_adds_seconds_beside_each_ns_column(default_run: tuple[Path, Truth]) -> None:
    run = load_run(default_run[0])
    cols = list(run.blocking_sends.columns)
    assert cols[cols.index("t_start_ns") + 1] == "t_start"
    assert cols[cols.index("t_end_ns") + 1] == "t_end"
    assert list(run.consumed.columns)[:7] == [
        "seq",
        "t_read_ns",
        "t_read",
        "t_start_ns",
        "t_start",
        "t_end_ns",
        "t_end",
    ]
    for frame in (run.sends, run.sender_samples, run.receiver_samples):
        assert list(frame.columns)[:2] == ["t_ns", "t"] or list(frame.columns)[1:3] == [
            "t_ns",
            "t",
        ]
        assert frame["t"].dtype == np.float64
    assert run.sends["t_ns"].dtype == np.int64  # exact: T0_NS is beyond float64's ns


def test_load_times_are_exact_seconds_since_t0(default_run: tuple[Path, Truth]) -> None:
    path, truth = default_run
    run = load_run(path)
    assert run.t0_ns == T0_NS
    assert run.sender_samples["t"].iloc[0] == 0.0
    np.testing.assert_allclose(run.blocking_sends["t_start"], truth.stall_starts, atol=1e-12)
    assert run.consumed["t_end"].max() == pytest.approx(truth.receiver_done, abs=1e-12)


def test_load_sender_only_run_has_empty_receiver_tables(tmp_path: Path) -> None:
    write_run(tmp_path, sides=("sender",))
    run = load_run(tmp_path)
    assert run.consumed.empty
    assert run.receiver_samples.empty
    assert {"t_read", "t_start", "t_end", "intact"} <= set(run.consumed.columns)
    assert "inq" in run.receiver_samples.columns
    assert run.has_sender
    assert not run.has_receiver


def test_load_receiver_only_run_has_empty_sender_tables(tmp_path: Path) -> None:
    write_run(tmp_path, sides=("receiver",))
    run = load_run(tmp_path)
    assert run.sends.empty
    assert run.blocking_sends.empty
    assert {"t_start", "t_end", "outq_start"} <= set(run.blocking_sends.columns)
    assert not run.has_sender


def test_load_empty_probe_cells_become_nan(tmp_path: Path) -> None:
    model = Model(messages=200, empty_probes=("outq_nsd", "snd_wnd"))
    write_run(tmp_path, model)
    samples = load_run(tmp_path).sender_samples
    assert [c for c in samples.columns if samples[c].isna().all()] == list(model.empty_probes)
    assert samples.drop(columns=list(model.empty_probes)).notna().all().all()


def test_errors_missing_and_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(RunFormatError, match="no such run directory"):
        load_run(tmp_path / "nope")
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(RunFormatError, match="not a directory"):
        load_run(file)
    with pytest.raises(RunFormatError, match=r"not a run directory \(no meta.json\)"):
        load_run(tmp_path)


def test_error_corrupt_meta(tmp_path: Path) -> None:
    write_run(tmp_path, Model(messages=100))
    (tmp_path / "meta.json").write_text('{"format_version": 1, ')
    with pytest.raises(RunFormatError, match="corrupt json"):
        load_run(tmp_path)


def test_error_newer_format_says_upgrade(tmp_path: Path) -> None:
    write_run(tmp_path, Model(messages=100))
    _edit_meta(tmp_path, format_version=7)
    with pytest.raises(RunFormatError) as info:
        load_run(tmp_path)
    assert str(info.value) == "run format 7 is newer than this bufdemo reads (1); upgrade bufdemo"
    assert FORMAT_VERSION == 1
    assert isinstance(info.value, ValueError)


def test_error_missing_column(tmp_path: Path) -> None:
    write_run(tmp_path, Model(messages=100))
    frame = pd.read_csv(tmp_path / "consumed.csv").drop(columns=["intact"])
    frame.to_csv(tmp_path / "consumed.csv", index=False)
    with pytest.raises(RunFormatError, match=r"consumed.csv: missing column\(s\) intact"):
        load_run(tmp_path)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda text: text[: text.rindex("\n", 0, len(text) - 1) + 8], id="cut"),
        pytest.param(lambda text: text.replace("\n5,", "\nfive,", 1), id="not-a-number"),
        pytest.param(lambda text: text.rstrip("\n") + ",1,2,3\n", id="extra-fields"),
        pytest.param(lambda text: "", id="empty"),
    ],
)
def test_error_truncated_or_corrupt_table(tmp_path: Path, damage: object) -> None:
    write_run(tmp_path, Model(messages=100))
    table = tmp_path / "sends.csv"
    assert callable(damage)
    table.write_text(damage(table.read_text()))
    with pytest.raises(RunFormatError, match=r"^sends.csv: ") as info:
        load_run(tmp_path)
    assert "\n" not in str(info.value)


# -- the synthetic model itself ----------------------------------------------------------


@pytest.mark.parametrize(
    "model",
    [
        DEFAULT,
        Model(messages=DEFAULT.first_blocking_seq),  # the longest run without a stall
        Model(messages=DEFAULT.first_blocking_seq + 1),  # exactly one
        Model(messages=300, wake_msgs=3),
        Model(messages=3000, sndbuf_msgs=400, rcvbuf_msgs=200),  # fills slower than 1 read
        Model(messages=500, sndbuf_msgs=5, wake_msgs=0, rcvbuf_msgs=1, send_gap=5e-6),
    ],
    ids=lambda m: f"n{m.messages}-q{m.sndbuf_msgs}-w{m.wake}-r{m.rcvbuf_msgs}-gap{m.send_gap:g}",
)
def test_the_simulation_does_what_its_parameters_say(model: Model) -> None:
    """The closed forms the tests use agree with the simulation that writes the files."""
    sim = simulate(model)
    blocked = np.flatnonzero(sim["blocked"])
    assert len(blocked) == model.expected_stalls
    if len(blocked):
        assert blocked[0] == model.first_blocking_seq
        assert set(np.diff(blocked)) <= {model.sndbuf_msgs - model.wake}
        # At each stall the queue is full; it wakes with ``wake`` left plus the blocked one.
        assert set(sim["outq_start"][blocked]) == {model.sndbuf_msgs * model.size}
        assert set(sim["outq_end"][blocked]) == {(model.wake + 1) * model.size}


# -- stalls and resumes -----------------------------------------------------------------


def test_stalls_match_the_model(default_run: tuple[Path, Truth]) -> None:
    path, truth = default_run
    s = stalls(load_run(path))
    assert list(s.columns) == list(STALL_COLUMNS)
    assert len(s) == truth.stall_count == DEFAULT.expected_stalls
    np.testing.assert_allclose(s["start"], truth.stall_starts, atol=1e-12)
    np.testing.assert_allclose(s["end"], truth.stall_ends, atol=1e-12)
    np.testing.assert_allclose(s["duration"], truth.stall_ends - truth.stall_starts, atol=1e-12)
    np.testing.assert_array_equal(s["outq_wake"], truth.outq_wake)
    np.testing.assert_array_equal(s["drained"], truth.outq_start - truth.outq_wake)


def test_wake_ratio_is_two_thirds_under_the_kernel_rule(default_run: tuple[Path, Truth]) -> None:
    s = stalls(load_run(default_run[0]))
    assert DEFAULT.wake_msgs is None  # the default wake rule: 2/3 of the queue
    assert s["wake_ratio"].median() == pytest.approx(DEFAULT.wake / DEFAULT.sndbuf_msgs)
    assert DEFAULT.wake / DEFAULT.sndbuf_msgs == pytest.approx(2 / 3, abs=0.01)


def test_wake_ratio_follows_the_data_not_a_constant(tmp_path: Path) -> None:
    model = Model(messages=300, sndbuf_msgs=12, wake_msgs=3)
    write_run(tmp_path, model)
    run = load_run(tmp_path)
    s = stalls(run)
    assert len(s) == model.expected_stalls > 0
    ratio = model.wake / model.sndbuf_msgs
    assert ratio != pytest.approx(2 / 3, abs=0.1)  # far from the kernel's rule
    assert (s["wake_ratio"] == ratio).all()
    notes = summarize(run)["notes"]
    expected = f"send() returned with the queue at {ratio:.0%} of its depth"
    assert any(n.startswith(expected) for n in notes)


def test_no_wake_ratio_note_under_the_two_thirds_rule(default_run: tuple[Path, Truth]) -> None:
    notes = summarize(load_run(default_run[0]))["notes"]
    assert not any("wake rule" in n for n in notes)


def test_stalls_from_a_raw_table_with_t0(default_run: tuple[Path, Truth]) -> None:
    path, truth = default_run
    raw = pd.read_csv(path / "blocking_sends.csv")
    s = stalls(raw, t0_ns=T0_NS)
    np.testing.assert_allclose(s["start"], truth.stall_starts, atol=1e-9)


def test_unfinished_stall_has_no_end_and_no_resume() -> None:
    table = pd.DataFrame(
        {
            "seq": [10, 20],
            "t_start_ns": [1_000_000_000, 2_000_000_000],
            "t_end_ns": pd.array([1_500_000_000, None], dtype="Int64"),
            "accepted_first": [0, 0],
            "bytes_after_wait": [1024, 1024],
            "outq_start": [3072.0, 3072.0],
            "outq_end": [3072.0, np.nan],
            "sndbuf_start": [8192.0, 8192.0],
        }
    )
    s = stalls(table)
    assert s["end"].isna().tolist() == [False, True]
    r = resumes(table)
    assert r["seq"].tolist() == [10]
    assert r["t"].tolist() == [1.5]
    assert r["outq_wake"].tolist() == [2048.0]
    assert r["drained"].tolist() == [1024.0]
    assert r["of_stall_start"].tolist() == pytest.approx([2 / 3])
    assert r["of_sndbuf"].tolist() == [0.25]


def test_resumes_of_sndbuf_is_payload_over_truesize(default_run: tuple[Path, Truth]) -> None:
    r = resumes(load_run(default_run[0]))
    # The model's queue holds 12 KiB of payload against a 16 KiB truesize limit.
    assert DEFAULT.sndbuf_msgs * DEFAULT.size < DEFAULT.sndbuf_granted
    assert len(r) == DEFAULT.expected_stalls
    assert (r["of_sndbuf"] == DEFAULT.wake * DEFAULT.size / DEFAULT.sndbuf_granted).all()
    assert (r["of_stall_start"] == DEFAULT.wake / DEFAULT.sndbuf_msgs).all()


blocking_rows = st.lists(
    st.tuples(
        st.integers(0, 10**12),  # start (ns)
        st.integers(0, 10**10),  # duration (ns)
        st.integers(0, 10**7),  # outq_start
        st.integers(0, 10**7),  # outq_end
        st.integers(0, 65536),  # bytes_after_wait
    ),
    max_size=60,
)


@given(blocking_rows)
@settings(max_examples=150, deadline=None)
def test_stall_invariants_on_arbitrary_tables(rows: list[tuple[int, int, int, int, int]]) -> None:
    table = pd.DataFrame(
        {
            "seq": np.arange(len(rows), dtype=np.int64),
            "t_start_ns": [r[0] for r in rows],
            "t_end_ns": [r[0] + r[1] for r in rows],
            "bytes_after_wait": [r[4] for r in rows],
            "outq_start": [float(r[2]) for r in rows],
            "outq_end": [float(r[3]) for r in rows],
        },
        dtype="int64",
    ).astype({"outq_start": "float64", "outq_end": "float64"})
    s = stalls(table)
    assert len(s) == len(rows)
    assert (np.diff(s["start"]) >= 0).all()
    assert (s["duration"] >= 0).all()
    np.testing.assert_allclose(s["end"] - s["start"], s["duration"])
    np.testing.assert_array_equal(s["outq_wake"] + s["drained"], s["outq_start"])
    positive = s["outq_start"] > 0
    np.testing.assert_allclose(
        s.loc[positive, "wake_ratio"], s.loc[positive, "outq_wake"] / s.loc[positive, "outq_start"]
    )
    assert s.loc[~positive, "wake_ratio"].isna().all()
    assert sorted(s["seq"]) == list(range(len(rows)))


intervals = st.lists(
    st.tuples(st.integers(-1000, 1000), st.integers(0, 300)).map(lambda p: (p[0], p[0] + p[1])),
    max_size=40,
)


@given(intervals, st.lists(st.integers(-1400, 1400), max_size=30))
@settings(max_examples=200, deadline=None)
def test_interval_indicator_is_exact(spans: list[tuple[int, int]], probes: list[int]) -> None:
    starts = [float(a) for a, _ in spans]
    ends = [float(b) for _, b in spans]
    x, y = interval_indicator(starts, ends)
    assert (np.diff(x) > 0).all()  # merged: disjoint, non-touching, in order
    assert y.tolist() == [1.0, 0.0] * (len(x) // 2)
    # Probe at given points and at every midpoint: the step function says "inside"
    # exactly where some non-empty interval [start, end) contains the point.
    points = [float(p) for p in probes] + [(a + b) / 2 for a, b in spans if b > a]
    for p in points:
        i = int(np.searchsorted(x, p, side="right")) - 1
        value = y[i] if i >= 0 else 0.0
        inside = any(a <= p < b for a, b in spans)
        assert value == float(inside), (p, spans)


def test_interval_indicator_skips_nan_and_empty() -> None:
    x, y = interval_indicator([0.0, 5.0, np.nan, 9.0], [1.0, 5.0, 3.0, np.nan])
    assert x.tolist() == [0.0, 1.0]
    assert y.tolist() == [1.0, 0.0]


# -- phases and service -----------------------------------------------------------------


def test_phases_of_a_full_run(default_run: tuple[Path, Truth]) -> None:
    path, truth = default_run
    p = phases(load_run(path))
    assert [ph.name for ph in p] == DEFAULT.expected_phases() == ["fill", "stall/resume", "drain"]
    assert p[0].start == 0.0
    assert p[0].end == pytest.approx(truth.stall_starts[0])
    assert p[1].start == p[0].end
    assert p[1].end == pytest.approx(truth.sender_done)
    assert p[2].start == p[1].end
    assert p[2].end == pytest.approx(truth.receiver_done)


def test_phases_without_a_stall(tmp_path: Path) -> None:
    model = Model(messages=DEFAULT.first_blocking_seq)  # one message short of a stall
    truth = write_run(tmp_path, model)
    assert truth.stall_count == model.expected_stalls == 0
    p = phases(load_run(tmp_path))
    assert [ph.name for ph in p] == model.expected_phases() == ["fill", "drain"]
    assert p[0].end == pytest.approx(truth.sender_done)
    assert p[1].end == pytest.approx(truth.receiver_done)


def test_phases_of_one_side(tmp_path: Path) -> None:
    model = Model(messages=300)
    truth = write_run(tmp_path / "s", model, sides=("sender",))
    p = phases(load_run(tmp_path / "s"))
    assert [ph.name for ph in p] == model.expected_phases(("sender",)) == ["fill", "stall/resume"]
    assert p[-1].end == pytest.approx(truth.sender_done)
    write_run(tmp_path / "r", model, sides=("receiver",))
    receiver_only = [ph.name for ph in phases(load_run(tmp_path / "r"))]
    assert receiver_only == model.expected_phases(("receiver",)) == []


def test_phases_fall_back_to_sends_without_meta_done(tmp_path: Path) -> None:
    truth = write_run(tmp_path, Model(messages=300))
    meta = json.loads((tmp_path / "meta.json").read_text())
    del meta["sender"]["t_done_ns"]
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    assert phases(load_run(tmp_path))[1].end == pytest.approx(truth.sender_done)


def test_service_times_only_backlogged_messages(default_run: tuple[Path, Truth]) -> None:
    run = load_run(default_run[0])
    service = service_times(run.consumed)
    # Message 0 found an empty queue (the receiver waited for it): not a backlogged one.
    assert 0 not in service.index
    assert len(service) == len(run.consumed) - 1
    # The model's receiver: 1 ms target, each message overshooting it by 20 us. The
    # overshoot is absorbed, not carried forward: consecutive ends stay 1 ms apart.
    assert DEFAULT.overshoot > 0
    np.testing.assert_allclose(service.to_numpy(), DEFAULT.recv_delay, atol=1e-9)


# -- summary ----------------------------------------------------------------------------


def _documented_summary_keys() -> list[str]:
    text = (ROOT / "docs" / "run-format.md").read_text()
    section = text[text.index("## summary.json") : text.index("## Versions")]
    keys: list[str] = []
    for line in section.splitlines():
        if line.startswith("| `"):
            keys += re.findall(r"`(\w+)`", line.split("|")[1])
        elif line.startswith("plus,") or (keys and not line.startswith("|")):
            keys += [k for k in re.findall(r"`(\w+)`", line) if k not in ("t0_ns",)]
    return [k for k in keys if k not in ("fill", "start", "end")]


def test_summary_keys_match_the_documented_contract(default_run: tuple[Path, Truth]) -> None:
    summary = summarize(load_run(default_run[0]))
    assert list(summary) == list(SUMMARY_KEYS)
    assert set(SUMMARY_KEYS) == set(_documented_summary_keys())


def test_summary_values(default_run: tuple[Path, Truth]) -> None:
    path, truth = default_run
    s = summarize(load_run(path))
    m = DEFAULT
    assert s["messages_sent"] == s["messages_received"] == s["messages_intact"] == m.messages
    assert s["messages_lost"] == 0
    assert s["blocking_sends"] == s["stall_count"] == truth.stall_count
    assert s["stall_seconds"] == pytest.approx(float(np.sum(truth.stall_ends - truth.stall_starts)))
    assert s["first_stall_seconds"] == pytest.approx(truth.stall_starts[0])
    assert s["sender_seconds"] == pytest.approx(truth.sender_done)
    assert s["receiver_seconds"] == pytest.approx(truth.receiver_done)
    assert (s["sndbuf_requested"], s["sndbuf_granted"]) == (m.sndbuf_requested, m.sndbuf_granted)
    assert (s["rcvbuf_requested"], s["rcvbuf_granted"]) == (m.rcvbuf_requested, m.rcvbuf_granted)
    assert s["max_send_queue_bytes"] == m.sndbuf_msgs * m.size
    assert s["max_recv_queue_bytes"] == m.rcvbuf_msgs * m.size
    assert s["complete"] is True
    assert s["resume_queue_ratio_median"] == pytest.approx(m.wake / m.sndbuf_msgs)
    assert s["service_seconds_mean"] == pytest.approx(m.recv_delay)
    assert list(s["phases"]) == m.expected_phases()
    assert s["phases"]["drain"]["end"] == pytest.approx(truth.receiver_done)
    json.dumps(s, allow_nan=False)  # JSON-ready as it is


def test_note_no_stall_says_what_to_change(tmp_path: Path) -> None:
    model = Model(messages=10, sndbuf_msgs=100, sndbuf_granted=16384)
    write_run(tmp_path, model)
    s = summarize(load_run(tmp_path))
    assert s["stall_count"] == model.expected_stalls == 0
    assert s["first_stall_seconds"] is None
    note = next(n for n in s["notes"] if n.startswith("no stall observed"))
    # Sampled at 1 ms: what the receiver's buffer (and its first read) could not take is
    # still queued: 3 KiB of payload, against 16 KiB: 19%.
    peak = (model.messages - model.rcvbuf_msgs - 1) * model.size / model.sndbuf_granted
    assert f"the send queue peaked at {peak:.0%} of SO_SNDBUF" in note
    assert "--messages" in note
    assert "--recv-delay" in note


def test_note_doubling_only_when_granted_is_twice_requested(tmp_path: Path) -> None:
    write_run(tmp_path / "set", Model(messages=200))
    notes = summarize(load_run(tmp_path / "set"))["notes"]
    doubling = [n for n in notes if "doubles the setsockopt value" in n]
    assert len(doubling) == 2
    assert any(n.startswith("SO_SNDBUF") and "autotuning off" in n for n in doubling)
    write_run(
        tmp_path / "auto",
        Model(
            messages=200,
            sndbuf_requested=None,
            rcvbuf_requested=None,
            sndbuf_granted=4_000_000,
            rcvbuf_granted=131072,
        ),
    )
    s = summarize(load_run(tmp_path / "auto"))
    assert (s["sndbuf_requested"], s["rcvbuf_requested"]) == (None, None)
    assert not any("setsockopt" in n for n in s["notes"])


def test_note_clamped_buffer(tmp_path: Path) -> None:
    write_run(tmp_path, Model(messages=200, sndbuf_requested=8_000_000, sndbuf_granted=8388608))
    notes = summarize(load_run(tmp_path))["notes"]
    assert any("clamped it to net.core.wmem_max" in n for n in notes)


def test_note_zero_window_probe_trap(tmp_path: Path) -> None:
    write_run(tmp_path, Model(messages=300))
    calm = summarize(load_run(tmp_path))["notes"]
    assert any(n.startswith("small receive buffer") for n in calm)
    assert not any("zero-window-probe trap" in n for n in calm)
    # The trap's signature: during stalls the receiver has nothing to read.
    samples = pd.read_csv(tmp_path / "receiver_samples.csv")
    samples["inq"] = 0
    samples.to_csv(tmp_path / "receiver_samples.csv", index=False)
    trapped = summarize(load_run(tmp_path))["notes"]
    note = next(n for n in trapped if n.startswith("zero-window-probe trap"))
    assert "both sides idle" in note
    assert "--rcvbuf 131072" in note


def test_no_trap_note_with_a_large_receive_buffer(tmp_path: Path) -> None:
    write_run(tmp_path, Model(messages=300, rcvbuf_requested=None, rcvbuf_granted=131072))
    notes = summarize(load_run(tmp_path))["notes"]
    assert not any("MSS" in n for n in notes)


def test_note_incomplete_and_lost(tmp_path: Path) -> None:
    model = Model(messages=300)
    write_run(tmp_path, model)
    received = 250  # the receiver's table cut after this many rows, one of them corrupt
    consumed = pd.read_csv(tmp_path / "consumed.csv")
    consumed = consumed.iloc[:received]
    consumed.loc[10, "intact"] = 0
    consumed.to_csv(tmp_path / "consumed.csv", index=False)
    _edit_meta(tmp_path, outcome={"complete": False, "reason": "receiver: connection reset"})
    s = summarize(load_run(tmp_path))
    lost = model.messages - (received - 1)
    assert s["complete"] is False
    assert s["messages_received"] == received
    assert s["messages_intact"] == received - 1
    assert s["messages_lost"] == lost
    assert any(n.startswith("run incomplete: receiver: connection reset") for n in s["notes"])
    assert any(n.startswith(f"{lost} of {model.messages} messages lost") for n in s["notes"])


def test_note_busy_receiver(tmp_path: Path) -> None:
    model = Model(messages=300)
    write_run(tmp_path, model)
    # A receiver that could not keep its pace: ends 1.2 ms apart instead of 1 ms.
    path = tmp_path / "consumed.csv"
    consumed = pd.read_csv(path)
    pace_ns = round(model.recv_delay * 1.2e9)
    consumed["t_end_ns"] = consumed["t_end_ns"].iloc[0] + np.arange(model.messages) * pace_ns
    consumed["t_start_ns"] = np.minimum(consumed["t_start_ns"], consumed["t_end_ns"])
    consumed.to_csv(path, index=False)
    notes = summarize(load_run(tmp_path))["notes"]
    assert any(f"+20% off --recv-delay {model.recv_delay * 1e3:g} ms" in n for n in notes)


def test_summary_of_one_side(tmp_path: Path) -> None:
    model = Model(messages=300)
    write_run(tmp_path / "s", model, sides=("sender",))
    s = summarize(load_run(tmp_path / "s"))
    assert s["messages_sent"] == model.messages
    assert s["stall_count"] == model.expected_stalls
    assert s["messages_received"] is None
    assert s["messages_lost"] is None
    assert s["receiver_seconds"] is None
    assert any(n.startswith("receiver side not recorded") for n in s["notes"])
    write_run(tmp_path / "r", model, sides=("receiver",))
    r = summarize(load_run(tmp_path / "r"))
    assert r["messages_received"] == model.messages
    assert r["stall_count"] is None  # unknown, not zero
    assert not any(n.startswith("no stall observed") for n in r["notes"])
    assert any(n.startswith("sender side not recorded") for n in r["notes"])
    lines = format_summary(r)
    assert f"{model.messages:,} received" in lines[0]
    # Stalls are unknown without the sender's tables: said so, not printed as "none".
    (stall_line,) = [line for line in lines if line.startswith("stalls")]
    assert "unknown" in stall_line


def test_format_summary_lines(default_run: tuple[Path, Truth]) -> None:
    lines = format_summary(summarize(load_run(default_run[0])))
    assert all(isinstance(line, str) and "\n" not in line for line in lines)
    text = "\n".join(lines)
    assert f"{DEFAULT.expected_stalls:,} blocking sends" in text
    assert f"{DEFAULT.messages:,} sent" in text
    assert "notes" in lines


def test_write_summary_round_trips(tmp_path: Path) -> None:
    write_run(tmp_path, Model(messages=300))
    run = load_run(tmp_path)
    path = write_summary(run)
    assert path == tmp_path / "summary.json"
    assert json.loads(path.read_text()) == json.loads(json.dumps(summarize(run)))


# -- package surface --------------------------------------------------------------------


def test_public_api_is_complete() -> None:
    required = {
        "load_run",
        "Run",
        "RunFormatError",
        "FORMAT_VERSION",
        "stalls",
        "phases",
        "resumes",
        "service_times",
        "summarize",
        "format_summary",
        "timeline_figure",
        "zoom_figure",
        "plot_messages",
        "plot_queues",
        "plot_window",
        "plot_blocking",
        "shade_stalls",
        "mark_phases",
        "save_figures",
        "write_summary",
    }
    assert required <= set(analysis.__all__)
    assert sorted(analysis.__all__) == analysis.__all__
    assert [name for name in analysis.__all__ if not hasattr(analysis, name)] == []


NETWORK_MODULES = {"socket", "selectors", "select", "ssl", "socketserver", "asyncio"}
# What analysis may use of bufdemo: itself, the run format and the error types.
ANALYSIS_MAY_IMPORT = ("bufdemo.analysis", "bufdemo.errors", "bufdemo.runformat")


def _imported(file: Path) -> list[str]:
    """Every module (or module.name) a file of analysis/ imports, relative ones resolved."""
    package = ["bufdemo", "analysis", *file.parent.relative_to(ROOT / "analysis").parts]
    names: list[str] = []
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = [node.module] if node.module else []
            if node.level:
                base = package[: len(package) - node.level + 1] + base
            names += [".".join([*base, a.name]) for a in node.names]
    return names


def test_analysis_never_imports_the_live_experiment_or_sockets() -> None:
    """analysis reads run directories: no socket, and nothing of bufdemo that has one."""
    files = sorted((ROOT / "analysis").rglob("*.py"))
    assert files
    seen: list[str] = []
    for file in files:
        for name in _imported(file):
            seen.append(name)
            assert name.split(".")[0] not in NETWORK_MODULES, (file, name)
            if name.split(".")[0] == "bufdemo":
                assert name.startswith(tuple(f"{m}." for m in ANALYSIS_MAY_IMPORT)), (file, name)
    # The scan sees the imports it judges (a renamed package must not make it vacuous).
    assert any(name.startswith("bufdemo.runformat.") for name in seen)


def test_every_table_of_the_format_is_loaded(default_run: tuple[Path, Truth]) -> None:
    run = load_run(default_run[0])
    for stem in TABLES:
        frame = getattr(run, stem)
        assert not frame.empty or stem in OPTIONAL_TABLES  # link_samples: --netns only
        assert set(TABLES[stem]) <= set(frame.columns)


def test_a_killed_senders_count_comes_from_live_progress_and_says_so(tmp_path: Path) -> None:
    write_run(tmp_path, Model(messages=300), sides=("receiver",))
    meta = json.loads((tmp_path / "meta.json").read_text())
    meta["last_progress"] = {
        "source": "live progress display",
        "sender": {"messages": 250, "blocking_sends": 3},
        "receiver": {"messages": 200, "intact": 200},
    }
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    s = summarize(load_run(tmp_path))
    assert s["messages_sent"] == 250
    assert s["notes"][0].startswith("messages_sent (250) comes from the live progress counter")
