"""bufdemo's analysis: read run directories, find stalls and phases, summarize, plot.

Reads only run directories (docs/run-format.md); never touches sockets or ``demo``.

    load_run(path) -> Run                 the tables, with seconds since t0 beside each *_ns
    stalls / resumes / phases / ...       pure functions of the tables
    summarize(run) -> dict                summary.json; format_summary -> lines to print
    timeline_figure / zoom_figure         Figures; panel helpers take an Axes, return artists
    bytes_in_place / kernel_view / compare   where the bytes are, tcp_info's view, runs side by side
    save_figures / write_summary          the only functions that write files
"""

from bufdemo.analysis.latency import (
    decompose,
    latency,
    latency_figure,
    latency_summary,
    littles_law,
    plot_latency,
    plot_latency_breakdown,
)
from bufdemo.analysis.load import FORMAT_VERSION, Run, RunFormatError, load_run
from bufdemo.analysis.plots import (
    mark_phases,
    plot_blocking,
    plot_messages,
    plot_queues,
    plot_window,
    shade_stalls,
    timeline_figure,
    zoom_figure,
)
from bufdemo.analysis.report import save_figures, summary_json, write_summary
from bufdemo.analysis.stalls import (
    Phase,
    interval_indicator,
    phases,
    receiver_seconds,
    resumes,
    sender_seconds,
    service_times,
    stalls,
)
from bufdemo.analysis.summary import format_summary, summarize
from bufdemo.analysis.views import (
    bytes_in_place,
    compare,
    kernel_view,
    plot_bytes_in_place,
    plot_limited,
)

__all__ = [
    "FORMAT_VERSION",
    "Phase",
    "Run",
    "RunFormatError",
    "bytes_in_place",
    "compare",
    "decompose",
    "format_summary",
    "interval_indicator",
    "kernel_view",
    "latency",
    "latency_figure",
    "latency_summary",
    "littles_law",
    "load_run",
    "mark_phases",
    "phases",
    "plot_blocking",
    "plot_bytes_in_place",
    "plot_latency",
    "plot_latency_breakdown",
    "plot_limited",
    "plot_messages",
    "plot_queues",
    "plot_window",
    "receiver_seconds",
    "resumes",
    "save_figures",
    "sender_seconds",
    "service_times",
    "shade_stalls",
    "stalls",
    "summarize",
    "summary_json",
    "timeline_figure",
    "write_summary",
    "zoom_figure",
]
