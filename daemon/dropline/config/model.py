"""The configuration as plain, frozen data: each key declared once, with its check.

A field declared with ``key(check, default=...)`` is read from the file by
the walker (load.py); one declared with ``derived(...)`` is filled from where
things were written.  ``WHAT`` says what the section's mapping should be
("{keys}" lists its keys) and ``RULES`` holds the rules between its keys.
Nothing here reads a file.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from .formats import Argv, EndFolder, Globs, Listen, MarkerTemplate, PythonRef, Textfile
from .keys import (
    AtLeastOne,
    ExactlyOne,
    NeedsStages,
    NoMoreThan,
    NotLonger,
    OnlyWith,
    UniqueNames,
    derived,
    key,
)
from .values import (
    Choice,
    ChoiceList,
    Duration,
    DurationOrNever,
    FilePath,
    Flag,
    IntRange,
    Name,
    OptionsMap,
    Section,
    Sections,
    Size,
    Text,
)

StageKind = Literal["command", "python", "builtin"]
ArchiveLayout = Literal["flat", "daily"]
LogFormat = Literal["auto", "console", "json"]
Isolation = Literal["process", "thread"]
STAGE_KINDS: tuple[StageKind, ...] = ("command", "python", "builtin")
ISOLATIONS: tuple[Isolation, ...] = ("process", "thread")
TryMode = Literal["run", "skip"]
TRY_MODES: tuple[TryMode, ...] = ("run", "skip")
ARCHIVE_LAYOUTS: tuple[ArchiveLayout, ...] = ("flat", "daily")
LOG_FORMATS: tuple[LogFormat, ...] = ("auto", "console", "json")

DEFAULT_IGNORE: tuple[str, ...] = (".*", "*.tmp", "*.part", "*.partial", "*~")
# Tools whose temporary and auxiliary names are known (toolnames.py has the rules).
TOOL_RULES: tuple[str, ...] = ("sqlite", "sed", "vim", "office", "python")
# One read-only empty mapping, so that no stage holds a dict someone could mutate.
NO_OPTIONS: Mapping[str, Any] = types.MappingProxyType({})


@dataclass(frozen=True)
class Backoff:
    """The delays between a stage's attempts."""

    WHAT: ClassVar = "a mapping with initial and max durations"
    RULES: ClassVar = (NotLonger("initial", "max"),)

    initial: float = key(Duration(positive=False), default=1.0)  # before the first retry
    max: float = key(Duration(positive=True), default=300.0)  # cap on any one delay


@dataclass(frozen=True)
class StageConfig:
    """One stage of a pipeline, exactly one of command, python or builtin."""

    WHAT: ClassVar = "a stage mapping with a name and one of command, python or builtin"
    RULES: ClassVar = (
        ExactlyOne(STAGE_KINDS, "a stage"),
        OnlyWith(
            ("with",),
            ("builtin", "python"),
            '"with" is only allowed with builtin or python stages; '
            "a command takes its arguments in its argv list",
        ),
        OnlyWith(
            ("isolation", "memory_limit"), ("python",), '"{key}" applies to python stages only'
        ),
    )

    name: str = key(Name())
    kind: StageKind = derived("present", STAGE_KINDS, default=MISSING)
    command: tuple[str, ...] = key(Argv(), default=())  # argv; "{path}" etc. substituted per file
    python: str = key(PythonRef(), default="")  # "module:function"
    builtin: str = key(Text("the name of a builtin stage"), default="")  # stages.builtin.BUILTINS
    options: Mapping[str, Any] = key(OptionsMap(), name="with", default_factory=lambda: NO_OPTIONS)
    timeout: float = key(Duration(positive=True), default=300.0)  # seconds
    retries: int = key(IntRange(0, 100), default=3)  # attempts after the first
    backoff: Backoff = key(Section(Backoff), default=Backoff())
    idempotent: bool = key(Flag(), default=True)
    modifies: bool = key(Flag(), default=False)  # the stage rewrites the working file on purpose
    # python stages: in a worker process, or a thread
    isolation: Isolation = key(Choice(ISOLATIONS), default="process")
    # python stages in a process: address-space limit
    memory_limit: int = key(Size(), default=1024**3)
    # The pipeline holds after this many retriable failures of the stage in a row, each
    # of another file (a downstream down, not a bad file); 0: never (loop/gates.py).
    hold_after: int = key(IntRange(0, 1000), default=5)
    # While held, one file tries the stage at these growing intervals.
    hold_probe: Backoff = key(Section(Backoff), default=Backoff(initial=5.0, max=300.0))
    # What `dropline try` does with the stage; "" when not written (see ``try_mode``).
    try_written: str = key(Choice(TRY_MODES), name="try", default="")
    line: int = derived("line")  # where the stage is declared, for later error messages
    command_line: int = derived("line_of", "command[0]")  # where its program is written
    # The line of every key under "with:" ("columns[2].type" -> 14): a builtin's
    # option error names the line of the very option.
    option_lines: Mapping[str, int] = derived("lines_under", "with", default={})

    @property
    def try_mode(self) -> TryMode:
        """Whether `dropline try` runs the stage.  Builtins run by default: each
        rehearses itself (a load rolled back, a publish or a webhook only
        described).  A command or a Python stage may send mail or call a
        service, and dropline cannot tell, so it is skipped unless it says
        ``try: run``."""
        if self.try_written:
            return "run" if self.try_written == "run" else "skip"
        return "run" if self.kind == "builtin" else "skip"

    @property
    def backoff_initial(self) -> float:
        return self.backoff.initial

    @property
    def backoff_max(self) -> float:
        return self.backoff.max


@dataclass(frozen=True)
class PipelineConfig:
    """A named pipeline: the globs it matches and its stages in order."""

    WHAT: ClassVar = "a pipeline mapping ({keys})"
    RULES: ClassVar = (
        UniqueNames(
            ("stages", "on_failure"),
            'duplicate stage name "{name}" in pipeline "{of.name}": declared at line {first} '
            "and again at line {again}; each stage of a pipeline needs its own name",
        ),
        # Judged in the commit of the first stage's start (loop/duplicates.py).
        NeedsStages(
            "duplicates",
            "skip",
            "duplicates: skip judges each file just before its first stage, and this "
            "pipeline has none; add one (such as {name: check, builtin: noop}) or "
            "remove duplicates: skip",
        ),
    )

    name: str = key(Name())
    match: tuple[str, ...] = key(Globs(single_ok=True, empty_ok=False))
    stages: tuple[StageConfig, ...] = key(Sections(StageConfig, "a list of stages"), default=())
    line: int = derived("line")
    match_line: int = derived("line_of", "match")  # where "match" is written
    # Run once when a file has failed, before it moves to failed/ (a webhook, say):
    # their own failures are recorded and logged, never change the outcome.
    on_failure: tuple[StageConfig, ...] = key(Sections(StageConfig, "a list of stages"), default=())
    # At most this many of its files running a stage at once; None: as many as there are workers.
    concurrency: int | None = key(IntRange(1, 256), default=None)
    # Its share of the workers while other pipelines have files ready too (loop/ready.py).
    priority: int = key(IntRange(1, 100), default=1)
    # A file whose content (SHA-256) an earlier file of the pipeline had within the
    # window: run like any other (process), or ended unrun (skip: loop/duplicates.py).
    duplicates: str = key(Choice(("process", "skip")), default="process")
    duplicate_window: float = key(Duration(positive=True), default=30 * 86400.0)
    # Where a skipped duplicate ends: archive/ (done, nothing to do), failed/ (for
    # someone to look at, with its reason beside it), or a folder of the data folder
    # named here (apart from the files that ran, laid out as archive/ is).
    duplicates_to: str = key(EndFolder(), default="archive")
    duplicates_to_line: int = derived("line_of", "duplicates_to")
    # A file is claimed only once this marker is beside it (Camel's done file), and
    # the marker goes with it; "" : no marker (spool/markers.py).
    ready_marker: str = key(MarkerTemplate(), default="")

    @property
    def duplicates_folder(self) -> str:
        """The folder of the data folder its duplicates end in; "" : archive/ or failed/."""
        return "" if self.duplicates_to in ("archive", "failed") else self.duplicates_to


@dataclass(frozen=True)
class ToolFilesConfig:
    """Names common tools write beside a file: when they may be claimed (toolnames.py)."""

    WHAT: ClassVar = "a mapping with {keys}"

    rules: tuple[str, ...] = key(ChoiceList(TOOL_RULES), default=TOOL_RULES)  # []: claim at once
    # a temporary-shaped name is claimed only if unchanged this long
    grace: float = key(Duration(positive=False), default=2.0)
    # a name held longer is logged once and shown by status
    held_warning: float = key(Duration(positive=True), default=300.0)
    lines: Mapping[str, int] = derived("key_lines", default={}, compare=False)


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus metrics: an HTTP endpoint, a textfile for node exporter, or both."""

    WHAT: ClassVar = "a mapping with listen, textfile or both (and interval)"
    RULES: ClassVar = (
        AtLeastOne(
            ("listen", "textfile"),
            "metrics needs listen (an HTTP endpoint), textfile (for node exporter) "
            "or both; leave metrics out to turn them off",
        ),
        OnlyWith(
            ("interval",),
            ("textfile",),
            '"interval" applies to textfile only (the HTTP endpoint is always current)',
        ),
    )

    listen: tuple[str, int] | None = key(Listen(), default=None)  # an IPv6 host without brackets
    textfile: Path | None = key(Textfile(), default=None)  # absolute, ending in .prom
    interval: float = key(Duration(positive=True), default=15.0)  # seconds between rewrites
    # Line of each key under metrics:, for errors found after loading.
    lines: Mapping[str, int] = derived("key_lines", default={}, compare=False)

    @property
    def address(self) -> str:
        """The listen address as written: host:port, or [host]:port for IPv6."""
        if self.listen is None:
            return ""
        host, port = self.listen
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class Config:
    """The whole configuration, validated."""

    WHAT: ClassVar = "the top level to be a mapping of keys ({keys})"
    RULES: ClassVar = (
        UniqueNames(
            ("pipelines",),
            'duplicate pipeline name "{name}": declared at line {first} and again at line '
            "{again}; each pipeline needs its own name",
        ),
        NoMoreThan(
            "pipelines",
            "concurrency",
            "workers",
            "concurrency {value} is more than workers ({limit}): no more of a pipeline's "
            "files run at once than there are workers; expected an integer from 1 to {limit}",
        ),
    )

    path: Path = derived("path", default=MISSING)  # the file it was read from
    data_dir: Path = key(FilePath())
    state_db: Path = key(FilePath())
    pipelines: tuple[PipelineConfig, ...] = key(
        Sections(PipelineConfig, "a non-empty list of pipelines", non_empty=True)
    )
    ignore: tuple[str, ...] = key(Globs(single_ok=False, empty_ok=True), default=DEFAULT_IGNORE)
    tool_files: ToolFilesConfig = key(Section(ToolFilesConfig), default=ToolFilesConfig())
    settle_time: float = key(Duration(positive=False), default=2.0)
    rescan_interval: float = key(Duration(positive=True), default=60.0)
    # Files inside folders dropped into incoming/ are processed (off: a folder is refused).
    recursive: bool = key(Flag(), default=True)
    # An emptied folder in incoming/ is removed once unchanged this long; None: never.
    remove_empty_folders_after: float | None = key(DurationOrNever(), default=60.0)
    archive_layout: ArchiveLayout = key(Choice(ARCHIVE_LAYOUTS), default="daily")
    max_file_size: int = key(Size(), default=4 * 1024**3)
    # below this on any folder's filesystem, claiming pauses
    min_free_space: int = key(Size(), default=64 * 1024**2)
    workers: int = key(IntRange(1, 256), default=4)
    max_in_flight: int = key(IntRange(1, 100_000), default=1024)
    batch_size: int = key(IntRange(1, 100_000), default=256)
    stop_timeout: float = key(Duration(positive=False), default=1.5)
    pipelines_dir: Path = key(FilePath(), default=Path("/opt/automation/pipelines"))
    log_format: LogFormat = key(Choice(LOG_FORMATS), default="auto")
    metrics: MetricsConfig | None = key(Section(MetricsConfig), default=None)  # None: no metrics
    # Line of each top-level key in the file, so that checks made after loading
    # (check_paths) can still point the operator at the right line.
    lines: Mapping[str, int] = derived("key_lines", default={}, compare=False)

    @property
    def incoming(self) -> Path:
        return self.data_dir / "incoming"

    @property
    def working(self) -> Path:
        return self.data_dir / "working"

    @property
    def archive(self) -> Path:
        return self.data_dir / "archive"

    @property
    def failed(self) -> Path:
        return self.data_dir / "failed"

    @property
    def end_folders(self) -> dict[str, PipelineConfig]:
        """The folders of the data folder that pipelines name for their duplicates
        (``duplicates_to``), each with the first pipeline naming it."""
        found: dict[str, PipelineConfig] = {}
        for p in self.pipelines:
            if p.duplicates_folder:
                found.setdefault(p.duplicates_folder, p)
        return found
