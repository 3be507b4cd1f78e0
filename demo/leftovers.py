"""Leftovers: kernel resources a bufdemo process made and a SIGKILL kept it from removing.

Some resources outlive their process: a network namespace (a bind mount in /run/netns),
a tracefs instance. bufdemo names each one so that its name says who owns it
(``bfd-<owner pid>-...``), removes it on every exit path it can see (normal end,
Ctrl-C, failure), and, for the one path it cannot see (SIGKILL), leaves it to the next
run or to ``bufdemo cleanup``: a resource whose owner pid is gone is stale.

A *kind* registers how to list its resources (name, owner pid) and how to remove one
(:func:`register_kind`); :func:`sweep` removes every stale one of every kind. The name
is the registry: nothing else is written, so nothing else can be left behind.

A pid reused by an unrelated process makes a stale resource look alive until that
process ends; the cost is a leftover that lives longer, never a resource removed under
a live owner.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = ["PREFIX", "Leftover", "owner_alive", "owner_of", "register_kind", "stale", "sweep"]

# Short: a veth name must fit IFNAMSIZ (15 characters) with a pid of up to 7 digits.
PREFIX = "bfd"
_NAME = re.compile(rf"^{PREFIX}-?(\d+)[-a-z]")


@dataclass(frozen=True, slots=True)
class Leftover:
    kind: str  # "netns", "tracefs", ...
    name: str
    owner: int  # the pid of the bufdemo process that made it


def owner_of(name: str) -> int | None:
    """The owner pid a bufdemo resource name carries (``bfd-1234-1-s`` -> 1234)."""
    m = _NAME.match(name)
    return int(m.group(1)) if m else None


def owner_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def stale(found: Iterable[Leftover], alive: Callable[[int], bool] = owner_alive) -> list[Leftover]:
    """The resources whose owner is gone (pure given ``alive``)."""
    return [r for r in found if not alive(r.owner)]


_KINDS: dict[str, tuple[Callable[[], list[Leftover]], Callable[[Leftover], None]]] = {}


def register_kind(
    kind: str, lister: Callable[[], list[Leftover]], remover: Callable[[Leftover], None]
) -> None:
    """Make ``kind`` known to :func:`sweep`: ``lister`` finds bufdemo's resources of
    that kind, ``remover`` removes one (raising OSError if it cannot)."""
    _KINDS[kind] = (lister, remover)


def sweep(kinds: Iterable[str] | None = None) -> tuple[list[Leftover], list[str]]:
    """Remove every stale resource; return what was removed and one line per failure."""
    removed: list[Leftover] = []
    failures: list[str] = []
    for kind in list(_KINDS) if kinds is None else kinds:
        lister, remover = _KINDS[kind]
        for res in stale(lister()):
            try:
                remover(res)
            except OSError as exc:
                failures.append(f"{res.kind} {res.name}: {exc}")
            else:
                removed.append(res)
    return removed, failures
