"""``bufdemo merge``: one run directory from the two halves of a two-host run.

``bufdemo send`` and ``bufdemo receive`` each write a run directory with their own
tables, on their own clock. The sender's record holds the clock exchanges it made with
the receiver (:mod:`bufdemo.experiment.clocksync`): from them, the receiver's clock
minus the sender's (the offset), its error bound and the drift. The merge copies the
sender's tables unchanged, moves every receiver timestamp onto the sender's clock, and
writes one ``meta.json`` with both records and the estimate under ``clock``. The
result is an ordinary run directory: ``load_run``, ``plot`` and ``report`` read it as
they read a ``bufdemo run`` one.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bufdemo import runformat
from bufdemo.errors import ConfigError, RunDirError
from bufdemo.experiment import clocksync
from bufdemo.experiment.run import create_run_dir

__all__ = ["merge_runs"]

SENDER_TABLES = (runformat.SENDS, runformat.BLOCKING_SENDS, runformat.SENDER_SAMPLES)
RECEIVER_TABLES = (runformat.CONSUMED, runformat.RECEIVER_SAMPLES)


def _meta(path: Path, setting: str) -> dict[str, Any]:
    try:
        meta: dict[str, Any] = json.loads((path / runformat.META_FILE).read_text())
    except FileNotFoundError:
        raise ConfigError(
            setting, f"not a run directory (no meta.json), got {str(path)!r}"
        ) from None
    except (OSError, ValueError) as exc:
        raise RunDirError(f"{path / runformat.META_FILE}: unreadable: {exc}") from exc
    return meta


def merge_runs(sender_dir: Path, receiver_dir: Path, out: Path | None = None) -> Path:
    """Write the merged run directory (inside ``out``, default: the sender run's parent)."""
    s_meta = _meta(sender_dir, "SENDER_RUN")
    r_meta = _meta(receiver_dir, "RECEIVER_RUN")
    snd, rec = s_meta.get("sender"), r_meta.get("receiver")
    if not isinstance(snd, dict):
        raise ConfigError(
            "SENDER_RUN", f"has no sender record (not a bufdemo send run): {sender_dir}"
        )
    if not isinstance(rec, dict):
        raise ConfigError(
            "RECEIVER_RUN", f"has no receiver record (not a bufdemo receive run): {receiver_dir}"
        )
    records = snd.get("clock") or []
    exchanges = clocksync.exchanges_from(records)
    answered = {(e["seq"], e["t1"]) for e in rec.get("clock") or []}
    if answered and not all((e["seq"], e["t1"]) in answered for e in records):
        raise ConfigError(
            "RECEIVER_RUN", "its clock answers do not match the sender's: not the same run"
        )
    est = clocksync.estimate(exchanges)
    if est is None:
        raise RunDirError(
            f"{sender_dir}: no clock exchange recorded (a sender older than protocol 2, or "
            "one that failed before its first answer): the clocks cannot be aligned"
        )

    def convert(t: int) -> int:
        return clocksync.to_sender_clock(t, est)

    run_dir = create_run_dir(out or sender_dir.parent, "merged")
    for table in SENDER_TABLES:
        if (sender_dir / table.file).is_file():
            shutil.copyfile(sender_dir / table.file, run_dir / table.file)
    for table in RECEIVER_TABLES:
        if (receiver_dir / table.file).is_file():
            shutil.copyfile(receiver_dir / table.file, run_dir / table.file)
            clocksync.shift_table(run_dir / table.file, convert)
    receiver = dict(rec)
    for key in ("t_connected_ns", "t_done_ns"):
        if receiver.get(key) is not None:
            receiver[key] = convert(int(receiver[key]))
    config = dict(s_meta.get("config") or {})
    config["recv_delay"] = (r_meta.get("config") or {}).get("recv_delay")
    config["rcvbuf"] = (r_meta.get("config") or {}).get("rcvbuf")
    s_out, r_out = s_meta.get("outcome") or {}, r_meta.get("outcome") or {}
    complete = bool(s_out.get("complete")) and bool(r_out.get("complete"))
    reasons = [f"{side}: {o['reason']}" for side, o in (("sender", s_out), ("receiver", r_out))
               if o.get("reason")]  # fmt: skip
    meta = {
        "format_version": runformat.FORMAT_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join(["bufdemo", *sys.argv[1:]]),
        "config": config,
        "host": s_meta.get("host"),
        "t0_ns": snd.get("t_connected_ns"),
        "sender": snd,
        "receiver": receiver,
        # Per host and not per connection on two hosts: kept per side, not as a delta.
        "netstat": None,
        "outcome": {"complete": complete, "reason": "; ".join(reasons) or None},
        "clock": {
            **est.as_dict(),
            "exchanges": len(records),
            "used": "the shortest round trip before and after the data",
            "round_trips_ns": [e.round_trip_ns for e in exchanges],
            "method": "NTP-style over the run's connection, before and after the data; "
            "receiver timestamps moved onto the sender's clock (offset interpolated with "
            "the drift); error bound = half the largest round trip",
            "receiver_host": r_meta.get("host"),
            "merged_from": {"sender": str(sender_dir), "receiver": str(receiver_dir)},
        },
    }
    path = run_dir / runformat.META_FILE
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(path)
    return run_dir
