"""The lecture's claims about TCP buffers, each an experiment on the real kernel.

``bufdemo lab list`` names them; ``bufdemo lab run NAME`` sets up real sockets,
measures, and prints whether the claim held and the numbers behind the verdict. Every
experiment finishes in under 10 s and cleans up what it created (sockets, helper
processes, network namespaces), also when it fails.

Registry: name -> (claim, function returning a :class:`LabResult`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from bufdemo.errors import ConfigError
from bufdemo.lecture.lab import buffers, closing, deadpeer, nagle, slowclient
from bufdemo.lecture.lab._core import LabResult

__all__ = ["EXPERIMENTS", "Experiment", "LabResult", "format_result", "get", "run"]


@dataclass(frozen=True, slots=True)
class Experiment:
    name: str
    claim: str
    function: Callable[[], LabResult]
    needs: str = ""  # what it needs beyond loopback sockets, for `lab list`


EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in (
        Experiment("sender-close", closing.SENDER_CLOSE_CLAIM, closing.sender_close),
        Experiment("receiver-close", closing.RECEIVER_CLOSE_CLAIM, closing.receiver_close),
        Experiment(
            "dead-peer",
            deadpeer.DEAD_PEER_CLAIM,
            deadpeer.dead_peer,
            "root + ip netns (else only the SIGSTOP contrast)",
        ),
        Experiment("reconnect", closing.RECONNECT_CLAIM, closing.reconnect),
        Experiment("nagle", nagle.NAGLE_CLAIM, nagle.nagle),
        Experiment("writable", buffers.WRITABLE_CLAIM, buffers.writable),
        Experiment("buffer-sizes", buffers.BUFFER_SIZES_CLAIM, buffers.buffer_sizes),
        Experiment("small-window", buffers.SMALL_WINDOW_CLAIM, buffers.small_window),
        Experiment("slow-client", slowclient.SLOW_CLIENT_CLAIM, slowclient.slow_client),
    )
}


def get(name: str) -> Experiment:
    try:
        return EXPERIMENTS[name]
    except KeyError:
        names = ", ".join(EXPERIMENTS)
        raise ConfigError(
            "experiment", f"unknown experiment {name!r}; choose one of: {names}, all"
        ) from None


def run(name: str) -> LabResult:
    """Run one experiment and stamp how long it took."""
    experiment = get(name)
    t0 = time.monotonic()
    result = experiment.function()
    return replace(result, seconds=time.monotonic() - t0)


def _format_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower() if isinstance(value, bool) else "-"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _evidence_lines(evidence: dict[str, Any], indent: str = "    ") -> list[str]:
    lines = []
    for key, value in evidence.items():
        if isinstance(value, dict):
            lines.append(f"{indent}{key}:")
            lines += _evidence_lines(value, indent + "  ")
        else:
            lines.append(f"{indent}{key}: {_format_value(value)}")
    return lines


def format_result(result: LabResult) -> list[str]:
    """The lines `lab run` prints: verdict, explanation, then every number."""
    verdict = "HOLDS" if result.holds else "DOES NOT HOLD"
    return [
        f"{result.name}: {verdict}  ({result.seconds:.1f} s)",
        f"  claim: {result.claim}",
        *(f"  - {line}" for line in result.explanation),
        "  evidence:",
        *_evidence_lines(result.evidence),
    ]
