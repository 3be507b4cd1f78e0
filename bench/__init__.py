"""Benchmarks: each prints its result as a ratio or rate measured in one run.

Like the ``bufdemo`` command, the benchmarks run without numpy's OpenBLAS worker
threads (unless OPENBLAS_NUM_THREADS is set): a loop measured in a process that has a
second thread, even a sleeping one, is measured in a slower process than a user's.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
