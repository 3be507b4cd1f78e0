"""Stale resources: what a run killed outright (SIGKILL) left in the kernel, and its sweep.

A run names every kernel-wide resource it creates after its owner process,
``bufdemo-<pid>-<random>``, and removes it on every exit path it controls. SIGKILL is
the one it does not: the resource outlives its owner. The next run (or
``bufdemo cleanup``) removes every resource whose owner pid no longer exists; one whose
owner is alive belongs to a run in progress and is left alone.

Today: tracefs instances (``--trace``). Other kinds (network namespaces) join
:func:`sweep` as they appear.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["owner_alive", "owner_pid", "sweep", "sweep_trace_instances"]

_NAME = re.compile(r"^bufdemo-(\d+)-[0-9a-f]+$")


def owner_pid(name: str) -> int | None:
    """The owner pid in a resource's name ``bufdemo-<pid>-<hex>``; None if not ours."""
    m = _NAME.match(name)
    return int(m[1]) if m else None


def owner_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, another user's
    return True


def sweep_trace_instances(root: Path | None = None) -> list[str]:
    """Remove the tracefs instances of dead bufdemo runs; return their names."""
    from bufdemo.experiment.tracing import TRACEFS_ROOTS  # the instances' one definition

    roots = [root] if root is not None else list(TRACEFS_ROOTS)
    removed: list[str] = []
    for r in roots:
        instances = r / "instances"
        try:
            entries = list(instances.iterdir())
        except OSError:
            continue
        for entry in entries:
            pid = owner_pid(entry.name)
            if pid is None or owner_alive(pid):
                continue
            try:
                os.rmdir(entry)
            except OSError:
                continue  # busy (a reader holds it open) or gone: the next sweep retries
            removed.append(entry.name)
        if root is None and removed:
            break
    return removed


def sweep() -> list[str]:
    """Every stale resource removed, as ``kind name`` lines."""
    return [f"tracefs instance {name}" for name in sweep_trace_instances()]
