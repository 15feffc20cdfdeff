"""Prometheus metrics: scraped from a real daemon, read from its textfile, parsed.

Every check parses what a Prometheus server (or node exporter) would read with
prometheus_client's own parser, so a malformed exposition fails the test.
"""

from __future__ import annotations

import os
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dropline.config import MetricsConfig
from dropline.errors import ConfigError
from dropline.metrics import make_metrics
from dropline.prometheus import Metrics
from dropline.spool import REFUSAL_KINDS

from .harness import Tree, run_cli, wait_until

PIPELINES = """
- name: good
  match: "*.txt"
  stages:
    - name: copy
      command: ["true"]
- name: bad
  match: "*.bad"
  stages:
    - name: boom
      command: ["false"]
      retries: 1
      backoff: {initial: 50ms, max: 50ms}
"""

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, by name and sorted labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body: bytes = response.read()
        return body.decode()


def metrics_settings(**keys: str) -> str:
    """The metrics: value for Tree.write_config, as a YAML flow mapping."""
    return "{" + ", ".join(f'{k}: "{v}"' for k, v in keys.items()) + "}"


def test_scrape_counts_files_stages_retries_and_refusals(tree: Tree, start_daemon: Any) -> None:
    """Scraped over HTTP: each outcome, attempt, retry and refusal, and the latency histogram."""
    port = free_port()
    tree.write_config(
        PIPELINES, metrics=metrics_settings(listen=f"127.0.0.1:{port}"), rescan_interval="300ms"
    )
    for i in range(3):
        (tree.incoming / f"ok{i}.txt").write_bytes(b"fine\n")
    for i in range(2):
        (tree.incoming / f"no{i}.bad").write_bytes(b"bad\n")
    (tree.incoming / "stray.zzz").write_bytes(b"no pipeline\n")
    os.symlink("/etc/hostname", tree.incoming / "link.txt")
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    daemon.wait_event("metrics.listening", address=f"127.0.0.1:{port}")

    def finished() -> Samples | None:
        samples = parse(scrape(port))
        ended = sum(v for (name, _), v in samples.items() if name == "dropline_files_total")
        idle = value(samples, "dropline_in_flight_files") == 0
        rescanned = (value(samples, "dropline_rescans_total") or 0) >= 1
        return samples if ended == 6 and idle and rescanned else None

    samples = wait_until(finished, timeout=15, interval=0.05, what="six files at their end")
    assert len(tree.archived()) == 3 and len(tree.failed_files()) == 3

    assert value(samples, "dropline_files_total", pipeline="good", outcome="archived") == 3
    assert value(samples, "dropline_files_total", pipeline="bad", outcome="failed") == 2
    assert value(samples, "dropline_files_total", pipeline="none", outcome="failed") == 1
    ok = {"pipeline": "good", "stage": "copy"}
    boom = {"pipeline": "bad", "stage": "boom"}
    assert value(samples, "dropline_stage_attempts_total", **ok, outcome="succeeded") == 3
    assert value(samples, "dropline_stage_attempts_total", **boom, outcome="failed") == 4
    assert value(samples, "dropline_stage_attempts_total", **boom, outcome="succeeded") is None
    assert value(samples, "dropline_retries_total", **boom) == 2
    assert value(samples, "dropline_stage_duration_seconds_count", **boom) == 4
    assert value(samples, "dropline_refused_total", kind="symlink") == 1
    for kind in REFUSAL_KINDS:
        if kind != "symlink":
            assert value(samples, "dropline_refused_total", kind=kind) == 0
    assert value(samples, "dropline_inotify_overflows_total") == 0

    latency = "dropline_file_latency_seconds"
    assert value(samples, f"{latency}_count", pipeline="good") == 3
    assert value(samples, f"{latency}_count", pipeline="bad") == 2
    assert value(samples, f"{latency}_bucket", pipeline="good", le="+Inf") == 3
    # The failed files waited out a retry (50 ms backoff, half of it jitter): at least 25 ms.
    assert value(samples, f"{latency}_bucket", pipeline="bad", le="0.025") == 0
    assert 0 < (value(samples, f"{latency}_sum", pipeline="bad") or 0) < 10

    assert value(samples, "dropline_backlog_files") == 0
    assert value(samples, "dropline_running_stages") == 0
    assert value(samples, "process_open_fds") is not None  # the process collector
    assert daemon.stop() == 0
    with pytest.raises(urllib.error.URLError):
        scrape(port)


def read_textfile(path: Path) -> Iterator[Samples]:
    """Read PATH whenever it is there, parsing each read whole."""
    while True:
        try:
            text = path.read_text()
        except FileNotFoundError:
            yield {}
            continue
        # Written through a rename: never empty, never cut short.
        assert text.endswith("\n") and "dropline_running_stages " in text, text[-200:]
        yield parse(text)


def test_textfile_is_rewritten_whole(tree: Tree, start_daemon: Any) -> None:
    """The textfile appears, is rewritten every interval, and is never seen half-written."""
    out = tree.root / "textfile"
    out.mkdir()
    prom = out / "dropline.prom"
    tree.write_config(PIPELINES, metrics=metrics_settings(textfile=str(prom), interval="20ms"))
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    reads = read_textfile(prom)
    first = wait_until(lambda: next(reads), what="the textfile")
    assert value(first, "dropline_in_flight_files") == 0
    for i in range(20):
        (tree.incoming / f"f{i}.txt").write_bytes(b"x" * i)
    seen = {value(first, "dropline_files_total", pipeline="good", outcome="archived") or 0}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        samples = next(reads)
        archived = value(samples, "dropline_files_total", pipeline="good", outcome="archived")
        seen.add(archived or 0)
        if archived == 20:
            break
    assert 20 in seen, f"the textfile never counted all 20 files: {sorted(seen)}"
    assert len(seen) > 1, "the textfile was not rewritten while files were processed"
    assert not any(name.startswith("process_") for name, _ in next(reads))
    assert daemon.stop() == 0
    final = parse(prom.read_text())
    assert value(final, "dropline_files_total", pipeline="good", outcome="archived") == 20
    assert value(final, "dropline_in_flight_files") == 0
    assert os.listdir(out) == ["dropline.prom"], "a temporary file was left behind"


def test_port_in_use_is_a_clear_error(tree: Tree) -> None:
    """An address already taken stops the start with exit 2, naming it; no traceback."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = tree.write_config(PIPELINES, metrics=metrics_settings(listen=f"127.0.0.1:{port}"))
        result = run_cli("run", "--config", str(config))
    assert result.returncode == 2, result
    line = next(i for i, text in enumerate(config.read_text().splitlines(), 1) if "metrics" in text)
    assert f"{config}:{line}: metrics.listen: cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "already in use" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_check_rejects_a_bad_metrics_address(tree: Tree) -> None:
    """dropline check: a host name is not an address; exit 2 naming file, line and key."""
    config = tree.write_config(PIPELINES, metrics=metrics_settings(listen="prometheus:9464"))
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 2, result
    assert f"{config}:" in result.stderr and "metrics.listen:" in result.stderr
    assert "an IP address or localhost" in result.stderr
    assert "Traceback" not in result.stderr


def test_labels_stay_within_fixed_sets() -> None:
    """No pipeline becomes "none"; unknown outcomes and kinds become "other"; close stops."""
    port = free_port()
    metrics = make_metrics(MetricsConfig(listen=("127.0.0.1", port)))
    assert isinstance(metrics, Metrics)
    metrics.start()
    try:
        metrics.file_finished(None, "failed", 0.002)
        metrics.file_finished("p", "exploded", 0.5)
        metrics.stage_ended("p", "s", "gave up", 1.0)
        metrics.entry_refused("alien")
        metrics.overflow()
        metrics.set_gauges(5, 2, 1)
        samples = parse(scrape(port))
    finally:
        metrics.close()
    assert value(samples, "dropline_files_total", pipeline="none", outcome="failed") == 1
    assert value(samples, "dropline_files_total", pipeline="p", outcome="other") == 1
    assert value(samples, "dropline_stage_attempts_total", pipeline="p", stage="s", outcome="other")
    assert value(samples, "dropline_refused_total", kind="other") == 1
    assert value(samples, "dropline_inotify_overflows_total") == 1
    assert value(samples, "dropline_backlog_files") == 5
    assert value(samples, "dropline_in_flight_files") == 2
    assert value(samples, "dropline_running_stages") == 1
    with pytest.raises(urllib.error.URLError):
        scrape(port)


def test_address_in_use_names_the_key(tmp_path: Path) -> None:
    """In the library: a ConfigError naming the file, the line of listen and the address."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = MetricsConfig(listen=("127.0.0.1", port), lines={"listen": 7})
        metrics = make_metrics(config, file=str(tmp_path / "dropline.yaml"))
        with pytest.raises(ConfigError) as raised:
            metrics.start()
    assert (raised.value.line, raised.value.key) == (7, "metrics.listen")
    assert f"127.0.0.1:{port}" in str(raised.value)
    metrics.close()  # nothing to stop: no error either


def test_reload_keeps_the_metrics_configuration(tree: Tree, start_daemon: Any) -> None:
    """SIGHUP with another metrics address: logged, and the endpoint stays where it was."""
    port = free_port()
    tree.write_config(PIPELINES, metrics=metrics_settings(listen=f"127.0.0.1:{port}"))
    daemon = start_daemon()
    daemon.wait_event("metrics.listening")
    other = free_port()
    tree.write_config(PIPELINES, metrics=metrics_settings(listen=f"127.0.0.1:{other}"))
    daemon.signal(signal.SIGHUP)
    daemon.wait_event("config.metrics_unchanged")
    daemon.signal(signal.SIGHUP)  # still not what runs: said again
    wait_until(lambda: len(daemon.find("config.metrics_unchanged")) == 2, what="a second warning")
    assert "dropline_files" in scrape(port)
    with pytest.raises(urllib.error.URLError):
        scrape(other)
    assert daemon.stop() == 0
