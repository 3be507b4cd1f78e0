"""analysis.plots and report: figures checked through their axes and artists, not pixels."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display; the figures use the object API and never need one

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.collections import LineCollection, PathCollection, PolyCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.text import Text

from bufdemo.analysis import (
    Run,
    load_run,
    mark_phases,
    phases,
    plot_blocking,
    plot_messages,
    plot_queues,
    plot_window,
    save_figures,
    shade_stalls,
    stalls,
    timeline_figure,
    zoom_figure,
)
from bufdemo.analysis.plots import band, envelope, stride
from tests.synthetic import Model, Truth, write_run

# Deep queues, so that each stall and each resume is wide enough to see and to probe.
MODEL = Model(messages=3000, sndbuf_msgs=400, rcvbuf_msgs=200)
# Enough messages for thousands of stalls with the default (shallow) queues.
MANY = Model(messages=20000)


@pytest.fixture(scope="module")
def run_and_truth(tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, Truth]:
    path = tmp_path_factory.mktemp("plots") / "run"
    truth = write_run(path, MODEL)
    return load_run(path), truth


def _by_gid(fig: Figure, gid: str) -> list[object]:
    return [a for ax in fig.axes for a in ax.get_children() if a.get_gid() == gid]


def test_timeline_has_four_panels_on_one_time_axis(run_and_truth: tuple[Run, Truth]) -> None:
    fig = timeline_figure(run_and_truth[0])
    axes = fig.axes
    assert len(axes) == 4
    for ax in axes[1:]:
        assert axes[0].get_shared_x_axes().joined(axes[0], ax)
    assert axes[-1].get_xlabel() == "time since connection (s)"
    ylabels = [ax.get_ylabel() for ax in axes]
    assert "cumulative" in ylabels[0]
    assert "(KiB)" in ylabels[1]
    assert "KiB" in ylabels[2]
    assert "(ms)" in ylabels[3]
    title = fig.get_suptitle()
    m = MODEL
    assert f"{m.messages:,} messages × {m.size} B" in title
    assert f"recv-delay {m.recv_delay * 1e3:g} ms" in title
    assert m.sndbuf_requested is not None
    granted, asked = m.sndbuf_granted // 1024, m.sndbuf_requested // 1024
    assert f"SO_SNDBUF {granted} KiB (asked {asked} KiB)" in title


def test_timeline_shades_stalls_in_every_panel(run_and_truth: tuple[Run, Truth]) -> None:
    run, truth = run_and_truth
    assert truth.stall_count == MODEL.expected_stalls > 1
    fig = timeline_figure(run)
    shades = _by_gid(fig, "stalls")
    assert len(shades) == 4  # one artist per panel, however many stalls
    assert {id(getattr(s, "axes", None)) for s in shades} == {id(ax) for ax in fig.axes}
    # Each panel's shading covers every stall, and not the fill before the first one.
    middles = (truth.stall_starts + truth.stall_ends) / 2
    for shade in shades:
        assert all(_covered(shade, float(t)) for t in middles)
        assert not _covered(shade, float(truth.stall_starts[0]) / 2)


def test_timeline_labels_the_three_phases(run_and_truth: tuple[Run, Truth]) -> None:
    fig = timeline_figure(run_and_truth[0])
    top = fig.axes[0]
    labels = {
        t.get_gid(): t.get_text() for t in top.get_children() if isinstance(t, Text) and t.get_gid()
    }
    assert labels == {
        "phase-label:fill": "fill",
        "phase-label:stall/resume": "stall / resume",
        "phase-label:drain": "drain",
    }
    assert len(_by_gid(fig, "phase:drain")) == 1
    # Boundaries at the first stall, the sender's end and the receiver's end, in every panel.
    p = phases(run_and_truth[0])
    for ax in fig.axes:
        xs = {
            line.get_xdata()[0]  # type: ignore[index]
            for line in ax.get_lines()
            if line.get_linestyle() in ("--", ":") and len(line.get_xdata()) == 2  # type: ignore[arg-type]
        }
        assert {p[1].start, p[2].start, p[2].end} <= xs


def test_timeline_lines_carry_the_data(run_and_truth: tuple[Run, Truth]) -> None:
    run, _ = run_and_truth
    fig = timeline_figure(run)
    labels = [line.get_label() for ax in fig.axes for line in ax.get_lines()]
    for expected in (
        "sent (handed to kernel)",
        "consumed by receiver",
        "send queue (SIOCOUTQ)",
        "receive queue (SIOCINQ)",
        "SO_SNDBUF (limit)",
        "SO_RCVBUF (limit)",
        "receiver's window, seen by sender (snd_wnd)",
    ):
        assert any(str(label).startswith(expected) for label in labels), expected
    sent = next(ln for ln in fig.axes[0].get_lines() if str(ln.get_label()).startswith("sent"))
    assert np.asarray(sent.get_ydata())[-1] == MODEL.messages
    for ax in fig.axes:
        assert ax.get_legend() is not None


def test_shade_stalls_is_one_artist_for_thousands(tmp_path: Path) -> None:
    write_run(tmp_path, MANY)
    run = load_run(tmp_path)
    table = stalls(run)
    assert len(table) == MANY.expected_stalls >= 1000
    fig = Figure()
    ax = fig.add_subplot()
    artists = shade_stalls(ax, table, label="stall", min_gap=0.0)
    assert len(artists) == 1
    assert artists[0].axes is ax
    # Every stall is in the one polygon set: nothing was decimated away.
    poly = artists[0]
    assert isinstance(poly, PolyCollection)
    vertices = sum(int(np.shape(p.vertices)[0]) for p in poly.get_paths())
    assert vertices >= 2 * len(table)


def _covered(artist: object, t: float) -> bool:
    assert isinstance(artist, PolyCollection)
    return any(p.contains_point((t, 0.5)) for p in artist.get_paths())


def test_shade_stalls_closes_only_gaps_below_min_gap() -> None:
    table = pd.DataFrame({"start": [0.0, 1.05, 3.0], "end": [1.0, 2.0, 4.0]})
    fig = Figure()
    ax = fig.add_subplot()
    (shade,) = shade_stalls(ax, table, min_gap=0.1)
    assert _covered(shade, 1.02)  # the 0.05 s resume is closed
    assert not _covered(shade, 2.5)  # the 1 s resume stays open
    assert _covered(shade, 3.99)
    assert not _covered(shade, 4.01)  # stalls are not lengthened


def test_dense_blocking_panel_keeps_the_longest_waits() -> None:
    rng = np.random.default_rng(1)
    start = np.sort(rng.uniform(0, 100, 50_000))
    duration = rng.uniform(0, 0.004, start.size)
    duration[12345] = 0.009  # one long wait must survive
    table = pd.DataFrame({"start": start, "end": start + duration, "duration": duration})
    fig = Figure()
    ax = fig.add_subplot()
    (stems,) = plot_blocking(ax, table, max_flags=1000)
    assert isinstance(stems, LineCollection)
    segments = stems.get_segments()
    assert len(segments) <= 1000
    assert max(float(seg[1][1]) for seg in segments) == pytest.approx(9.0)


def test_no_stall_means_no_shading(tmp_path: Path) -> None:
    model = Model(messages=Model().first_blocking_seq)  # one message short of a stall
    assert model.expected_stalls == 0
    write_run(tmp_path, model)
    run = load_run(tmp_path)
    fig = Figure()
    ax = fig.add_subplot()
    assert shade_stalls(ax, stalls(run)) == []
    timeline = timeline_figure(run)
    assert _by_gid(timeline, "stalls") == []
    assert "0 stalls" in timeline.get_suptitle()
    assert "no stall" in zoom_figure(run).get_suptitle()


def test_panel_helpers_return_their_artists(run_and_truth: tuple[Run, Truth]) -> None:
    run, _ = run_and_truth
    fig = Figure()
    axes = fig.subplots(5, 1)
    made = [
        plot_messages(axes[0], run),
        plot_queues(axes[1], run, wakes=True),
        plot_window(axes[2], run),
        plot_blocking(axes[3], stalls(run)),
        mark_phases(axes[4], phases(run), ribbon=True),
    ]
    for ax, artists in zip(axes, made, strict=True):
        assert artists
        for artist in artists:
            assert artist.axes is ax
    assert any(isinstance(a, PathCollection) for a in made[1])  # block / wake-up markers
    assert any(isinstance(a, LineCollection) for a in made[3])
    assert all(isinstance(a, Line2D) for a in made[0])


def test_zoom_shows_a_few_cycles_inside_the_stall_resume_phase(
    run_and_truth: tuple[Run, Truth],
) -> None:
    run, truth = run_and_truth
    fig = zoom_figure(run, cycles=3)
    lo, hi = fig.axes[0].get_xlim()
    phase = phases(run)[1]
    assert phase.start < lo < hi < phase.end
    blocked = ((truth.stall_starts >= lo) & (truth.stall_starts <= hi)).sum()
    assert 3 <= blocked <= 4
    assert len(fig.axes) == 4
    assert len(_by_gid(fig, "stalls")) == 4


def test_plots_of_one_side(tmp_path: Path) -> None:
    write_run(tmp_path / "s", Model(messages=300), sides=("sender",))
    fig = timeline_figure(load_run(tmp_path / "s"))
    labels = [line.get_label() for ax in fig.axes for line in ax.get_lines()]
    assert "consumed by receiver" not in labels
    assert "sent (handed to kernel)" in labels
    write_run(tmp_path / "r", Model(messages=300), sides=("receiver",))
    fig = timeline_figure(load_run(tmp_path / "r"))
    labels = [line.get_label() for ax in fig.axes for line in ax.get_lines()]
    assert "window the receiver advertises (rcv_wnd)" in labels
    assert "sent (handed to kernel)" not in labels


def test_long_lines_are_decimated_but_keep_their_ends(tmp_path: Path) -> None:
    write_run(tmp_path, MANY)
    run = load_run(tmp_path)
    fig = Figure()
    ax = fig.add_subplot()
    sent, consumed = plot_messages(ax, run, max_points=500)
    for line in (sent, consumed):
        y = np.asarray(line.get_ydata())  # type: ignore[attr-defined]
        assert len(y) <= 501
        assert y[-1] == MANY.messages


@given(
    st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=3000),
    st.integers(1, 50),
)
@settings(max_examples=100, deadline=None)
def test_envelope_keeps_every_extreme(values: list[float], bins: int) -> None:
    v = np.array(values)
    t = np.arange(v.size, dtype="float64")
    x, y = envelope(t, v, bins)
    assert y.max() == v.max()
    assert y.min() == v.min()
    assert (np.diff(x) >= 0).all()
    assert x.size <= max(v.size, 2 * bins + v.size % bins + 2 * bins)
    assert set(y.tolist()) <= set(v.tolist())


def test_stride_keeps_first_and_last() -> None:
    x = np.arange(10001, dtype="float64")
    sx, sy = stride(x, x * 2, 100)
    assert sx[0] == 0
    assert sx[-1] == 10000
    assert sy[-1] == 20000
    assert sx.size <= 102


def test_save_figures_writes_png_and_svg(tmp_path: Path) -> None:
    write_run(tmp_path / "run", Model(messages=300))
    run = load_run(tmp_path / "run")
    paths = save_figures(run)
    assert [p.name for p in paths] == [  # every PNG first: the pictures to look at
        "timeline.png",
        "zoom.png",
        "latency.png",
        "timeline.svg",
        "zoom.svg",
        "latency.svg",
    ]
    for p in paths:
        assert p.parent == tmp_path / "run"
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        else:
            assert "<svg" in p.read_text()[:2000]
            assert p.read_text().rstrip().endswith("</svg>")  # whole, not cut short
    assert not list((tmp_path / "run").glob("*.part*"))
    elsewhere = save_figures(run, tmp_path / "out")
    assert all(p.parent == tmp_path / "out" for p in elsewhere)


def test_each_side_has_its_own_panel_and_scale(run_and_truth: tuple[Run, Truth]) -> None:
    """A 4 MiB send queue must not flatten a 128 KiB receive queue: separate panels."""
    run, _ = run_and_truth
    fig = timeline_figure(run)
    sender_labels = [str(ln.get_label()) for ln in fig.axes[1].get_lines()]
    receiver_labels = [str(ln.get_label()) for ln in fig.axes[2].get_lines()]
    assert any(lb.startswith("send queue") for lb in sender_labels)
    assert not any(lb.startswith("receive queue") for lb in sender_labels)
    assert any(lb.startswith("receive queue") for lb in receiver_labels)
    assert any(lb.startswith("receiver's window") for lb in receiver_labels)
    assert fig.axes[1].get_ylabel().startswith("sender")
    assert fig.axes[2].get_ylabel().startswith("receiver")


def test_band_keeps_every_sample_and_the_range() -> None:
    t = np.arange(10_001, dtype="float64")
    v = np.sin(t)  # flickers faster than any bin
    v[-1] = 5.0  # the last sample lies in a partial bin and must not be cut
    tb, lo, mid, hi = band(t, v, bins=100)
    assert tb.size == lo.size == mid.size == hi.size <= 101
    assert tb[0] == 0
    assert hi.max() == 5.0
    assert lo.min() == pytest.approx(v.min())
    assert (lo <= mid).all()
    assert (mid <= hi).all()
    same = band(t[:50], v[:50], bins=100)
    assert (same[0] == t[:50]).all()
