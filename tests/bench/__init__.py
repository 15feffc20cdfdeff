"""The benchmark: dropline against reference loops, on the same workloads, in the same run.

``make bench`` (``python -m tests.bench``) runs dropline and, one after the
other on the same machine and filesystem, the reference loops in ``refs/``:
a bare rename loop, a naive durable loop (a directory fsync and a SQLite
commit per step of each file), the same by batches of 256, and an
``inotifywait | while read; mv`` loop when inotify-tools is installed.  The
workloads: a backlog of 20,000 files waiting at start, files written at a
fixed rate (latency from the writer's close() to archive/), a backlog of a
million; and for dropline alone SIGTERM while draining and a CPU-bound
Python stage on one and two worker processes.  The stage workloads
(``stage_bench``) put real stages through dropline against the script an
operator writes instead (``refs/csv_script.py``, ``command_script.py``,
``python_script.py``), timed from process start, with latency through one
Python stage, fairness between a slow pipeline and a passthrough one, memory
as PSS over dropline and its children, and the empty pipeline from process
start.  It prints one table, with
dropline's ratio to each reference and the goals with PASS or MISS, and
writes it as markdown (``var/bench.md`` or ``$BENCH_OUT``).

Modules: ``measure`` (processes, readiness, arrivals), ``subjects`` (how each
contestant starts), ``workloads`` (the runs), ``report`` (the table), and
``cpu_stage`` (the CPU-bound stage); ``stage_setup``, ``stage_runs``,
``stage_timing``, ``stage_memory``, ``stage_bench`` and ``stage_report`` for
the stage workloads, ``stage_funcs`` their Python stages.  ``tests/test_bench_smoke.py`` runs all
of it on a few hundred files so that it cannot rot.
"""
