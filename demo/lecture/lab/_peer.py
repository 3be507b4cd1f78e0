"""The lab's helper peer: a TCP receiver in a process of its own.

Some experiments need the receiver outside the measuring process: in another network
namespace (``ip netns exec``), stoppable with SIGSTOP without stopping the sender, or
reading at its own pace without sharing the sender's GIL. It listens, prints its port,
then serves each connection in a thread:

- ``sink``: read and discard until EOF.
- ``count``: read until EOF, then print one JSON line: recv() calls, bytes, the first
  recv() sizes, and how many newline-framed messages the bytes contained.

Accepted sockets use SO_LINGER 0: when the peer is killed they are reset at once, so no
orphaned socket keeps a network namespace alive after the experiment deleted it. The
experiment kills its peer when done; if the experiment itself dies first, the peer
stops by itself (bufdemo's signal policy, :mod:`bufdemo.signals`).

    python -m bufdemo.lecture.lab._peer --bind 127.0.0.1 --mode count --rcvbuf 16384
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import threading

from bufdemo.signals import StopSignals, stop_when_orphaned

RECV_SIZE = 65536
FIRST_SIZES = 12  # how many recv() sizes to report: enough to see the pattern


def _count(conn: socket.socket, lock: threading.Lock) -> None:
    calls = total = frames = 0
    sizes: list[int] = []
    while data := conn.recv(RECV_SIZE):
        calls += 1
        total += len(data)
        frames += data.count(b"\n")
        if len(sizes) < FIRST_SIZES:
            sizes.append(len(data))
    report = {"recv_calls": calls, "bytes": total, "frames": frames, "first_sizes": sizes}
    with lock:
        print(json.dumps(report), flush=True)


def _sink(conn: socket.socket) -> None:
    try:
        while conn.recv(RECV_SIZE):
            pass
    except OSError:
        pass


def _serve(conn: socket.socket, mode: str, lock: threading.Lock) -> None:
    with conn:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        if mode == "count":
            _count(conn, lock)
        else:
            _sink(conn)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bufdemo.lecture.lab._peer")
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--mode", choices=("sink", "count"), default="sink")
    parser.add_argument("--rcvbuf", type=int, default=None)
    args = parser.parse_args(argv)
    StopSignals().install()  # Ctrl-C, SIGTERM, or the experiment gone: leave the accept loop
    stop_when_orphaned()
    lock = threading.Lock()
    with socket.socket() as listener:
        if args.rcvbuf:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, args.rcvbuf)
        listener.bind((args.bind, 0))
        listener.listen()
        print(listener.getsockname()[1], flush=True)
        try:
            while True:
                conn, _ = listener.accept()
                threading.Thread(target=_serve, args=(conn, args.mode, lock), daemon=True).start()
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    sys.exit(main())
