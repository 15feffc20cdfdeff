"""The metrics of a running daemon, for Prometheus: an HTTP endpoint, a textfile, or both.

Off unless the configuration has ``metrics:``; then ``NoMetrics`` stands in, with
the same methods doing nothing, so the loop calls them unconditionally and pays
one empty call when metrics are off.  The Prometheus side (``prometheus.py``)
is imported only when metrics are on: prometheus_client and the HTTP server
it brings are most of the start-up's imports that the default does not use.

Only the loop calls the update methods.  The HTTP endpoint is served by
prometheus_client's own thread, which reads the metrics when scraped
(prometheus_client's values are safe to update and read from two threads).

Every label value comes from a bounded set: pipeline and stage names from the
configuration, outcomes and refusal kinds from the fixed tuples below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .config import MetricsConfig

FILE_OUTCOMES: tuple[str, ...] = ("archived", "failed", "vanished")
STAGE_OUTCOMES: tuple[str, ...] = (
    "succeeded",
    "failed",
    "timeout",
    "permanent",
    "interrupted",
    "held",
    "unavailable",
)
NO_PIPELINE = "none"  # the pipeline label of a file no pipeline matched
OTHER = "other"  # an outcome outside the sets above (never expected)


class MetricsSink(Protocol):
    """What the loop tells the metrics (``prometheus.Metrics``, or ``NoMetrics``)."""

    @property
    def config(self) -> MetricsConfig | None: ...

    def start(self) -> None: ...

    def close(self) -> None: ...

    def file_finished(self, pipeline: str | None, outcome: str, seconds: float) -> None: ...

    def stage_ended(self, pipeline: str, stage: str, outcome: str, seconds: float) -> None: ...

    def retry_scheduled(self, pipeline: str, stage: str) -> None: ...

    def entry_refused(self, kind: str) -> None: ...

    def overflow(self) -> None: ...

    def rescan(self) -> None: ...

    def pipeline_held(self, pipeline: str, held: bool) -> None: ...

    def set_gauges(self, waiting: int, in_flight: int, running: int) -> None: ...

    def tick(self, mono: float) -> None: ...


class NoMetrics:
    """Metrics off: every method does nothing."""

    config: MetricsConfig | None = None

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    def file_finished(self, pipeline: str | None, outcome: str, seconds: float) -> None:
        pass

    def stage_ended(self, pipeline: str, stage: str, outcome: str, seconds: float) -> None:
        pass

    def retry_scheduled(self, pipeline: str, stage: str) -> None:
        pass

    def entry_refused(self, kind: str) -> None:
        pass

    def overflow(self) -> None:
        pass

    def rescan(self) -> None:
        pass

    def pipeline_held(self, pipeline: str, held: bool) -> None:
        pass

    def set_gauges(self, waiting: int, in_flight: int, running: int) -> None:
        pass

    def tick(self, mono: float) -> None:
        pass


def make_metrics(config: MetricsConfig | None, *, file: str = "") -> MetricsSink:
    """Metrics for CONFIG, or the do-nothing twin when metrics are off (None).

    FILE is the configuration file, named in the error when the address is taken.
    """
    if config is None:
        return NoMetrics()
    from .prometheus import Metrics

    return Metrics(config, file=file)
