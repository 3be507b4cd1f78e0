"""`--trace`: the kernel's own events for one run, from a private tracefs instance.

The mechanism. tracefs (``/sys/kernel/tracing``; root only, mounted here if it is not)
lets a process create a private ring buffer, an *instance* (``instances/NAME``), with
its own enabled events, filters and clock. A run creates one named
``bufdemo-<owner pid>-<random>``, sets its ``trace_clock`` to ``mono``
(CLOCK_MONOTONIC, the clock of ``time.perf_counter_ns`` that every other table of the
run uses, so no conversion), and enables:

- ``tcp:tcp_probe``: one event per segment an established socket receives, with the
  socket's snd_una, snd_nxt, snd_wnd (the peer's advertised window, scaled, bytes),
  rcv_wnd, cwnd, srtt and its cookie. At the sender this is every ACK; at the receiver
  every data segment;
- ``tcp:tcp_rcvbuf_grow``: the receiver's buffer autotuning;
- ``tcp:tcp_receive_reset`` and ``tcp:tcp_send_reset``: a reset either way.

The filters keep the run's port (the receiver's listening port, known once it listens
and before the sender connects), so two runs at once fill separate buffers with
separate events; when parsing, only the run's two socket cookies (SO_COOKIE, reported
by the sides) are kept. ``tcp_send_reset`` has neither port field nor cookie: it is
kept by the ports printed in its text.

The instance is removed on every exit path of `bufdemo run`; one left by a run killed
with SIGKILL is removed by the next run or `bufdemo cleanup` (:mod:`bufdemo.leftovers`:
its owner pid is gone; :func:`sweep_instances`).

:func:`parse_trace` is sans-IO (lines in, rows and gaps out) and never raises on bad
input: a line it cannot read is counted as a gap, with the first one kept as an example.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bufdemo import leftovers

__all__ = [
    "INSTANCE_PREFIX",
    "TRACEFS_ROOTS",
    "TraceParse",
    "TraceSession",
    "TracingUnavailable",
    "find_tracefs",
    "parse_trace",
    "parse_trace_line",
]

INSTANCE_PREFIX = "bufdemo-"
# Where tracefs lives: the modern mount point first, then the debugfs one.
TRACEFS_ROOTS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
# Per-CPU ring buffer: tcp_probe is ~150 B a record; 16 MiB a CPU holds ~100,000 events,
# a 20,000-message run with room to spare. A run that outgrows it records the loss
# (the header's entries-in-buffer/entries-written) instead of failing.
BUFFER_KB = 16384
# (event, filter on the run's port or None for no filter)
_EVENTS = (
    ("tcp/tcp_probe", "sport == {port} || dport == {port}"),
    ("tcp/tcp_rcvbuf_grow", "sport == {port} || dport == {port}"),
    ("tcp/tcp_receive_reset", "sport == {port} || dport == {port}"),
    ("tcp/tcp_send_reset", None),
)

_SEQ = 1 << 32


class TracingUnavailable(Exception):
    """Tracing cannot be done here; the message is the one line meta.json and the CLI show."""


def _is_dir(path: Path) -> bool:
    """Path.is_dir, False also where we may not look (tracefs is 0700 for non-root)."""
    try:
        return path.is_dir()
    except OSError:
        return False


def find_tracefs(mount: bool = True) -> Path:
    """The tracefs root; mounted at /sys/kernel/tracing if it is not (root only)."""
    if os.geteuid() != 0:
        raise TracingUnavailable("--trace skipped: tracefs needs root (run as root or with sudo)")
    for root in TRACEFS_ROOTS:
        if _is_dir(root / "instances"):
            return root
    if not mount or not _is_dir(TRACEFS_ROOTS[0]):
        raise TracingUnavailable("--trace skipped: this kernel has no tracefs")
    import subprocess  # only here: mounting is the rare case

    proc = subprocess.run(
        ["mount", "-t", "tracefs", "nodev", str(TRACEFS_ROOTS[0])],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0 or not _is_dir(TRACEFS_ROOTS[0] / "instances"):
        why = (proc.stderr.strip().splitlines() or ["mount failed"])[-1]
        raise TracingUnavailable(f"--trace skipped: cannot mount tracefs: {why}")
    return TRACEFS_ROOTS[0]


@dataclass
class TraceSession:
    """One run's private tracefs instance: :meth:`start`, then :meth:`stop` (always)."""

    port: int
    root: Path | None = None
    name: str = field(
        default_factory=lambda: f"{INSTANCE_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
    )
    path: Path | None = None

    def start(self) -> None:
        root = self.root or find_tracefs()
        self.root = root
        path = root / "instances" / self.name
        try:
            path.mkdir()
        except OSError as exc:
            raise TracingUnavailable(
                f"--trace skipped: cannot create tracefs instance {path}: {exc.strerror or exc}"
            ) from exc
        self.path = path
        try:
            (path / "trace_clock").write_text("mono")
            with contextlib.suppress(OSError):  # a smaller buffer still works
                (path / "buffer_size_kb").write_text(str(BUFFER_KB))
            for event, flt in _EVENTS:
                edir = path / "events" / event
                if not _is_dir(edir):
                    continue  # an older kernel without this event: the others still help
                if flt is not None:
                    (edir / "filter").write_text(flt.format(port=self.port))
                (edir / "enable").write_text("1")
            if not (path / "events" / "tcp" / "tcp_probe" / "enable").is_file():
                raise TracingUnavailable("--trace skipped: this kernel has no tcp:tcp_probe event")
            (path / "tracing_on").write_text("1")
        except OSError as exc:
            self.remove()
            raise TracingUnavailable(
                f"--trace skipped: cannot set up tracefs instance: {exc.strerror or exc}"
            ) from exc
        except TracingUnavailable:
            self.remove()
            raise

    def stop(self) -> str:
        """Stop recording and return the buffer's text ('' if there is none)."""
        if self.path is None:
            return ""
        try:
            (self.path / "tracing_on").write_text("0")
            return (self.path / "trace").read_text(errors="replace")
        except OSError:
            return ""

    def remove(self) -> None:
        """Remove the instance (idempotent; its events go with it)."""
        if self.path is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(self.path)
        self.path = None


# -- parsing (sans-IO) ---------------------------------------------------------------

_LINE = re.compile(
    r"^\s*(?P<task>.*?)-(?P<pid>\d+)\s+(?:\(\s*[-\d]+\)\s+)?\[(?P<cpu>\d+)\]\s+"
    r"(?:(?P<flags>\S{4,6})\s+)?(?P<secs>\d+)\.(?P<usecs>\d{6}):\s+"
    r"(?P<event>\w+):\s?(?P<body>.*)$"
)
_ENTRIES = re.compile(r"entries-in-buffer/entries-written:\s*(\d+)/(\d+)")
_PAIR = re.compile(r"(\w+)=(\S+)")

#: kernel_events.csv's columns that come from the trace's fields, by trace field name.
_FIELDS = {
    "data_len": "data_len",
    "snd_una": "snd_una",
    "snd_nxt": "snd_nxt",
    "snd_wnd": "snd_wnd",
    "rcv_wnd": "rcv_wnd",
    "snd_cwnd": "cwnd",
    "ssthresh": "ssthresh",
    "srtt": "srtt_us",
    "rcvbuf": "rcvbuf",
}


@dataclass(frozen=True)
class TraceEvent:
    t_ns: int
    event: str
    fields: Mapping[str, str]


def parse_trace_line(line: str) -> TraceEvent | None:
    """One line of a tracefs ``trace`` file; None for a comment or a line it cannot read."""
    if not line.strip() or line.lstrip().startswith("#"):
        return None
    m = _LINE.match(line)
    if m is None:
        return None
    t_ns = int(m["secs"]) * 1_000_000_000 + int(m["usecs"]) * 1000
    return TraceEvent(t_ns, m["event"], dict(_PAIR.findall(m["body"])))


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text, 0) if text.lower().startswith("0x") else int(text)
    except ValueError:
        return None


def _port(addr: str | None) -> int | None:
    if not addr or ":" not in addr:
        return None
    return _int(addr.rsplit(":", 1)[1])


@dataclass
class TraceParse:
    """What :func:`parse_trace` found: rows for kernel_events.csv and what it could not use."""

    rows: list[dict[str, object]] = field(default_factory=list)
    unreadable: int = 0  # lines that are not a trace event this parser knows
    first_unreadable: str | None = None
    foreign: int = 0  # events of other sockets (the filter is by port; cookies decide)
    lost: int | None = None  # events the ring buffer dropped (header), None if unknown


def parse_trace(
    lines: Iterable[str],
    cookies: Mapping[int, str],
    ports: Mapping[int, str] | None = None,
) -> TraceParse:
    """kernel_events rows from a trace's lines: only the sockets of ``cookies``
    (cookie -> side); an event without a cookie (tcp_send_reset) is kept when its
    source port is one of ``ports`` (port -> side). Sequence numbers become bytes since
    that socket's first event (unwrapped). Never raises on bad input."""
    out = TraceParse()
    ports = ports or {}
    bases: dict[int, dict[str, int]] = {}  # cookie -> {"snd_una": last raw, ...} unwrap state
    offsets: dict[int, dict[str, int]] = {}
    for line in lines:
        m = _ENTRIES.search(line)
        if m is not None and line.lstrip().startswith("#"):
            out.lost = max(0, int(m[2]) - int(m[1]))
            continue
        ev = parse_trace_line(line)
        if ev is None:
            if line.strip() and not line.lstrip().startswith("#"):
                out.unreadable += 1
                if out.first_unreadable is None:
                    out.first_unreadable = line.strip()[:120]
            continue
        f = ev.fields
        cookie_text = f.get("sock_cookie")
        cookie = None if cookie_text is None else _int("0x" + cookie_text.removeprefix("0x"))
        side: str | None
        if cookie is not None:
            side = cookies.get(cookie)
        else:
            src = _port(f.get("src"))
            side = ports.get(src) if src is not None else None
        if side is None:
            out.foreign += 1
            continue
        row: dict[str, object] = {
            "t_ns": ev.t_ns,
            "side": side,
            "event": ev.event,
            "sock_cookie": cookie if cookie is not None else -1,
        }
        for src_name, col in _FIELDS.items():
            value = _int(f.get(src_name))
            if value is not None and col in ("snd_una", "snd_nxt") and cookie is not None:
                last = bases.setdefault(cookie, {})
                off = offsets.setdefault(cookie, {})
                if "snd_una" not in last:  # the socket's first event: its origin
                    base = _int(f.get("snd_una"))
                    last["snd_una"] = last["snd_nxt"] = base if base is not None else value
                    off["snd_una"] = off["snd_nxt"] = 0
                delta = ((value - last[col] + (_SEQ >> 1)) % _SEQ) - (_SEQ >> 1)
                off[col] += delta
                last[col] = value
                value = off[col]
            row[col] = value
        out.rows.append(row)
    return out


# -- leftovers: instances of runs killed with SIGKILL ----------------------------------

_INSTANCE_NAME = re.compile(r"^bufdemo-(\d+)-[0-9a-f]+$")


def _list_instances(root: Path | None = None) -> list[leftovers.Leftover]:
    found: list[leftovers.Leftover] = []
    for r in [root] if root is not None else list(TRACEFS_ROOTS):
        try:
            entries = list((r / "instances").iterdir())
        except OSError:
            continue
        for entry in entries:
            m = _INSTANCE_NAME.match(entry.name)
            if m:
                found.append(leftovers.Leftover("tracefs", str(entry), int(m[1])))
        if root is None and found:
            break  # one mount point is enough: both paths show the same instances
    return found


def _remove_instance(res: leftovers.Leftover) -> None:
    os.rmdir(res.name)  # OSError if busy (a reader holds it open): the next sweep retries


def sweep_instances(root: Path | None = None) -> list[str]:
    """Remove the tracefs instances of dead bufdemo runs; return their names."""
    removed: list[str] = []
    for res in leftovers.stale(_list_instances(root)):
        with contextlib.suppress(OSError):
            _remove_instance(res)
            removed.append(Path(res.name).name)
    return removed


leftovers.register_kind("tracefs", _list_instances, _remove_instance)
