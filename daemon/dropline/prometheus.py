"""Prometheus metrics of a running daemon: an HTTP endpoint, a textfile, or both.

Imported only when the configuration has ``metrics:`` (``metrics.make_metrics``).
Only the loop calls the update methods.  The HTTP endpoint is served by
prometheus_client's own thread, which reads the metrics when scraped
(prometheus_client's values are safe to update and read from two threads).

Every label value comes from a bounded set: pipeline and stage names from the
configuration, outcomes and refusal kinds from the fixed tuples of ``metrics.py``.
"""

from __future__ import annotations

import contextlib
import errno
import math
import socket
import threading
import time
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    start_http_server,
    write_to_textfile,
)

from .config import MetricsConfig
from .errors import ConfigError
from .log import get_logger
from .metrics import FILE_OUTCOMES, NO_PIPELINE, OTHER, STAGE_OUTCOMES
from .spool import REFUSAL_KINDS

# From 1 ms (a passthrough file on a fast disk) to an hour (a long stage, or a
# file that waited through retries with backoff).
BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
    math.inf,
)


class _ProcessCollector(ProcessCollector):
    """prometheus_client's process metrics, with the boot time taken from the clocks.

    It reads the boot time from /proc/stat, which the unit's ProcSubset=pid hides, and
    without it reports no process_* metric at all.  The clocks give the same time.
    """

    def _boot_time(self) -> float:
        return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


class Metrics:
    """The metrics of one daemon, served over HTTP and/or written to a textfile."""

    def __init__(self, config: MetricsConfig, *, file: str = "") -> None:
        self.config = config
        self.file = file  # the configuration file, for errors naming metrics.listen
        self.log = get_logger()
        # Served over HTTP: dropline's metrics and the process's (CPU, memory, fds).
        self.registry = CollectorRegistry()
        _ProcessCollector(registry=self.registry)
        # Written to the textfile: dropline's metrics only.  node exporter has process_*
        # metrics of its own, and the same names from a textfile would collide with them.
        self.textfile_registry = CollectorRegistry()
        self.files = Counter(
            "dropline_files",
            "Files that reached their end, by pipeline and outcome.",
            ("pipeline", "outcome"),
            registry=None,
        )
        self.latency = Histogram(
            "dropline_file_latency_seconds",
            "Seconds from the claim of a file to its end (archived, failed or vanished).",
            ("pipeline",),
            buckets=BUCKETS,
            registry=None,
        )
        self.stage_duration = Histogram(
            "dropline_stage_duration_seconds",
            "Seconds one stage attempt ran, whatever its outcome.",
            ("pipeline", "stage"),
            buckets=BUCKETS,
            registry=None,
        )
        self.stage_attempts = Counter(
            "dropline_stage_attempts",
            "Stage attempts that ended, by outcome.",
            ("pipeline", "stage", "outcome"),
            registry=None,
        )
        self.retries = Counter(
            "dropline_retries",
            "Stage attempts that failed and were scheduled to run again.",
            ("pipeline", "stage"),
            registry=None,
        )
        self.refused = Counter(
            "dropline_refused",
            "Entries of incoming/ refused (each entry counted once), by kind.",
            ("kind",),
            registry=None,
        )
        self.overflows = Counter(
            "dropline_inotify_overflows",
            "Times the inotify queue overflowed (each one starts a rescan).",
            registry=None,
        )
        self.rescans = Counter(
            "dropline_rescans",
            "Rescans of incoming/ started: every rescan_interval, and after an overflow.",
            registry=None,
        )
        self.backlog = Gauge(
            "dropline_backlog_files",
            "Files seen in incoming/ and not yet claimed (as far as the daemon knows).",
            registry=None,
        )
        self.in_flight = Gauge(
            "dropline_in_flight_files", "Files claimed and not yet at their end.", registry=None
        )
        self.running = Gauge(
            "dropline_running_stages", "Stage attempts running now.", registry=None
        )
        self.held = Gauge(
            "dropline_pipeline_held",
            "1 while a stage's breaker holds the pipeline (its downstream fails every file).",
            ["pipeline"],
            registry=None,
        )
        for metric in (
            self.files,
            self.latency,
            self.stage_duration,
            self.stage_attempts,
            self.retries,
            self.refused,
            self.overflows,
            self.rescans,
            self.backlog,
            self.in_flight,
            self.running,
            self.held,
        ):
            self.registry.register(metric)
            self.textfile_registry.register(metric)
        for kind in REFUSAL_KINDS:
            self.refused.labels(kind)  # every kind shown from the start, at 0
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._next_write = 0.0  # monotonic time the textfile is due
        self._write_failed = False

    # --- start and stop ---------------------------------------------------

    def start(self) -> None:
        """Listen on metrics.listen, if configured; the textfile is written by tick()."""
        if self.config.listen is None:
            return
        host, port = self.config.listen
        try:
            self._server, self._thread = start_http_server(port, host, registry=self.registry)
        except OSError as exc:
            # A ConfigError, not a FatalIOError: the address is the operator's choice in the
            # configuration, and it stays taken (or not on this host) however often systemd
            # restarts dropline.  A ConfigError exits 2, which the unit's
            # RestartPreventExitStatus=2 keeps from looping, and names the key to change.
            raise ConfigError(
                f"cannot listen on {self.config.address}: {_listen_problem(exc)}",
                file=self.file,
                line=self.config.lines.get("listen", 0),
                key="metrics.listen",
            ) from None
        self.log.info("metrics.listening", address=self.config.address, path="/metrics")

    def close(self) -> None:
        """Stop serving; write the textfile a last time, with the final counts."""
        if self._server is not None:
            _shut_down(self._server)
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._write_textfile()

    # --- what happened ----------------------------------------------------

    def file_finished(self, pipeline: str | None, outcome: str, seconds: float) -> None:
        name = pipeline if pipeline is not None else NO_PIPELINE
        self.files.labels(name, outcome if outcome in FILE_OUTCOMES else OTHER).inc()
        self.latency.labels(name).observe(max(seconds, 0.0))

    def stage_ended(self, pipeline: str, stage: str, outcome: str, seconds: float) -> None:
        self.stage_duration.labels(pipeline, stage).observe(max(seconds, 0.0))
        shown = outcome if outcome in STAGE_OUTCOMES else OTHER
        self.stage_attempts.labels(pipeline, stage, shown).inc()

    def retry_scheduled(self, pipeline: str, stage: str) -> None:
        self.retries.labels(pipeline, stage).inc()

    def entry_refused(self, kind: str) -> None:
        self.refused.labels(kind if kind in REFUSAL_KINDS else OTHER).inc()

    def overflow(self) -> None:
        self.overflows.inc()

    def rescan(self) -> None:
        self.rescans.inc()

    def pipeline_held(self, pipeline: str, held: bool) -> None:
        self.held.labels(pipeline).set(1 if held else 0)

    def set_gauges(self, waiting: int, in_flight: int, running: int) -> None:
        self.backlog.set(waiting)
        self.in_flight.set(in_flight)
        self.running.set(running)

    def tick(self, mono: float) -> None:
        """Rewrite the textfile when metrics.interval has passed since the last time."""
        if self.config.textfile is None or mono < self._next_write:
            return
        self._next_write = mono + self.config.interval
        self._write_textfile()

    def _write_textfile(self) -> None:
        textfile = self.config.textfile
        if textfile is None:
            return
        # write_to_textfile writes PATH.PID.THREAD and renames it over PATH: a reader
        # (node exporter) sees the old file or the new one, never half of one.
        try:
            write_to_textfile(str(textfile), self.textfile_registry)
        except OSError as exc:
            # Metrics are not worth stopping for: said once, until a write succeeds again.
            if not self._write_failed:
                error = exc.strerror or str(exc)
                self.log.warning("metrics.textfile_failed", path=str(textfile), error=error)
            self._write_failed = True
        else:
            if self._write_failed:
                self.log.info("metrics.textfile_ok", path=str(textfile))
            self._write_failed = False


def _shut_down(server: WSGIServer) -> None:
    """Stop serving now, not at the server's next look at its flag (every 0.5 s)."""
    stopper = threading.Thread(target=server.shutdown, name="metrics-shutdown")
    stopper.start()
    # serve_forever sees the request to stop when its select() returns: a connection
    # of our own makes it return at once.  Again until it has stopped, since the first
    # one may come before the request does.
    while stopper.is_alive():
        with socket.socket(server.address_family, socket.SOCK_STREAM) as poke:
            poke.settimeout(0.1)
            with contextlib.suppress(OSError):
                poke.connect(server.server_address)
        stopper.join(0.01)
    server.server_close()


def _listen_problem(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "the address is already in use (another program holds that port)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "no interface of this host has that address"
    if exc.errno == errno.EACCES:
        return f"{exc.strerror} (a port below 1024 needs privileges)"
    return exc.strerror or str(exc)
