"""Ctrl-C and SIGTERM: one policy for every bufdemo process.

- The first SIGINT or SIGTERM stops the work cleanly: it raises KeyboardInterrupt in the
  main thread, the work unwinds, and what was recorded is written (tables, meta.json,
  a side's record; a server closes its clients and reaps its children). SIGTERM is
  Ctrl-C's twin, so that ``kill PID`` keeps the record too.
- Later ones are only counted: they cannot cut that writing short (:class:`StopSignals`).
  Nor can the first, once the work has ended some other way and its cleanup has begun
  (:func:`cleanup_begins`): a side whose peer vanished writes its tables even if the
  stop signal comes while it does (a ``bufdemo run`` SIGKILLed: each side is told to
  stop, and one of them may first see the other close).
- A child process that bufdemo starts (the two sides of ``bufdemo run``) starts with
  both signals blocked (:func:`blocked` around its start): one that arrives while the
  child's interpreter is still starting is held, not lost and not a traceback, and is
  handled as soon as the child has installed its handler (:func:`unblock`).
- A child stops by itself, as if interrupted, when its parent disappears
  (:func:`stop_when_orphaned`): a ``bufdemo run`` killed outright (SIGKILL) leaves no
  sender, receiver or forked echo worker running on its own.
- Inside an event loop the first one cancels the main task instead
  (:func:`run_coroutine`, for ``asyncio.run``): raised between two steps of the loop's
  own code, a KeyboardInterrupt can lose the task's next step, and the loop's cleanup
  then waits for it for ever. KeyboardInterrupt is raised once the loop has closed.
- A stop is never lost inside Python's at-fork handlers, which run in this process
  around a fork and whose exceptions Python ignores: bufdemo forks inside
  :func:`held` or :class:`stops_deferred`, which raise such a stop as the block ends.
- A command stopped this way exits 130 (:data:`EXIT_INTERRUPTED`, 128 + SIGINT, what a
  shell reports for Ctrl-C), except where being stopped is how it normally ends
  (``bufdemo serve``: exit 0).

The handlers run in the main thread, between bytecodes (Python's rule): a thread
never sees the KeyboardInterrupt, and a main thread blocked in a system call is woken to
raise it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import multiprocessing as mp
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from types import FrameType
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = [
    "EXIT_INTERRUPTED",
    "STOP_SIGNALS",
    "StopSignals",
    "blocked",
    "cleanup_begins",
    "held",
    "run_coroutine",
    "stop_when_orphaned",
    "stops_deferred",
    "unblock",
]

STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130
# How often a child without a parent-death event checks whether its parent is gone
# (only where pidfd_open is missing): cheap, and a stop within 0.2 s is soon enough.
_ORPHAN_POLL = 0.2


class StopSignals:
    """The policy for this process: in a ``with`` block (the previous handlers come back
    on exit), or installed with :meth:`install` for the rest of a child's life.

    The first SIGINT/SIGTERM raises KeyboardInterrupt while :attr:`raising` (or calls
    :attr:`on_stop` in its place, if set: :func:`run_coroutine`); every later one, and
    any that arrives once :attr:`raising` was set to False (cleanup has begun), is only
    counted in :attr:`count`. Outside the main thread this does nothing (Python only
    installs handlers there).
    """

    def __init__(self) -> None:
        self.raising = True
        self.count = 0
        self.on_stop: Callable[[], None] | None = None
        self._previous: dict[int, Any] = {}
        self._outer: StopSignals | None = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.raising:
            self.raising = False
            if self.on_stop is not None:
                self.on_stop()
                return
            raise KeyboardInterrupt

    def install(self) -> StopSignals:
        """Install for good (a child process: the handler stays until it has exited)."""
        global _installed
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
            self._outer, _installed = _installed, self
        return self

    def __enter__(self) -> StopSignals:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        global _installed
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if self._previous:
            _installed = self._outer
        self._previous.clear()


_installed: StopSignals | None = None  # the policy in force in this process


def cleanup_begins() -> None:
    """From here on a stop signal is only counted: the work is over and what it recorded
    is being written (call it first in a ``finally`` that writes tables)."""
    if _installed is not None and threading.current_thread() is threading.main_thread():
        _installed.raising = False


class stops_deferred:  # a context manager, named as its use reads
    """A stop signal that arrives inside the block is raised as it ends, not inside it.

    For the few statements that update a record together (a batch of frames recorded
    and cleared): cut in two by a KeyboardInterrupt, the record would count them twice
    where a handler records what is left, or count them in one place and not another.
    And around a fork: Python runs its at-fork handlers (logging's, for one) in this
    process around ``os.fork()`` and a :mod:`subprocess` start with a ``preexec_fn``,
    and ignores what one raises, so a stop handled inside one would be lost (2 of 25
    runs of the Ctrl-C test of every model in tests/test_servers.py, beside two busy
    loops, before `bufdemo serve --model fork` forked inside :func:`held`).
    If the block ends with an exception of its own after such a signal came, the
    KeyboardInterrupt is raised in its place (that exception is kept as its context):
    the stop is never lost. Does nothing where no :class:`StopSignals` raises (none
    installed, cleanup begun, a stop already raised, a hook in its place, or not the
    main thread). Not for a block that calls :func:`cleanup_begins`.

    It costs 1.2 - 1.4 us here, so it goes around a batch or a block, not a message::

        python -m timeit -s "from bufdemo.signals import StopSignals, stops_deferred" \\
            -s "StopSignals().install()" "with stops_deferred(): pass"
    """

    __slots__ = ("_count", "_stops")

    def __init__(self) -> None:
        self._stops: StopSignals | None = None
        self._count = 0

    def __enter__(self) -> None:
        stops = _installed
        if (
            stops is not None
            and stops.raising
            and stops.on_stop is None
            and threading.current_thread() is threading.main_thread()
        ):
            self._count = stops.count  # before raising is cleared: none slips between
            stops.raising = False
            self._stops = stops

    def __exit__(self, *exc: object) -> None:
        stops, self._stops = self._stops, None
        if stops is None:
            return
        stops.raising = True  # first: one that comes from here on raises by itself
        if stops.count != self._count:  # one came inside: raised now, the block whole
            stops.raising = False
            raise KeyboardInterrupt


def run_coroutine(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coro)`` under the stop policy: the first stop signal cancels the
    main task, and KeyboardInterrupt is raised once the loop has closed.

    Raised where the main thread happens to be, a KeyboardInterrupt can fall inside the
    loop's own code, between taking a callback from its queue and running it. If that
    callback was the main task's next step (a task that yields with ``await
    asyncio.sleep(0)`` has no other), the task never runs again, and ``asyncio.run``'s
    cleanup, which cancels it and waits for it, waits for ever: a task looping on
    ``sleep(0)`` and stopped at random moments hangs within a few stops: the test
    ``test_a_stop_signal_never_hangs_an_event_loop`` in tests/test_faults.py, with
    ``asyncio.run`` in place of this function in its script, failed at the 2nd, the
    1st and the 1st of its 60 stops in three tries.
    ``asyncio.Runner`` turns SIGINT into this cancellation itself, but only where
    Python's default handler is installed, and never SIGTERM.

    The coroutine sees ``CancelledError`` at an ``await``; one that runs long without
    one should check ``asyncio.current_task().cancelling()`` now and then. A stop that
    comes once the task has ended (the loop closing) is only counted, as after
    :func:`cleanup_begins`: the work's own result or failure stands. Where no
    :class:`StopSignals` raises (none installed, cleanup begun, a stop already raised, or
    not the main thread), this is ``asyncio.run``.
    """
    stops = _installed
    if (
        stops is None
        or not stops.raising
        or threading.current_thread() is not threading.main_thread()
    ):
        return asyncio.run(coro)
    stopped = False
    task: asyncio.Task[T] | None = None

    def stop() -> None:  # the first stop signal, in place of raising
        nonlocal stopped
        if task is None:
            stopped = True  # before the task exists: it is cancelled as soon as it does
        elif not task.done():  # once it has ended: only counted, as in cleanup
            stopped = True
            task.cancel()
            if not task.get_loop().is_closed():
                task.get_loop().call_soon_threadsafe(_nothing)  # wakes a loop in select

    previous, stops.on_stop = stops.on_stop, stop  # first: no stop finds the loop unguarded
    try:
        with asyncio.Runner() as runner:  # closing it runs the loop too: the hook stays
            task = runner.get_loop().create_task(coro)
            if stopped:
                task.cancel()
            result = task.get_loop().run_until_complete(task)
    except BaseException as exc:
        if not stopped:
            raise
        if isinstance(exc, asyncio.CancelledError):
            raise KeyboardInterrupt from None
        raise KeyboardInterrupt from exc  # the work failed as it was stopped: kept
    finally:
        stops.on_stop = previous
        coro.close()  # never started (a failure before the task): no "never awaited"
    if stopped:  # it came as the work finished, before the loop knew
        raise KeyboardInterrupt
    return result


def _nothing() -> None:
    pass


@contextlib.contextmanager
def blocked() -> Iterator[None]:
    """Hold SIGINT/SIGTERM in this thread; a child started inside inherits the mask.

    On leaving, the old mask returns and a signal held meanwhile is delivered (to this
    process: raised here, as the first Ctrl-C, if :class:`StopSignals` is installed).
    For children started with :mod:`multiprocessing` or :mod:`subprocess`; around a
    bare ``os.fork()``, :func:`held`.
    """
    # multiprocessing starts its resource tracker with the first child it spawns, and
    # then *unblocks* SIGINT/SIGTERM in the caller (CPython's bpo-33613 guard): a child
    # started next would start with them unblocked and die of a Ctrl-C while importing,
    # with a traceback. So the tracker is started before the mask is set.
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    with held():
        yield


@contextlib.contextmanager
def held() -> Iterator[None]:
    """:func:`blocked` without starting multiprocessing's resource tracker: for
    ``os.fork()``, whose child calls :func:`unblock` once its handler is installed.

    The stop signals are held in this thread, and a stop that comes meanwhile is raised
    as the block ends (:class:`stops_deferred`), in the caller's own code: not inside one
    of Python's at-fork handlers, where it would be lost. The mask is this thread's: a
    stop that another thread takes is handled by the main thread at its next step all
    the same, inside a handler too; deferred, it is only counted there.
    """
    # Read first, set inside the try: whatever happens as the mask is set, the finally
    # restores it.
    with stops_deferred():
        old = signal.pthread_sigmask(signal.SIG_BLOCK, ())
        try:
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


def unblock() -> None:
    """In a child started inside :func:`blocked` or :func:`held`, once its handler is
    installed: let the stop signals in (one held since the start is delivered now)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def stop_when_orphaned(parent_pid: int | None = None) -> None:
    """Stop this process as if interrupted (SIGTERM to itself) when its parent exits.

    A child of :mod:`multiprocessing` knows its parent; any other child (a forked worker,
    a helper started with subprocess) gives ``parent_pid``, read *before* the fork, or
    nothing to mean its parent now. If that parent is already gone, it stops at once.
    On Linux the child asks the kernel for the signal (``prctl(PR_SET_PDEATHSIG)``) and
    starts no thread: a forked echo worker costs what the lecture says it costs, and a
    run's sender and receiver keep to one thread while their loops run (a second thread,
    even asleep, slows a loop of system calls; docs/benchmarks.md). The kernel sends it
    when the parent's thread that started the child exits: ``run_experiment`` starts
    its children and waits for them in one thread. Elsewhere a daemon thread waits for
    the parent (a multiprocessing child: its sentinel).
    """
    mp_parent = mp.parent_process()
    if mp_parent is not None:
        pid = mp_parent.pid
    else:
        pid = os.getppid() if parent_pid is None else parent_pid
    kernel_watches = _parent_death_signal(signal.SIGTERM)
    if os.getppid() != pid:  # already orphaned (re-parented to init or a subreaper)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    if kernel_watches:
        return
    # A multiprocessing child's join returns when the parent process has gone.
    wait: Callable[[], object] = (
        mp_parent.join if mp_parent is not None else functools.partial(_wait_for_exit, pid)
    )

    def watch() -> None:
        wait()
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="bufdemo-orphan-watch", daemon=True).start()


# prctl(2) option: the signal this process gets when the thread that created it exits.
_PR_SET_PDEATHSIG = 1


def _parent_death_signal(signum: int) -> bool:
    """Ask the kernel to send ``signum`` when the parent exits; False where it cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _wait_for_exit(pid: int) -> None:
    """Return when process ``pid`` (this one's parent) has exited."""
    try:
        fd = os.pidfd_open(pid)  # Linux >= 5.3: readable once the process has exited
    except (AttributeError, OSError):
        while os.getppid() == pid:  # re-parented once the parent is gone
            time.sleep(_ORPHAN_POLL)
        return
    try:
        select.select([fd], [], [])
    finally:
        os.close(fd)
