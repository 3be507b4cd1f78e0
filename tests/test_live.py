"""The live display: pure functions of a snapshot, tested without a terminal."""

from __future__ import annotations

import io
import re
import time

import pytest
from rich.console import Console

from bufdemo.experiment import live
from bufdemo.experiment.live import (
    WIDTH,
    Reading,
    Snapshot,
    Tracker,
    live_display,
    render,
    sender_state,
    status_line,
)

S = 1_000_000_000  # ns per second
HUGE = 100_000_000  # the most messages a run may send (config.MAX_MESSAGES)
# Above any possible rate: HUGE messages in the shortest span a rate is given for (1/4 s).
FAST = 1e9

EXTREMES = {
    "run, both sides": Snapshot(
        elapsed=10 * 365 * 86400.0,
        total=HUGE,
        sent=HUGE - 1,
        consumed=HUGE - 2,
        send_queue=2**40,
        recv_queue=2**40,
        blocking_sends=HUGE,
        blocked_for=7 * 86400.0,
        send_rate=FAST,
        consume_rate=FAST,
        mode="select",
    ),
    "send, sender only": Snapshot(
        elapsed=1e7,
        total=HUGE,
        sent=HUGE,
        send_queue=2**31,
        blocking_sends=HUGE,
        blocked_for=1e7,
        send_rate=FAST,
    ),
    "receive, receiver only": Snapshot(
        elapsed=1e7,
        total=HUGE,
        consumed=HUGE,
        intact=HUGE,
        recv_queue=2**40,
        consume_rate=FAST,
    ),
    "receive, total not known yet": Snapshot(elapsed=1e7, consumed=HUGE, intact=HUGE),
    "nothing known yet": Snapshot(elapsed=0.0, total=HUGE, sent=0, consumed=0),
}


@pytest.mark.parametrize("snapshot", EXTREMES.values(), ids=EXTREMES.keys())
def test_the_display_fits_80_columns_at_the_extremes(snapshot: Snapshot) -> None:
    lines = render(snapshot)
    assert lines
    for line in lines:
        assert line.cell_len <= WIDTH, line.plain
    text = "\n".join(line.plain for line in lines)
    # It fits because it is laid out to, not because anything was cut off.
    assert "…" not in text
    assert f"{HUGE:,}" in text or snapshot.sent == 0


def test_the_bars_use_the_width_they_are_given() -> None:
    s = Snapshot(elapsed=1.0, total=20_000, sent=10_000, consumed=5_000)
    wide, narrow = render(s, 80), render(s, 60)
    assert wide[0].cell_len == 80  # the bar line fills the width
    assert narrow[0].cell_len == 60
    for line, width in ((wide[0], 80), (narrow[0], 60)):
        # "sent" + padding, the bar, " 10,000 / 20,000": half of the bar is drawn as done.
        bar = width - 10 - len(" 20,000 / 20,000")
        (done,) = [span for span in line.spans if span.style == "blue"]
        assert done.end - done.start == bar // 2
        assert line.plain[10 : 10 + bar] == "━" * bar


def test_a_blocked_sender_says_where_and_for_how_long() -> None:
    tracker = Tracker("blocking")
    now = 50 * S
    snapshot = tracker.observe(
        Reading(
            now,
            12.0,
            total=20_000,
            sent=8_000,
            consumed=5_000,
            blocking_sends=3,
            blocked_since_ns=now - 1_400_000_000,
        )
    )
    assert snapshot.blocked_for == pytest.approx(1.4)
    assert sender_state(snapshot) == "blocked in send() for 1.4 s"
    text = "\n".join(line.plain for line in render(snapshot))
    assert "blocked in send() for 1.4 s" in text
    assert "3 blocking sends" in text
    selecting = Tracker("select").observe(
        Reading(now, 1.0, total=10, sent=2, blocked_since_ns=now - 3 * S)
    )
    assert sender_state(selecting) == "blocked in select() for 3.0 s"
    draining = Tracker("asyncio").observe(
        Reading(now, 1.0, total=10, sent=2, blocked_since_ns=now - 2 * S)
    )
    assert sender_state(draining) == "blocked in drain() for 2.0 s"  # a drain() that waits


@pytest.mark.parametrize(
    ("sent", "consumed", "state"),
    [
        (0, 0, "starting"),
        (5, 0, "sending"),
        (10, 7, "done; the receiver drains the rest"),
        (10, 10, "done: every message handed to the kernel"),
        (10, None, "done: every message handed to the kernel"),
    ],
)
def test_the_sender_state_when_not_blocked(sent: int, consumed: int | None, state: str) -> None:
    s = Tracker().observe(Reading(S, 1.0, total=10, sent=sent, consumed=consumed))
    assert s.blocked_for is None
    assert sender_state(s) == state


def test_a_nodrain_sender_done_writing_is_not_done_sending() -> None:
    """asyncio-nodrain counts messages written to the transport: most still wait in
    asyncio's buffer when the last one is written."""
    s = Tracker("asyncio-nodrain").observe(Reading(S, 1.0, total=10, sent=10, consumed=3))
    assert sender_state(s) == "done writing; asyncio's buffer drains into the kernel"


def test_rates_are_messages_per_second_over_the_last_second() -> None:
    tracker = Tracker()
    first = tracker.observe(Reading(0, 0.0, total=10**6, sent=0, consumed=0))
    assert first.send_rate is None  # one reading says nothing about a rate
    # Four readings a second: the sender at 2,000 msg/s, the receiver at 1,000.
    s = first
    for i in range(1, 9):
        s = tracker.observe(Reading(i * S // 4, i / 4, total=10**6, sent=500 * i, consumed=250 * i))
    assert s.send_rate == pytest.approx(2000)
    assert s.consume_rate == pytest.approx(1000)
    # The sender stalls: within a second its rate is 0, the receiver's unchanged.
    for i in range(9, 14):
        s = tracker.observe(Reading(i * S // 4, i / 4, total=10**6, sent=4000, consumed=250 * i))
    assert s.send_rate == 0
    assert s.consume_rate == pytest.approx(1000)
    text = "\n".join(line.plain for line in render(s))
    assert "sent 0 msg/s" in text
    assert "consumed 1,000 msg/s" in text


def test_a_rate_covers_about_one_second_not_the_whole_run() -> None:
    tracker = Tracker()
    for i in range(0, 41):  # 10 s at 100 msg/s, then a burst of 5,000 in the last 0.25 s
        count = 100 * i // 4 + (5000 if i == 40 else 0)
        s = tracker.observe(Reading(i * S // 4, i / 4, total=10**6, sent=count))
    assert s.send_rate == pytest.approx(100 + 5000, rel=0.01)


def test_a_missing_queue_probe_shows_as_not_available() -> None:
    s = Snapshot(elapsed=1.0, total=10, sent=1, send_queue=-1)
    assert "send n/a" in "\n".join(line.plain for line in render(s))


@pytest.mark.parametrize(
    ("queue", "text"),
    [(0, "0 B"), (999, "999 B"), (10_240, "10.2 kB"), (4_141_056, "4.14 MB"), (2**31, "2.15 GB")],
)
def test_queue_depths_in_decimal_units(queue: int, text: str) -> None:
    assert live.size(queue) == text


def test_one_blocking_send_is_singular() -> None:
    s = Snapshot(elapsed=1.0, total=10, sent=5, blocking_sends=1)
    text = "\n".join(line.plain for line in render(s))
    assert re.search(r"\b1 blocking send$", text, re.MULTILINE)


def test_the_plain_status_line_carries_the_same_facts() -> None:
    now = 100 * S
    s = Tracker().observe(
        Reading(
            now,
            75.5,
            total=20_000,
            sent=12_345,
            consumed=10_001,
            send_queue=4_120_000,
            recv_queue=3_800_000,
            blocking_sends=7,
            blocked_since_ns=now - 2 * S,
        )
    )
    line = status_line(s)
    assert "\n" not in line
    assert line.startswith("[1 min 15 s] ")
    facts = [
        "sent 12,345/20,000",
        "blocked in send() for 2.0 s",
        "7 blocking sends",
        "send queue 4.12 MB",
        "consumed 10,001/20,000",
        "receive queue 3.80 MB",
    ]
    for fact in facts:
        assert fact in line, fact
    waiting = status_line(Snapshot(elapsed=0.0, consumed=0, intact=0))
    assert waiting == "[0.0 s] waiting for a sender"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.04, "0.0 s"), (59.94, "59.9 s"), (65, "1 min 05 s"), (3599, "59 min 59 s"),
     (100_000, "27 h 46 min"), (3.2e8, "88,888 h 53 min")],
)  # fmt: skip
def test_durations_stay_short(seconds: float, text: str) -> None:
    assert live.duration(seconds) == text


def _reading() -> Reading:
    now = time.perf_counter_ns()
    return Reading(now, 3.0, total=1000, sent=400, consumed=300, blocked_since_ns=now - S)


def test_without_a_terminal_it_prints_plain_status_lines_every_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(live, "STATUS_INTERVAL", 0.05)
    stream = io.StringIO()
    console = Console(file=stream, force_terminal=False, width=80)
    with live_display(_reading, console):
        deadline = time.monotonic() + 60  # a generous bound for a loaded machine
        while stream.getvalue().count("\n") < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    lines = stream.getvalue().splitlines()
    assert len(lines) >= 2
    assert "\x1b" not in stream.getvalue()  # no cursor movement, no colour
    for line in lines:
        assert re.fullmatch(r"\[\d+\.\d s\] sent 400/1,000 .*blocked in send\(\) for .*", line)


def test_without_a_terminal_a_short_command_prints_no_status_line() -> None:
    stream = io.StringIO()
    with live_display(_reading, Console(file=stream, force_terminal=False)):
        pass  # ends long before the first interval
    assert stream.getvalue() == ""


def test_in_a_terminal_it_redraws_the_display() -> None:
    stream = io.StringIO()
    console = Console(file=stream, force_terminal=True, width=80)
    with live_display(_reading, console):
        pass
    output = stream.getvalue()
    assert "\x1b[" in output  # drawn with escape codes, not printed as a log line
    assert "400 / 1,000" in output
    assert "blocked in send() for" in output


def test_a_run_reading_carries_every_field_of_the_runs_progress() -> None:
    import dataclasses

    from bufdemo.experiment.live import run_reading
    from bufdemo.experiment.run import Progress

    p = Progress(1.5, sent=10, consumed=7, send_queue=300, recv_queue=40, blocking_sends=2)
    p = dataclasses.replace(p, blocked_since_ns=123)
    r = run_reading(p, total=100)
    assert (r.elapsed, r.total, r.sent, r.consumed) == (1.5, 100, 10, 7)
    assert (r.send_queue, r.recv_queue, r.blocking_sends, r.blocked_since_ns) == (300, 40, 2, 123)
    before = run_reading(None, total=100)  # the run has not reported yet
    assert (before.elapsed, before.sent, before.consumed, before.total) == (0.0, 0, 0, 100)
