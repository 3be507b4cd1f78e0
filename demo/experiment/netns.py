"""A real link for the experiment: two network namespaces joined by a veth pair.

On loopback TCP is least like a network: a 64 KiB MSS, no queue between the ends, a
round trip of microseconds. ``bufdemo run --netns`` puts the receiver and the sender
each in a network namespace of its own (``bfd-<pid>-<n>-r`` and ``-s``), joined by a
veth pair (``bfd<pid>s<n>`` / ``bfd<pid>r<n>``, within IFNAMSIZ) with addresses from a
/30 of 10.0.0.0/8 chosen from the pid, so the run's TCP counters (TcpExt) belong to the
run alone. ``--link-rate`` puts a token bucket (tbf) on the sender's egress veth:
a bottleneck with a rate and a queue (``--link-queue``, bytes or ms at the rate), where
cwnd, not the receiver's window, becomes the limit. ``--link-delay`` / ``--link-loss``
need netem; on a kernel without it the link set-up fails at once, naming it.

How the sides get in: each side's process (spawned by :mod:`bufdemo.experiment.run`)
calls setns(2) on ``/run/netns/<name>`` through ctypes (Python 3.11 has no os.setns)
before it opens a socket. That keeps one orchestration for loopback and namespaces:
the same children, the same progress arrays, the same records and signals; only
where they live changes.

Clean-up: deleting a namespace deletes the veth end and the qdiscs inside it, so the
namespaces are the only resources to remove. :class:`Link` removes them on every exit
path it sees; a SIGKILLed run's namespaces carry its pid, and :mod:`bufdemo.leftovers`
removes them on the next ``--netns`` run or ``bufdemo cleanup``.

The pure part (names, addresses, rates, the ``ip``/``tc`` command lines, the parsing of
``tc -s -j qdisc``) is tested without root; :class:`Link`, :class:`QueueSampler` and
:func:`enter` are the adapters.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bufdemo import leftovers
from bufdemo.errors import BufdemoError, ConfigError

__all__ = [
    "Link",
    "LinkPlan",
    "LinkSettings",
    "QueueSampler",
    "check_can_create",
    "enter",
    "parse_loss",
    "parse_qdisc_stats",
    "parse_queue",
    "parse_rate",
    "plan_link",
    "setup_commands",
]

NETNS_DIR = Path("/run/netns")  # where `ip netns add` bind-mounts a namespace
CLONE_NEWNET = 0x40000000  # <linux/sched.h>
PREFIX_LEN = 30  # two addresses: one per end
L2_HEADER = 14  # an Ethernet header: tbf counts it, TCP's MSS does not
# Default bottleneck queue: 100 ms at the rate, the deep buffer of a home router, deep
# enough that cwnd (not drops) is what one sees grow and stop.
DEFAULT_LINK_QUEUE = "100ms"
# tbf's burst must hold one packet and what the rate earns per timer tick (HZ may be
# 100..1000); 4 ms of the rate covers HZ=250, and a burst only speeds up the start.
BURST_SECONDS = 0.004
QUEUE_SAMPLE_INTERVAL = 0.05  # `tc -s` is one exec of tc (~5 ms); 20 per second is enough
TC_TIMEOUT = 10.0
NETEM_PROBE = ("netem", "delay", "1ms")  # the qdisc check_netem() tries to add

_RATE_UNITS = {
    "bit": 1,
    "kbit": 10**3,
    "mbit": 10**6,
    "gbit": 10**9,
    "bps": 8,
    "kbps": 8 * 10**3,
    "mbps": 8 * 10**6,
    "gbps": 8 * 10**9,
}
_BYTE_UNITS = {"b": 1, "kb": 1024, "k": 1024, "mb": 1024**2, "m": 1024**2}
_TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
_NUMBER = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z%]*)\s*$")
_counter = itertools.count(1)


def _split(setting: str, text: str) -> tuple[float, str]:
    m = _NUMBER.match(text.lower())
    if not m:
        raise ConfigError(setting, f"must be a number with a unit, got {text!r}")
    return float(m.group(1)), m.group(2)


def parse_rate(text: str) -> int:
    """``20mbit`` -> 20_000_000 bits per second (tc's units: bit, kbit, mbit, gbit, bps...)."""
    value, unit = _split("link_rate", text)
    if unit not in _RATE_UNITS:
        units = ", ".join(_RATE_UNITS)
        raise ConfigError("link_rate", f"unit must be one of {units}, got {text!r}")
    rate = round(value * _RATE_UNITS[unit])
    if not 8_000 <= rate <= 100 * 10**9:
        raise ConfigError("link_rate", f"must be between 8kbit and 100gbit, got {text!r}")
    return rate


def parse_queue(text: str) -> tuple[str, float]:
    """``64kb`` -> ("bytes", 65536); ``50ms`` -> ("seconds", 0.05)."""
    value, unit = _split("link_queue", text)
    if unit in _BYTE_UNITS:
        n = value * _BYTE_UNITS[unit]
        if not 1 <= n <= 1 << 30:
            raise ConfigError("link_queue", f"must be between 1 B and 1 GiB, got {text!r}")
        return "bytes", n
    if unit in _TIME_UNITS:
        s = value * _TIME_UNITS[unit]
        if not 0 < s <= 10:
            raise ConfigError("link_queue", f"must be > 0 and <= 10 s, got {text!r}")
        return "seconds", s
    raise ConfigError("link_queue", f"must be bytes (b, kb, mb) or time (us, ms, s), got {text!r}")


def parse_delay(text: str) -> float:
    """``10ms`` -> 0.01 seconds (for netem)."""
    value, unit = _split("link_delay", text)
    if unit not in _TIME_UNITS:
        raise ConfigError("link_delay", f"unit must be one of us, ms, s, got {text!r}")
    s = value * _TIME_UNITS[unit]
    if not 0 <= s <= 10:
        raise ConfigError("link_delay", f"must be between 0 and 10 s, got {text!r}")
    return s


def parse_loss(text: str) -> float:
    """``1%`` or ``1`` -> 1.0 percent (for netem)."""
    value, unit = _split("link_loss", text)
    if unit not in ("", "%") or not 0 <= value <= 100:
        raise ConfigError("link_loss", f"must be a percentage between 0 and 100, got {text!r}")
    return value


@dataclass(frozen=True, slots=True)
class LinkSettings:
    """What the link is: RunConfig's link fields, parsed."""

    rate_bps: int | None = None
    queue: str | None = None  # as typed; parse_queue() gives its meaning
    mtu: int | None = None
    delay: str | None = None  # netem only
    loss: str | None = None  # netem only

    def limit_bytes(self) -> int | None:
        """tbf's queue limit in bytes (None: no tbf)."""
        if self.rate_bps is None:
            return None
        kind, value = parse_queue(self.queue or DEFAULT_LINK_QUEUE)
        n = value if kind == "bytes" else value * self.rate_bps / 8
        return max(round(n), self.packet_bytes())

    def burst_bytes(self) -> int | None:
        if self.rate_bps is None:
            return None
        return max(self.packet_bytes(), round(self.rate_bps / 8 * BURST_SECONDS))

    def packet_bytes(self) -> int:
        return (self.mtu or 1500) + L2_HEADER


@dataclass(frozen=True, slots=True)
class LinkPlan:
    """Names and addresses of one run's link."""

    sender_ns: str
    receiver_ns: str
    sender_if: str
    receiver_if: str
    sender_addr: str
    receiver_addr: str


def plan_link(pid: int, n: int) -> LinkPlan:
    """Names unique per (pid, n); a /30 of 10.0.0.0/8 chosen from them."""
    p = leftovers.PREFIX
    block = ((pid * 16 + n) % (1 << 22)) * 4  # a /30 inside 10.0.0.0/8
    base = (10 << 24) | block

    def ip(x: int) -> str:
        return ".".join(str((x >> s) & 255) for s in (24, 16, 8, 0))

    return LinkPlan(
        sender_ns=f"{p}-{pid}-{n}-s",
        receiver_ns=f"{p}-{pid}-{n}-r",
        sender_if=f"{p}{pid}s{n}"[:15],
        receiver_if=f"{p}{pid}r{n}"[:15],
        sender_addr=ip(base + 1),
        receiver_addr=ip(base + 2),
    )


def setup_commands(plan: LinkPlan, link: LinkSettings) -> list[list[str]]:
    """The ``ip``/``tc`` command lines that build the link, in order."""
    s, r = plan.sender_ns, plan.receiver_ns
    cmds = [
        ["ip", "netns", "add", s],
        ["ip", "netns", "add", r],
        # Both ends born in their namespaces: nothing is ever left in the host's.
        [
            "ip",
            "link",
            "add",
            plan.sender_if,
            "netns",
            s,
            "type",
            "veth",
            "peer",
            "name",
            plan.receiver_if,
            "netns",
            r,
        ],
    ]
    ends = ((s, plan.sender_if, plan.sender_addr), (r, plan.receiver_if, plan.receiver_addr))
    for ns, dev, addr in ends:
        cmds.append(["ip", "-n", ns, "link", "set", "lo", "up"])
        if link.mtu is not None:
            cmds.append(["ip", "-n", ns, "link", "set", dev, "mtu", str(link.mtu)])
        cmds.append(["ip", "-n", ns, "addr", "add", f"{addr}/{PREFIX_LEN}", "dev", dev])
        cmds.append(["ip", "-n", ns, "link", "set", dev, "up"])
    netem = _netem_args(link)
    if link.rate_bps is not None:
        cmds.append(
            [
                *("tc", "-n", s, "qdisc", "add", "dev", plan.sender_if, "root", "handle", "1:"),
                *("tbf", "rate", f"{link.rate_bps}bit", "burst", str(link.burst_bytes())),
                *("limit", str(link.limit_bytes())),
            ]
        )
        if netem:
            cmds.append(
                [
                    *("tc", "-n", s, "qdisc", "add", "dev", plan.sender_if, "parent", "1:1"),
                    *("handle", "10:", *netem),
                ]
            )
    elif netem:
        cmds.append(["tc", "-n", s, "qdisc", "add", "dev", plan.sender_if, "root", *netem])
    return cmds


def _netem_args(link: LinkSettings) -> list[str]:
    args: list[str] = []
    if link.delay is not None:
        args += ["delay", f"{parse_delay(link.delay) * 1e6:.0f}us"]
    if link.loss is not None:
        args += ["loss", f"{parse_loss(link.loss)}%"]
    return ["netem", *args] if args else []


# -- the bottleneck queue over time ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueueStats:
    backlog_bytes: int
    backlog_packets: int
    drops: int
    sent_bytes: int
    sent_packets: int
    overlimits: int


def parse_qdisc_stats(text: str, kind: str = "tbf") -> QueueStats | None:
    """The first ``kind`` qdisc's counters in ``tc -s -j qdisc show`` output."""
    try:
        qdiscs: list[dict[str, Any]] = json.loads(text)
    except ValueError:
        return None
    for q in qdiscs:
        if q.get("kind") == kind:
            return QueueStats(
                backlog_bytes=int(q.get("backlog", 0)),
                backlog_packets=int(q.get("qlen", 0)),
                drops=int(q.get("drops", 0)),
                sent_bytes=int(q.get("bytes", 0)),
                sent_packets=int(q.get("packets", 0)),
                overlimits=int(q.get("overlimits", 0)),
            )
    return None


# -- adapters ---------------------------------------------------------------------------


def check_can_create() -> None:
    """Raise ConfigError (exit 2) naming what --netns needs, if it is missing."""
    if os.geteuid() != 0:
        raise ConfigError(
            "netns", "needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN to create namespaces)"
        )
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            raise ConfigError("netns", f"needs the {tool!r} command (iproute2), not found")


def check_netem(setting: str = "link_delay") -> None:
    """Raise ConfigError (exit 2) if this kernel has no netem qdisc.

    Tried, not guessed (netem may be built in, a module, or absent): a netem qdisc on the
    loopback of a throwaway namespace, removed at once.
    """
    check_can_create()
    name = f"{leftovers.PREFIX}-{os.getpid()}-0-probe"
    try:
        made = _run(["ip", "netns", "add", name])
        if made.returncode != 0:
            raise BufdemoError(f"cannot create a network namespace: {made.stderr.strip()}")
        proc = _run(["tc", "-n", name, "qdisc", "add", "dev", "lo", "root", *NETEM_PROBE])
    finally:
        _run(["ip", "netns", "del", name])
    if proc.returncode != 0:
        raise ConfigError(
            setting,
            f"needs the netem qdisc, which this kernel does not have (tc: {proc.stderr.strip()})",
        )


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TC_TIMEOUT, check=False)


def _list_namespaces() -> list[leftovers.Leftover]:
    try:
        names = os.listdir(NETNS_DIR)
    except OSError:
        return []
    found = []
    for name in names:
        owner = leftovers.owner_of(name)
        if owner is not None:
            found.append(leftovers.Leftover("netns", name, owner))
    return found


def _remove_namespace(res: leftovers.Leftover) -> None:
    proc = _run(["ip", "netns", "del", res.name])
    if proc.returncode != 0 and (NETNS_DIR / res.name).exists():
        raise OSError(proc.stderr.strip() or f"ip netns del exited {proc.returncode}")


leftovers.register_kind("netns", _list_namespaces, _remove_namespace)


def enter(name: str) -> None:
    """Move this thread (the main thread of a side's process) into namespace ``name``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(NETNS_DIR / name, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


class Link:
    """The link of one run: built by :meth:`up`, removed by :meth:`down` (idempotent)."""

    def __init__(self, settings: LinkSettings, pid: int | None = None) -> None:
        self.settings = settings
        self.plan = plan_link(os.getpid() if pid is None else pid, next(_counter))
        self.swept: list[leftovers.Leftover] = []
        self._made: list[str] = []

    def up(self) -> Link:
        check_can_create()
        self.swept, _ = leftovers.sweep(["netns"])
        try:
            for cmd in setup_commands(self.plan, self.settings):
                if cmd[:3] == ["ip", "netns", "add"]:
                    self._made.append(cmd[3])  # before: a Ctrl-C in between still removes it
                proc = _run(cmd)
                if proc.returncode != 0:
                    raise self._failure(cmd, proc.stderr.strip())
        except BaseException:
            self.down()
            raise
        return self

    def _failure(self, cmd: list[str], stderr: str) -> BufdemoError:
        if "netem" in cmd and "unknown" in stderr.lower():
            setting = "link_delay" if self.settings.delay is not None else "link_loss"
            return ConfigError(
                setting, f"needs the netem qdisc, which this kernel does not have ({stderr})"
            )
        return BufdemoError(f"link set-up failed: {' '.join(cmd)}: {stderr}")

    def down(self) -> None:
        for name in reversed(self._made):
            _run(["ip", "netns", "del", name])
        self._made = []

    def __enter__(self) -> Link:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    def netstat_text(self, ns: str) -> str | None:
        proc = _run(["ip", "netns", "exec", ns, "cat", "/proc/net/netstat"])
        return proc.stdout if proc.returncode == 0 else None

    def record(self) -> dict[str, Any]:
        """meta.json's ``link``."""
        p, s = self.plan, self.settings
        return {
            "namespaces": {"sender": p.sender_ns, "receiver": p.receiver_ns},
            "interfaces": {"sender": p.sender_if, "receiver": p.receiver_if},
            "addresses": {"sender": p.sender_addr, "receiver": p.receiver_addr},
            "rate_bps": s.rate_bps,
            "queue": s.queue or (DEFAULT_LINK_QUEUE if s.rate_bps else None),
            "limit_bytes": s.limit_bytes(),
            "burst_bytes": s.burst_bytes(),
            "mtu": s.mtu or 1500,
            "delay": s.delay,
            "loss": s.loss,
            "qdisc": "tbf on the sender's egress veth" if s.rate_bps else None,
        }


class QueueSampler(threading.Thread):
    """Sample the bottleneck (tbf) queue every QUEUE_SAMPLE_INTERVAL from this process.

    Rows: perf_counter_ns (the clock of every other table) and the qdisc's counters.
    """

    def __init__(self, link: Link, interval: float = QUEUE_SAMPLE_INTERVAL) -> None:
        super().__init__(name="bufdemo-queue-sampler", daemon=True)
        self.link = link
        self.interval = interval
        self.rows: list[tuple[int, ...]] = []
        self.error: str | None = None
        self._stop_event = threading.Event()

    def sample(self) -> None:
        p = self.link.plan
        cmd = ["tc", "-n", p.sender_ns, "-s", "-j", "qdisc", "show", "dev", p.sender_if]
        t = time.perf_counter_ns()
        proc = _run(cmd)
        stats = parse_qdisc_stats(proc.stdout) if proc.returncode == 0 else None
        if stats is None:
            self.error = proc.stderr.strip() or "no tbf qdisc in tc's output"
            return
        self.rows.append(
            (
                t,
                stats.backlog_bytes,
                stats.backlog_packets,
                stats.drops,
                stats.sent_bytes,
                stats.sent_packets,
                stats.overlimits,
            )
        )

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join()

    def write(self, path: Path, columns: tuple[str, ...]) -> None:
        lines = [",".join(columns)] + [",".join(str(v) for v in row) for row in self.rows]
        path.write_text("\n".join(lines) + "\n")
