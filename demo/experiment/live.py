"""The live display of a run: where the messages are and what the sender is doing, now.

Three layers, so that everything but the last is testable without a terminal:

- a :class:`Reading` is what the sides report at one moment (counts, queue depths, and
  when the sender's current blocking send began), as read from their progress slots;
- a :class:`Tracker` turns successive readings into a :class:`Snapshot`: it adds what
  one reading cannot tell, the rates over the last second and how long the sender has
  been blocked so far;
- :func:`render` (the redrawn display, at most :data:`WIDTH` columns) and
  :func:`status_line` (one plain line) are pure functions of a snapshot.

:func:`live_display` is the thin part: in a terminal it redraws :func:`render` on
stderr four times a second (rich's Live); when stderr is a file or a pipe it prints a
:func:`status_line` every :data:`STATUS_INTERVAL` seconds instead, so a log gets a
readable history rather than escape codes.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

if TYPE_CHECKING:
    from bufdemo.experiment.run import Progress

__all__ = [
    "RATE_WINDOW",
    "STATUS_INTERVAL",
    "WIDTH",
    "Reading",
    "Snapshot",
    "Tracker",
    "live_display",
    "render",
    "run_reading",
    "sender_state",
    "status_line",
]

WIDTH = 80  # the classic terminal: the display never needs more
# A plain status line this often when stderr is not a terminal: a few lines a minute
# keep a log readable, and the summary at the end has the exact figures.
STATUS_INTERVAL = 5.0
# Rates over the last second: long enough to span several progress updates (the sender
# counts per block of up to 1,024 messages), short enough to show a stall as it happens.
RATE_WINDOW = 1.0
REFRESH_PER_SECOND = 4  # redraws (and readings) per second
LABEL = 10  # the width of the left-hand labels ("consumed" and two spaces)
MIN_BAR = 10


@dataclass(frozen=True)
class Reading:
    """What the sides report at one moment; None for a side or a value not shown.

    ``now_ns`` and ``blocked_since_ns`` are ``time.perf_counter_ns()`` readings
    (CLOCK_MONOTONIC, the same clock in every process on a host);
    ``blocked_since_ns`` is 0 when the sender is not blocked. A queue depth of -1 means
    the probe is not available here.
    """

    now_ns: int
    elapsed: float
    total: int | None = None  # messages the run sends; None: not known yet
    sent: int | None = None
    consumed: int | None = None
    intact: int | None = None
    send_queue: int | None = None
    recv_queue: int | None = None
    blocking_sends: int | None = None
    blocked_since_ns: int = 0


def run_reading(p: Progress | None, total: int) -> Reading:
    """What the display shows of a ``bufdemo run`` (both sides) from its latest progress."""
    now = time.perf_counter_ns()
    if p is None:
        return Reading(now, 0.0, total=total, sent=0, consumed=0)
    return Reading(now_ns=now, total=total, **asdict(p))  # Progress: a subset, same names


@dataclass(frozen=True)
class Snapshot:
    """A reading plus what takes history to know: rates and the current stall's length."""

    elapsed: float
    total: int | None = None
    sent: int | None = None
    consumed: int | None = None
    intact: int | None = None
    send_queue: int | None = None
    recv_queue: int | None = None
    blocking_sends: int | None = None
    blocked_for: float | None = None  # seconds in the current blocking send; None: not
    send_rate: float | None = None  # messages/s over the last RATE_WINDOW; None: too soon
    consume_rate: float | None = None
    mode: str = "blocking"


class _Rate:
    """Messages per second over the last ``window`` seconds, from (time, count) points."""

    def __init__(self, window: float) -> None:
        self._window_ns = round(window * 1e9)
        self._points: deque[tuple[int, int]] = deque()

    def update(self, t_ns: int, count: int) -> float | None:
        points = self._points
        if points and t_ns <= points[-1][0]:
            points.pop()  # the same moment read twice: keep the newer count
        points.append((t_ns, count))
        # Keep one point at least a window old, so the rate spans the whole window.
        while len(points) > 2 and points[1][0] <= t_ns - self._window_ns:
            points.popleft()
        t0, c0 = points[0]
        if t_ns - t0 < self._window_ns // 4:
            return None  # too short a span to mean anything yet
        return (count - c0) * 1e9 / (t_ns - t0)


class Tracker:
    """Turns successive :class:`Reading` values into :class:`Snapshot` values."""

    def __init__(self, mode: str = "blocking", window: float = RATE_WINDOW) -> None:
        self.mode = mode
        self._sent = _Rate(window)
        self._consumed = _Rate(window)

    def observe(self, r: Reading) -> Snapshot:
        blocked_for = None
        if r.blocked_since_ns > 0:
            blocked_for = max(0, r.now_ns - r.blocked_since_ns) / 1e9
        return Snapshot(
            elapsed=r.elapsed,
            total=r.total,
            sent=r.sent,
            consumed=r.consumed,
            intact=r.intact,
            send_queue=r.send_queue,
            recv_queue=r.recv_queue,
            blocking_sends=r.blocking_sends,
            blocked_for=blocked_for,
            send_rate=None if r.sent is None else self._sent.update(r.now_ns, r.sent),
            consume_rate=(
                None if r.consumed is None else self._consumed.update(r.now_ns, r.consumed)
            ),
            mode=self.mode,
        )


# -- formatting (pure) -----------------------------------------------------------------


def duration(seconds: float) -> str:
    """``12.3 s``, ``4 min 05 s``, ``27 h 46 min``: short at any length."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600:,} h {whole % 3600 // 60:02d} min"


def size(n: int | None) -> str:
    """A queue depth in bytes, in decimal units; ``n/a`` where the probe is missing."""
    if n is None or n < 0:
        return "n/a"
    if n < 1000:
        return f"{n} B"
    if n < 1_000_000:
        return f"{n / 1e3:.1f} kB"
    if n < 1_000_000_000:
        return f"{n / 1e6:.2f} MB"
    return f"{n / 1e9:.2f} GB"


def rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} msg/s"


def _blocking_sends(n: int) -> str:
    return f"{n:,} blocking send" + ("" if n == 1 else "s")


def sender_state(s: Snapshot) -> str:
    """What the sender is doing: starting, sending, blocked (for how long), or done."""
    if s.blocked_for is not None:
        where = {"select": "select()", "asyncio": "drain()"}.get(s.mode, "send()")
        return f"blocked in {where} for {duration(s.blocked_for)}"
    if s.sent is not None and s.total is not None and s.sent >= s.total:
        if s.mode == "asyncio-nodrain":  # written to the transport, not yet to the kernel
            return "done writing; asyncio's buffer drains into the kernel"
        if s.consumed is not None and s.consumed < s.total:
            return "done; the receiver drains the rest"
        return "done: every message handed to the kernel"
    if not s.sent:
        return "starting"
    return "sending"


def _state_style(state: str) -> str:
    if state.startswith("blocked"):
        return "bold red"
    return "green" if state == "sending" else "dim"


def _bar_line(label: str, done: int, total: int | None, style: str, width: int) -> Text:
    line = Text(f"{label:<{LABEL}}", no_wrap=True, overflow="ellipsis")
    if total is None:
        line.append(f"{done:,} messages")
        return line
    top = max(done, total)
    count_width = 2 * len(f"{top:,}") + 3
    bar = max(MIN_BAR, width - LABEL - 1 - count_width)
    filled = bar if total <= 0 else min(bar, bar * done // total)
    line.append("━" * filled, style=style)
    line.append("━" * (bar - filled), style="bar.back")
    line.append(" " + f"{done:,} / {total:,}".rjust(count_width))
    return line


def _facts_line(label: str, facts: list[tuple[str, str]]) -> Text:
    line = Text(f"{label:<{LABEL}}", no_wrap=True, overflow="ellipsis")
    for i, (text, style) in enumerate(facts):
        if i:
            line.append("   ")
        line.append(text, style=style)
    return line


def render(s: Snapshot, width: int = WIDTH) -> list[Text]:
    """The display, one :class:`~rich.text.Text` per line, none wider than ``width``
    (for any count or queue depth; ``width`` below ~50 leaves the bars at their minimum).
    """
    lines: list[Text] = []
    if s.total is None and s.sent is None and not s.consumed:
        lines.append(_facts_line("receiver", [("waiting for a sender", "dim")]))
        return lines
    if s.sent is not None:
        lines.append(_bar_line("sent", s.sent, s.total, "blue", width))
    if s.consumed is not None:
        lines.append(_bar_line("consumed", s.consumed, s.total, "green", width))
    if s.sent is not None:
        state = sender_state(s)
        facts = [(state, _state_style(state))]
        if s.blocking_sends is not None:
            facts.append((_blocking_sends(s.blocking_sends), ""))
        lines.append(_facts_line("sender", facts))
    elif s.intact is not None and s.consumed is not None:
        lines.append(_facts_line("receiver", [(f"{s.intact:,} of {s.consumed:,} intact", "")]))
    rates = []
    if s.sent is not None:
        rates.append((f"sent {rate(s.send_rate)}", ""))
    if s.consumed is not None:
        rates.append((f"consumed {rate(s.consume_rate)}", ""))
    rates.append(("(last 1 s)", "dim"))
    lines.append(_facts_line("rate", rates))
    queues = []
    if s.sent is not None:
        queues.append((f"send {size(s.send_queue)}", ""))
    if s.consumed is not None:
        queues.append((f"receive {size(s.recv_queue)}", ""))
    queues.append((f"elapsed {duration(s.elapsed)}", "dim"))
    lines.append(_facts_line("queues", queues))
    return lines


def status_line(s: Snapshot) -> str:
    """One plain line for a log: the same facts as :func:`render`, no bars."""
    total = "" if s.total is None else f"/{s.total:,}"
    parts = [f"[{duration(s.elapsed)}]"]
    if s.total is None and s.sent is None and not s.consumed:
        return f"{parts[0]} waiting for a sender"
    if s.sent is not None:
        parts.append(
            f"sent {s.sent:,}{total} ({rate(s.send_rate)}), sender {sender_state(s)}"
            + ("" if s.blocking_sends is None else f" ({_blocking_sends(s.blocking_sends)})")
            + f", send queue {size(s.send_queue)}"
        )
    if s.consumed is not None:
        parts.append(
            f"consumed {s.consumed:,}{total} ({rate(s.consume_rate)})"
            + ("" if s.intact is None else f", {s.intact:,} intact")
            + f", receive queue {size(s.recv_queue)}"
        )
    return parts[0] + " " + "; ".join(parts[1:])


# -- the terminal (thin) -----------------------------------------------------------------


class _StatusLines(threading.Thread):
    """Reads REFRESH_PER_SECOND times a second (the rates need the history), prints a
    status line every ``interval`` seconds."""

    def __init__(
        self, read: Callable[[], Reading], tracker: Tracker, console: Console, interval: float
    ) -> None:
        super().__init__(name="bufdemo-status", daemon=True)
        self._read, self._tracker, self._console = read, tracker, console
        self._interval = interval
        self._stop_event = threading.Event()

    def run(self) -> None:
        next_line = time.monotonic() + self._interval
        while not self._stop_event.wait(1 / REFRESH_PER_SECOND):
            snapshot = self._tracker.observe(self._read())
            if time.monotonic() >= next_line:
                self._console.print(status_line(snapshot), markup=False, soft_wrap=True)
                next_line += self._interval

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


@contextmanager
def live_display(
    read: Callable[[], Reading], console: Console, *, mode: str = "blocking"
) -> Iterator[None]:
    """Show progress on ``console`` (stderr) while the ``with`` block runs.

    A terminal gets the redrawn :func:`render`; a file or pipe gets a
    :func:`status_line` every :data:`STATUS_INTERVAL` seconds, the first one after that
    interval (a short command prints none).
    """
    tracker = Tracker(mode)
    if console.is_terminal:

        def renderable() -> Group:
            width = min(WIDTH, console.width)
            return Group(*render(tracker.observe(read()), width))

        with Live(
            get_renderable=renderable,
            console=console,
            refresh_per_second=REFRESH_PER_SECOND,
            transient=False,
        ):
            yield
        return
    lines = _StatusLines(read, tracker, console, STATUS_INTERVAL)
    lines.start()
    try:
        yield
    finally:
        lines.stop()
