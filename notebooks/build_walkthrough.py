"""Build and execute notebooks/walkthrough.ipynb (the committed notebook, with outputs).

    .venv/bin/python notebooks/build_walkthrough.py

The cells below are the notebook's source; this script writes them as a notebook,
executes it top to bottom with nbclient (real runs on this machine) and saves it with
its outputs, so it reads on a code-hosting page without running it. The test suite
executes the committed notebook again (tests/test_notebook.py), so it cannot rot.
Every number in the prose is printed by a code cell from the run above it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
NOTEBOOK = HERE / "walkthrough.ipynb"
TIMEOUT = 300  # seconds per cell; the whole notebook takes about a minute here

CELLS: list[tuple[str, str]] = [
    (
        "md",
        """# bufdemo walkthrough: why a fast sender stalls behind a slow receiver

Every TCP socket has two kernel buffers. `send()` does not put bytes on the wire: it
copies them into the socket's **send buffer** and returns; TCP moves them to the peer's
**receive buffer**, where they wait until the receiving program calls `recv()`.
If the receiver is slower than the sender, its receive buffer fills, it advertises a
**zero window** ("send nothing more"), the sender's send buffer fills too, and then
`send()` **blocks**: the kernel puts the sender to sleep until there is room again.

This notebook runs that experiment on the real kernel with bufdemo's Python API and
reads each run back with `analysis`. Every number in the text is computed from the
run above it.""",
    ),
    (
        "code",
        """%matplotlib inline
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
from IPython.display import Markdown, display

from bufdemo import RunConfig, analysis, run_experiment

RUNS = Path(tempfile.mkdtemp(prefix="bufdemo-walkthrough-"))


def run(**settings):
    \"\"\"One experiment, no plots written (the notebook draws its own).\"\"\"
    result = run_experiment(RunConfig(out=RUNS, plot=False, **settings))
    assert result.complete, result.reason
    return analysis.load_run(result.run_dir)


def say(text):
    display(Markdown(text))


def verdict(result):
    \"\"\"A lab result as prose: the claim, whether it held, and why.\"\"\"
    mark = "holds" if result.holds else "**does not hold**"
    lines = [f"**{result.name}**: {mark} ({result.seconds:.1f} s). *{result.claim}*", ""]
    lines += [f"- {line}" for line in result.explanation]
    say("\\n".join(lines))""",
    ),
    (
        "md",
        """## 1. A short run

10,000 messages of 1 KiB. The receiver spends 0.5 ms on each; the sender pushes as
fast as the kernel accepts them. Both buffers are left to the kernel's autotuning.""",
    ),
    (
        "code",
        """base = run(messages=10_000, recv_delay=0.0005)
s = analysis.summarize(base)
say(
    f"All **{s['messages_intact']:,}** of {s['messages_sent']:,} messages arrived intact "
    f"(sequence and checksum checked). The sender stalled **{s['blocking_sends']}** "
    f"times, for {s['stall_seconds']:.2f} s in all; it handed its last message to the "
    f"kernel at **{s['sender_seconds']:.2f} s**, the receiver consumed it at "
    f"**{s['receiver_seconds']:.2f} s**. The kernel granted SO_SNDBUF "
    f"{s['sndbuf_granted']:,} B and SO_RCVBUF {s['rcvbuf_granted']:,} B."
)""",
    ),
    (
        "code",
        """fig = analysis.timeline_figure(base)
fig""",
    ),
    (
        "code",
        """lines = []
for phase in analysis.phases(base):
    lines.append(f"- **{phase.name}**: {phase.start:.3f} s to {phase.end:.3f} s "
                 f"({phase.end - phase.start:.3f} s)")
say("The three phases, from the run:\\n\\n" + "\\n".join(lines) + "\\n\\n"
    "**Fill**: the sender runs free and both queues climb. **Stall/resume**: the send "
    "buffer is full, `send()` blocks, and the sender only moves when the receiver has "
    "made room: it is paced by the receiver. **Drain**: the sender is done; the "
    "receiver still works through what the kernel holds for it.")""",
    ),
    (
        "md",
        """## 2. Where the bytes are

Every byte handed to the kernel is in exactly one place: the sender's send queue
(not yet acknowledged), the receiver's receive queue (acknowledged, not yet read), or
consumed. The stack must meet the black line.""",
    ),
    (
        "code",
        """fig, ax = plt.subplots(figsize=(11, 4))
analysis.plot_bytes_in_place(ax, base)
ax.legend(loc="upper left")
plt.show()
where = analysis.bytes_in_place(base)
mid = where.iloc[len(where) // 2]
say(
    f"At t = {mid.t:.2f} s: {mid.handed / 2**20:.2f} MiB handed to the kernel = "
    f"{mid.send_queue / 2**20:.2f} MiB in the send queue + "
    f"{mid.receive_queue / 2**10:.0f} KiB in the receive queue + "
    f"{mid.consumed / 2**20:.2f} MiB consumed. Over the whole run the stack misses the "
    f"line by {where.unaccounted.abs().median():,.0f} B (median), the skew between two "
    f"samplers 1 ms apart. Almost all the backlog sits in the **sender's** buffer: "
    f"autotuning grew it to {s['sndbuf_granted'] / 2**20:.1f} MiB, "
    f"the receive buffer is {s['rcvbuf_granted'] / 2**10:.0f} KiB."
)""",
    ),
    (
        "md",
        """## 3. The stall/resume hysteresis

The kernel does not wake a blocked sender as soon as one message fits. It wakes it when
the free space is at least half of what is queued, that is when the queue has drained
to about **2/3** of the buffer. Each blocking send is logged with the send queue when it
blocked and right after it resumed; the zoom marks both.""",
    ),
    (
        "code",
        """fig = analysis.zoom_figure(base)
fig""",
    ),
    (
        "code",
        """wakes = analysis.resumes(base)
display(wakes[["t", "outq_start", "outq_wake", "drained", "of_stall_start"]].head(8).round(3))
say(
    f"Median queue at wake-up: **{wakes.of_stall_start.median():.3f}** of the queue at "
    f"the stall (the rule predicts 0.667); the sender sleeps until "
    f"{wakes.drained.median() / 2**20:.2f} MiB have drained (median) and then refills "
    f"the buffer in a burst."
)""",
    ),
    (
        "md",
        """## 4. Buffer sizes: autotuned vs set by hand

`setsockopt(SO_SNDBUF, n)` is not what you get: Linux stores **2n** (room for its own
bookkeeping) and switches autotuning off for that socket. Same workload, buffers set to
64 KiB by hand:""",
    ),
    (
        "code",
        """small = run(messages=10_000, recv_delay=0.0005, sndbuf=65536, rcvbuf=65536)
table = analysis.compare({"autotuned": base, "set to 64 KiB": small})
display(table.astype(float).round(3))
ss = analysis.summarize(small)
say(
    f"Asked for 65,536 B, granted **{ss['sndbuf_granted']:,} B**. With a buffer "
    f"{s['sndbuf_granted'] / ss['sndbuf_granted']:.0f}x smaller the sender stalls "
    f"{ss['stall_count']:,} times instead of {s['stall_count']}, each stall far shorter "
    f"(median {ss['stall_seconds_median'] * 1e3:.1f} ms vs "
    f"{s['stall_seconds_median'] * 1e3:.0f} ms), and it finishes at "
    f"{ss['sender_seconds']:.2f} s instead of {s['sender_seconds']:.2f} s: a small "
    f"buffer holds less backlog, so the sender is done later and the drain is shorter. "
    f"The receiver finishes at the same time either way "
    f"({ss['receiver_seconds']:.2f} s vs {s['receiver_seconds']:.2f} s): it sets the pace."
)""",
    ),
    (
        "code",
        """fig, axes = plt.subplots(1, 2, figsize=(11, 3.5), sharey=True)
for ax, (label, r) in zip(axes, {"autotuned": base, "set to 64 KiB": small}.items(), strict=True):
    d = analysis.stalls(r).duration * 1e3
    ax.hist(d, bins=30, color="tab:red")
    ax.set_title(f"{label}: {len(d):,} stalls")
    ax.set_xlabel("stall length (ms)")
axes[0].set_ylabel("stalls")
plt.show()""",
    ),
    (
        "md",
        """## 5. The small-window trap

On loopback the MSS is about 64 KB. The receiver reopens a shut window only once it can
offer a whole MSS (silly-window avoidance). If its buffer is shrunk below that *after*
the handshake, that never happens: data moves only when the sender's zero-window probe
timer fires, with **both sides idle**. Set before `listen()` (as bufdemo does), the
handshake shows the small window and the sender cuts its segment size to fit. The
`small-window` lab experiment measures both:""",
    ),
    (
        "code",
        """from bufdemo.lecture import lab

verdict(lab.run("small-window"))""",
    ),
    (
        "md",
        """## 6. What close() does with buffered data, and what a vanished peer does

The lecture's claims, each measured by a lab experiment: data still in the sender's
send buffer survives `close()`; unread data in the receiver's buffer does not (the
peer gets a reset); a receiver that vanishes without a FIN leaves the sender writing
until its buffer is full, then blocked.""",
    ),
    (
        "code",
        """for name in ("sender-close", "receiver-close", "dead-peer"):
    verdict(lab.run(name))""",
    ),
    (
        "md",
        """## 7. The kernel's own view

The application sees backpressure as time blocked in `send()`. The kernel counts the
same thing in `tcp_info`: microseconds during which the connection could not send
because the receiver's window was full (`rwnd_limited`), and per-namespace counters of
zero-window advertisements.""",
    ),
    (
        "code",
        """fig, ax = plt.subplots(figsize=(11, 3.5))
analysis.plot_limited(ax, base)
ax.legend(loc="upper left")
plt.show()
k = analysis.kernel_view(base)
delta = k["netstat_delta"] or {}
say(
    f"The sender was blocked in `send()` for **{k['blocked_in_send_seconds']:.2f} s**; "
    f"tcp_info says the connection was limited by the receiver's window for "
    f"**{k['rwnd_limited_seconds']:.2f} s** and by its own send buffer for "
    f"{k['sndbuf_limited_seconds']:.2f} s (that counter only runs when everything queued "
    f"was already sent, which never happens here). The window count is the larger: it "
    f"keeps running through the drain, when the application is done but its queued data "
    f"still waits for the receiver's window. The sender saw the receiver's window "
    f"at 0 in {k['zero_window_share']:.0%} of its samples. The namespace counted "
    f"{delta.get('TCPToZeroWindowAdv', 'n/a')} zero-window advertisements during the "
    f"run ({k['netstat_scope']})."
)""",
    ),
    (
        "md",
        """## 8. Three witnesses agree

So far the stalls are the application's story: time spent in `send()`. Two independent
witnesses can check it. The **kernel** logs `tcp:tcp_probe` for every segment a socket
processes (as root, in a private tracefs instance: `trace=True`); at the sender that is
each ACK, carrying the window the receiver advertised. The **wire** is a packet
capture (`capture=True`, with tcpdump): zero-window advertisements and window updates
as they crossed loopback. Both are put on the run's clock. Without root or tcpdump the
run goes on and says what it skipped.""",
    ),
    (
        "code",
        """from bufdemo.analysis import witness

witnessed_result = run_experiment(
    RunConfig(out=RUNS, plot=False, messages=6_000, recv_delay=0.001, trace=True, capture=True)
)
assert witnessed_result.complete, witnessed_result.reason
for note in witnessed_result.notes:
    say(f"*Skipped:* {note}")
witnessed = analysis.load_run(witnessed_result.run_dir)
cc = witness.cross_check(witnessed)
if cc.trace or cc.wire:
    seen = []
    if cc.trace:
        seen.append(f"the kernel's trace showed the receiver's window closed or full "
                    f"(less than one segment left) during **{cc.trace_closed}**")
    if cc.wire:
        seen.append(f"the capture showed it closed or full during "
                    f"**{cc.wire_closed}**")
    both = (f"; both witnesses agree on **{cc.both_closed}**" if cc.trace and cc.wire
            else "")
    say(f"Of the **{cc.stalls}** stalls, " + " and ".join(seen) + both + ".")
    counts = "\\n".join(f"- {k}: **{'n/a' if v is None else v}**" for k, v in cc.counts.items())
    say("Zero-window *episodes*, counted four ways:\\n\\n" + counts + "\\n\\n"
        + "\\n".join(f"- {w}" for w in cc.why))
else:
    say("Neither witness could run here (see the lines above): the stalls stand on the "
        "application's record alone.")""",
    ),
    (
        "code",
        """fig = witness.sequence_figure(witnessed)
if fig is None:
    say("No kernel trace in this run, so no time-sequence graph.")
else:
    say("The time-sequence graph from the trace: bytes sent (`snd_nxt`), bytes "
        "acknowledged (`snd_una`) and the receiver's limit (`snd_una + snd_wnd`). During a "
        "stall (shaded) the sender sits on the limit: it has sent all the receiver allows.")
fig""",
    ),
    (
        "md",
        """## 9. What the buffer costs in latency

A message handed to the kernel is not delivered: it waits its turn. bufdemo follows
every message from the moment `send()` returned, through the kernel's transmit
timestamps (SO_TIMESTAMPING: when its last byte left the send queue, when the ACK
came back), to the receiver's service of it, and splits its latency into where it
waited: queued in the send buffer, in flight until ACKed, waiting in the receive
queue, and the receiver's own work. The kernel's transmit timestamps wake a blocked
`send()` early (so stalls are shorter and more frequent with them), which is why they
are asked for only here: the same run as section 1, with `timestamps=True`.""",
    ),
    (
        "code",
        """stamped = run(messages=base.config["messages"], recv_delay=base.config["recv_delay"],
              timestamps=True)
lat = analysis.latency_summary(stamped)
fig = analysis.latency_figure(stamped, figsize=(11, 6))
plt.show()
law = lat["littles_law"]
parts = [
    f"- {name.replace('_', ' ')}: median **{lat[name]['p50'] * 1e3:,.1f} ms**"
    for name in ("queued_in_send_buffer", "in_flight_until_ack",
                 "waiting_in_receive_queue", "service")
    if lat[name]["p50"] is not None
]
say(
    f"Median end-to-end latency **{lat['end_to_end']['p50']:.2f} s** "
    f"(p99 {lat['end_to_end']['p99']:.2f} s) for a receiver that spends 0.5 ms on a "
    f"message. Where it went:\\n\\n" + "\\n".join(parts) + "\\n\\n"
    + (f"{lat['send_buffer_share']:.0%} of all the latency was spent in the sender's send "
       "buffer. " if lat["send_buffer_share"] is not None else
       f"(No transmit timestamps here: {lat['timestamping']}.) ")
    + (f"Little's law predicts it: in the stall/resume phase the kernels held "
       f"{law['queued_bytes_median'] / 2**20:.2f} MiB (median) in front of a receiver "
       f"draining {law['drain_rate'] / 2**20:.2f} MiB/s, so a message should wait "
       f"{law['predicted_seconds']:.2f} s; measured: {law['measured_seconds']:.2f} s."
       if law["ratio"] is not None else "")
)""",
    ),
    (
        "md",
        """### The knee: a sender below and above the receiver's rate

`--send-rate` paces the sender (the analogue of iperf3 `-b`). Below the receiver's
1,000 messages a second nothing queues and a message costs about one service time;
above it the buffers fill, the sender blocks, and latency jumps to the buffers' depth
divided by the drain rate. Small buffers (64 KiB) and 1,000 messages keep this quick.""",
    ),
    (
        "code",
        """from bufdemo.analysis.comparison import compare_table, plot_metric

rates = [400, 800, 1200, 2000]
knee_runs = {
    f"{r}": run(messages=1_000, recv_delay=0.001, sndbuf=65536, rcvbuf=65536, send_rate=r)
    for r in rates
}
knee = compare_table(knee_runs, values={k: k for k in knee_runs})
knee["send_rate"] = rates
fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.5))
plot_metric(left, knee, "send_rate", "latency_p50_seconds")
plot_metric(right, knee, "send_rate", "blocking_sends")
plt.show()
rows = [
    f"- {row.send_rate:,} msg/s: **{row.blocking_sends:,}** blocking sends, median latency "
    f"**{row.latency_p50_seconds * 1e3:,.1f} ms**, throughput "
    f"{row.throughput_msgs_per_s:,.0f} msg/s"
    for row in knee.itertuples()
]
say("Against a receiver serving 1,000 msg/s:\\n\\n" + "\\n".join(rows))""",
    ),
    (
        "md",
        """### TCP_NOTSENT_LOWAT: keep the backlog in the application

`--notsent-lowat BYTES` makes `send()` and select() wait while more than BYTES are
queued *unsent*: the kernel keeps only a little ahead of the wire, and the backlog
stays in the application, where it can be dropped, merged or reprioritised. The same
select-mode run with and without a 16 KiB mark:""",
    ),
    (
        "code",
        """pair = {
    "default": run(messages=5_000, recv_delay=0.0005, mode="select"),
    "notsent_lowat 16384": run(
        messages=5_000, recv_delay=0.0005, mode="select", notsent_lowat=16384
    ),
}
side = compare_table(pair)
fig, axes = plt.subplots(2, 1, figsize=(11, 5), sharex=True)
for ax, (name, r) in zip(axes, pair.items(), strict=True):
    ss = r.sender_samples
    ax.plot(ss["t"], ss["outq_nsd"] / 1024, lw=0.8, label="unsent (SIOCOUTQNSD)")
    ax.plot(ss["t"], ss["outq"] / 1024, lw=0.8, label="send queue (SIOCOUTQ)")
    ax.set_ylabel("KiB")
    ax.set_title(name, loc="left")
    ax.legend(loc="upper right")
axes[-1].set_xlabel("time since connection (s)")
plt.show()
d, lo = side.iloc[0], side.iloc[1]
say(
    f"Unsent bytes peaked at **{d.max_unsent_bytes / 1024:,.0f} KiB** by default and "
    f"**{lo.max_unsent_bytes / 1024:,.0f} KiB** with the mark (the kernel checks it per "
    f"skb, so up to one segment more). Median latency: **{d.latency_p50_seconds:.3f} s** "
    f"against **{lo.latency_p50_seconds:.3f} s**, "
    f"{d.latency_p50_seconds / lo.latency_p50_seconds:.0f} times lower; throughput "
    f"{d.throughput_msgs_per_s:,.0f} against {lo.throughput_msgs_per_s:,.0f} msg/s: "
    "the receiver sets the pace either way, the mark only decides where the waiting "
    "happens."
)""",
    ),
    (
        "md",
        """## 10. Slow link vs slow reader

On loopback the only thing that can hold the sender back is the reader. Over a real
link there is a second kind of backpressure: the link's rate. `run(netns=True)` puts
each side in its own network namespace, joined by a veth pair; `link_rate` puts a
20 Mbit/s bottleneck with a queue on the sender's side (this needs root). Both runs
below block in `send()`; the windows tell them apart.""",
    ),
    (
        "code",
        """import os

from bufdemo.analysis.linkplots import plot_link_queue, plot_windows

if os.geteuid() != 0:
    say("This section needs root (network namespaces): skipped on this machine.")
else:
    slow_link = run(netns=True, link_rate="20mbit", recv_delay=0.0, messages=5000)
    slow_reader = run(netns=True, recv_delay=0.001, messages=3000)
    fig, axes = plt.subplots(2, 2, figsize=(13, 6), sharex="col")
    for col, (title, r) in enumerate((("slow link", slow_link), ("slow reader", slow_reader))):
        plot_windows(axes[0][col], r)
        axes[0][col].set_title(title)
        plot_link_queue(axes[1][col], r)
        axes[1][col].set_xlabel("time since connection (s)")
    plt.show()
    lk, rd = analysis.summarize(slow_link), analysis.summarize(slow_reader)
    say(
        f"Behind the **slow link** the sender blocked {lk['blocking_sends']:,} times, yet "
        f"the receiver's window was shut in only {lk['limits']['window_shut_share']:.0%} "
        f"of the samples: tcp_info counts {lk['limits']['cwnd_limited_share']:.0%} of the "
        f"busy time as limited by the congestion window, and the bottleneck queue held up "
        f"to {lk['limits']['max_link_backlog_bytes']:,.0f} B (srtt "
        f"{lk['limits']['srtt_ms_median']:.1f} ms, goodput {lk['goodput_mbit']:.1f} Mbit/s "
        f"through a 20 Mbit/s link). Verdict: **{lk['limited_by']}**.\\n\\n"
        f"Behind the **slow reader** the sender blocked {rd['blocking_sends']:,} times and "
        f"the window was shut in {rd['limits']['window_shut_share']:.0%} of the samples: "
        f"{rd['limits']['rwnd_limited_share']:.0%} of the busy time was limited by the "
        f"receiver's window, with no queue on the link (srtt "
        f"{rd['limits']['srtt_ms_median']:.1f} ms). Verdict: **{rd['limited_by']}**."
    )""",
    ),
    (
        "md",
        """## Where to go next

- `bufdemo run --help`, and the same experiment with `--mode select` (the sender waits
  for select()'s *writable* event instead of blocking in `send()`).
- `bufdemo lab list`: every claim of the lecture as an experiment.
- `docs/run-format.md`: every file and column of a run directory.
- `docs/two-hosts.md`: the link options, and a run across two machines with `bufdemo merge`.""",
    ),
]


# Issue 13: the buffer above the kernel (asyncio) and a server with one slow client;
# placed before "Where to go next".
BUFFER_ABOVE_KERNEL_CELLS: list[tuple[str, str]] = [
    (
        "md",
        """## 11. The buffer above the kernel: asyncio

Most Python code never calls `send()`: it calls `StreamWriter.write()`, which never
blocks. What the kernel does not take waits in the transport's buffer, in user space.
`await drain()` waits only while that buffer is above its high-water mark (64 KiB by
default), until asyncio has sent it down to the low-water mark; in mode `asyncio` a
blocking send *is* such a drain() wait. Three runs of the same workload: a blocking
`send()`, `write()` + `drain()`, and `write()` alone.""",
    ),
    (
        "code",
        """from bufdemo.analysis.userbuffer import plot_rss, plot_user_buffer, transport_samples

modes = {m: run(messages=10_000, recv_delay=0.0002, mode=m)
         for m in ("blocking", "asyncio", "asyncio-nodrain")}
analysis.compare(modes)""",
    ),
    (
        "code",
        """fig, axes = plt.subplots(2, 2, figsize=(12, 6), sharex="col")
for col, m in enumerate(("asyncio", "asyncio-nodrain")):
    ts = transport_samples(modes[m])
    plot_user_buffer(axes[0, col], ts)
    axes[0, col].set_title(f"mode {m}")
    axes[0, col].set_ylabel("MiB")
    axes[0, col].legend(loc="upper right", fontsize=8)
    plot_rss(axes[1, col], ts)
    axes[1, col].set_ylabel("sender RSS (MiB)")
    axes[1, col].set_xlabel("time since connection (s)")
    axes[1, col].legend(loc="lower right", fontsize=8)
plt.show()
a, n = (analysis.summarize(modes[m])["asyncio"] for m in ("asyncio", "asyncio-nodrain"))
MB = 1e6
say(
    f"Without `drain()` the transport's buffer peaked at **{n['buffered_peak_bytes'] / MB:.1f}"
    f" MB**: the bytes written by then ({n['written_at_peak_bytes'] / MB:.1f} MB) minus "
    f"what the kernel held and the receiver had consumed "
    f"({n['expected_peak_bytes'] / MB:.1f} MB). The sender's RSS grew by "
    f"**{n['rss_growth_bytes'] / MB:.1f} MB**, with no blocking send at all: the "
    f"backpressure went into memory. With `drain()` the buffer never held more than "
    f"**{a['buffered_peak_bytes']:,} B** (high-water mark {a['high_water']:,} B plus one "
    f"message), the writer waited in drain() **{a['drain_waits']}** times, and RSS grew "
    f"by {a['rss_growth_bytes'] / MB:.1f} MB, {a['recorder_growth_bytes'] / MB:.2f} MB of "
    f"it the recording's own sample tables (spooled to disk every half second)."
)""",
    ),
    (
        "md",
        """## 12. One slow client

The same trap one level down, in a server: a broadcast server sends every message to
every client, and one client stops reading for a second. Three designs: (a) the
lecture's select() loop with blocking sends, (b) non-blocking sends from per-client
output queues on select()'s writable event, (c) as (b) with a per-client output limit
that disconnects a client past it (Redis's client-output-buffer-limit).""",
    ),
    (
        "code",
        """import time
from dataclasses import replace

from bufdemo.lecture.lab import slowclient

started = time.monotonic()
designs = {d: slowclient.run_design(d) for d in slowclient.DESIGNS}
slow = replace(slowclient.verdict(designs), seconds=time.monotonic() - started)
verdict(slow)
fig, (ax_l, ax_m) = plt.subplots(1, 2, figsize=(12, 4))
slowclient.plot_latency(ax_l, list(designs.values()))
slowclient.plot_server_memory(ax_m, list(designs.values()))
ax_l.legend(fontsize=8)
ax_m.legend(fontsize=8)
plt.show()
ev = slow.evidence
say(
    f"Under (a) the other clients waited up to **{ev['a-blocking']['latency_max_ms']:,.0f} "
    f"ms** for a pause of {ev['a-blocking']['slow_client_pause_ms']:,.0f} ms: one blocked "
    f"`sendall()` stops the whole loop. Under (b) their p99 was "
    f"**{ev['b-queues']['latency_p99_ms']} ms**, but the server held "
    f"**{ev['b-queues']['server_queued_peak_bytes'] / 1e6:.1f} MB** for the slow client. "
    f"Under (c) their p99 was **{ev['c-limit']['latency_p99_ms']} ms**, the server's "
    f"queues peaked at {ev['c-limit']['server_queued_peak_bytes'] / 1e6:.2f} MB and the "
    f"slow client was cut off after {ev['c-limit']['slow_client_disconnected_at_s']:.2f} s."
)""",
    ),
]
CELLS[-1:-1] = BUFFER_ABOVE_KERNEL_CELLS


def build() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    for kind, source in CELLS:
        cell = nbformat.v4.new_markdown_cell if kind == "md" else nbformat.v4.new_code_cell
        nb.cells.append(cell(source))
    return nb


def main() -> int:
    nb = build()
    NotebookClient(
        nb,
        timeout=TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(HERE.parent)}},
    ).execute()
    nbformat.write(nb, NOTEBOOK)
    print(f"wrote {NOTEBOOK}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
