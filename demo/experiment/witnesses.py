"""The two witnesses of `bufdemo run`: the kernel's trace (`--trace`) and the wire (`--capture`).

`bufdemo run` calls :meth:`Witnesses.start` once the receiver listens (its port known)
and before the sender is given its address, :meth:`Witnesses.finish` once both sides
have ended (their records hold the sockets' cookies and the sender's port), and
:meth:`Witnesses.close` on every exit path (idempotent: tcpdump stopped, the tracefs
instance removed). A witness that cannot run is skipped with one line saying why
(:attr:`Witnesses.notes`, also in meta.json's ``witnesses``); the run goes on.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bufdemo import runformat
from bufdemo.experiment.capture import (
    Capture,
    CaptureUnavailable,
    PcapError,
    clock_offset,
    read_pcap,
    wire_events,
)
from bufdemo.experiment.config import RunConfig
from bufdemo.experiment.tracing import (
    TraceSession,
    TracingUnavailable,
    parse_trace,
    sweep_instances,
)
from bufdemo.runformat import WitnessRecord

__all__ = ["Witnesses", "write_rows"]


def write_rows(path: Path, table: runformat.TableFormat, rows: list[dict[str, object]]) -> None:
    """Rows (dicts by column name) as the table's CSV; None becomes an empty cell."""
    tmp = path.with_name(path.name + ".part")
    with tmp.open("w", newline="") as f:
        f.write(",".join(table.columns) + "\n")
        for row in rows:
            cells = (row.get(c) for c in table.columns)
            f.write(",".join("" if v is None else str(v) for v in cells) + "\n")
    tmp.replace(path)


def _port_of(address: object) -> int | None:
    if not isinstance(address, str) or ":" not in address:
        return None
    try:
        return int(address.rsplit(":", 1)[1])
    except ValueError:
        return None


class Witnesses:
    """The run's witnesses: what was asked for, what runs, and why not."""

    def __init__(self, cfg: RunConfig, run_dir: Path) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.trace: TraceSession | None = None
        self.capture: Capture | None = None
        self.records: dict[str, WitnessRecord] = {}
        self.notes: list[str] = []
        self.port: int | None = None
        self.offset: tuple[int, int] | None = None

    def _skip(self, name: str, reason: str) -> None:
        self.records[name] = {"requested": True, "active": False, "reason": reason}
        self.notes.append(reason)

    def start(self, port: int) -> None:
        self.port = port
        if self.cfg.trace:
            removed = sweep_instances()
            session = TraceSession(port)
            try:
                session.start()
            except TracingUnavailable as exc:
                self._skip("trace", str(exc))
            else:
                self.trace = session
                self.records["trace"] = {
                    "requested": True,
                    "active": True,
                    "reason": None,
                    "details": {
                        "instance": session.name,
                        "clock": "mono (CLOCK_MONOTONIC, as perf_counter_ns)",
                        "stale_instances_removed": removed,
                    },
                }
        if self.cfg.capture:
            self.offset = clock_offset()
            cap = Capture(port, self.run_dir / runformat.CAPTURE_FILE)
            try:
                cap.start()
            except CaptureUnavailable as exc:
                self._skip("capture", str(exc))
            else:
                self.capture = cap
                self.records["capture"] = {
                    "requested": True,
                    "active": True,
                    "reason": None,
                    "file": runformat.CAPTURE_FILE,
                }

    def close(self) -> None:
        """Stop tcpdump and remove the tracefs instance; safe to call again."""
        if self.capture is not None:
            self.capture.stop()
        if self.trace is not None:
            self.trace.remove()

    def finish(
        self, sender: Mapping[str, object] | None, receiver: Mapping[str, object] | None
    ) -> None:
        """Stop both witnesses, write their tables, fill :attr:`records`.

        A witness whose reading fails records why; the run's own record is never lost
        to it."""
        sender = sender or {}
        receiver = receiver or {}
        if self.trace is not None:
            try:
                self._finish_trace(sender, receiver)
            except Exception as exc:  # a bug or a full disk: say so, keep the run
                self._degrade("trace", f"cannot write the trace: {type(exc).__name__}: {exc}")
            finally:
                self.trace.remove()
        if self.capture is not None:
            self.capture.stop()
            try:
                self._finish_capture(sender)
            except Exception as exc:
                self._degrade("capture", f"cannot read the capture: {type(exc).__name__}: {exc}")

    def _degrade(self, name: str, reason: str) -> None:
        self.records[name]["reason"] = reason
        self.notes.append(f"--{name}: {reason}")

    def _finish_trace(self, sender: Mapping[str, object], receiver: Mapping[str, object]) -> None:
        assert self.trace is not None
        text = self.trace.stop()
        cookies = {
            c: side
            for side, c in (("sender", sender.get("cookie")), ("receiver", receiver.get("cookie")))
            if isinstance(c, int)
        }
        ports = {
            p: side
            for side, p in (
                ("sender", _port_of(sender.get("address"))),
                ("receiver", self.port),
            )
            if p is not None
        }
        parsed = parse_trace(text.splitlines(), cookies, ports)
        table = runformat.KERNEL_EVENTS
        write_rows(self.run_dir / table.file, table, parsed.rows)
        rec = self.records["trace"]
        rec["file"] = table.file
        rec["events"] = len(parsed.rows)
        details = rec.setdefault("details", {})
        details.update(
            {
                "cookies": {side: c for c, side in cookies.items()},
                "lost_events": parsed.lost,
                "foreign_events": parsed.foreign,
                "unreadable_lines": parsed.unreadable,
                "first_unreadable": parsed.first_unreadable,
            }
        )
        if not cookies:
            rec["reason"] = "no socket cookie reported by the sides: no event could be kept"
            self.notes.append(f"--trace: {rec['reason']}")
        elif parsed.lost:
            rec["reason"] = f"the trace buffer overflowed: {parsed.lost} events lost"
            self.notes.append(f"--trace: {rec['reason']}")

    def _finish_capture(self, sender: Mapping[str, object]) -> None:
        assert self.port is not None
        assert self.offset is not None
        path = self.run_dir / runformat.CAPTURE_FILE
        rec = self.records["capture"]
        offset, uncertainty = self.offset
        details: dict[str, Any] = {
            "tool": "tcpdump, headers only; read with dpkt",
            "clock_offset_ns": offset,
            "clock_offset_uncertainty_ns": uncertainty,
            "clock": "pcap CLOCK_REALTIME minus clock_offset_ns = the run's CLOCK_MONOTONIC",
        }
        rec["details"] = details
        try:
            parsed = wire_events(
                read_pcap(path), _port_of(sender.get("address")), self.port, offset
            )
        except (OSError, PcapError) as exc:
            rec["reason"] = f"capture unreadable: {exc}"
            self.notes.append(f"--capture: {rec['reason']}")
            return
        table = runformat.WIRE_EVENTS
        write_rows(self.run_dir / table.file, table, parsed.rows)
        rec["events"] = len(parsed.rows)
        details.update(
            {
                "table": table.file,
                "packets": parsed.packets,
                "undecodable": parsed.undecodable,
                "foreign_packets": parsed.foreign,
                "window_scale": parsed.window_scale,
                "saw_syn": parsed.saw_syn,
                "mss": parsed.mss,
            }
        )
        if not parsed.saw_syn:
            rec["reason"] = "no SYN captured: windows are unscaled (a lower bound)"
            self.notes.append(f"--capture: {rec['reason']}")
