"""Pipelines: routing a file name to its pipeline, and each pipeline's built stages.

Built once from the configuration (and again on reload); building resolves
every stage, so an unknown builtin or a Python stage that cannot be imported
is a configuration error at start-up.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from .config import Config, PipelineConfig, StageConfig
from .errors import ConfigError
from .globs import TooComplexError, compile_globs, overlaps, uncovered_name, witness
from .stages import StageFunc
from .stages.builtin import BuildEnv, build_builtin
from .stages.command import build_command_stage
from .stages.python import load_python_stage
from .toolnames import ToolNames


@dataclass(frozen=True)
class Stage:
    """A stage's configuration and the callable that runs it."""

    config: StageConfig
    func: StageFunc
    search: tuple[str, ...] = ()  # where a python stage's module is imported from
    # A builtin's configuration file and key: a worker process builds it again from them.
    source: tuple[str, str] = ("", "")

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def runs_in(self) -> str:
        """ "command", "process" (in a worker process) or "thread"."""
        kind = self.config.kind
        if kind == "command":
            return "command"
        if kind == "python" and self.config.isolation == "process":
            return "process"
        if kind == "builtin" and self.config.builtin in PROCESS_BUILTINS:
            return "process"
        return "thread"


# The builtins bound by CPU or local I/O run in the worker processes, where they
# do not share one GIL.  publish (kernel copies and fsyncs) and webhook (waits
# on the network) release the GIL while they wait; noop has nothing to do: a
# process would only add a round trip.  They run in the worker threads.
PROCESS_BUILTINS = frozenset(
    {"validate-csv", "validate-json", "transform", "sha256", "sqlite-load", "postgres-load"}
)


@dataclass(frozen=True)
class Pipeline:
    """A pipeline with its stages built."""

    config: PipelineConfig
    stages: tuple[Stage, ...]
    pattern: re.Pattern[str]
    on_failure: tuple[Stage, ...] = ()

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def stages_all(self) -> tuple[Stage, ...]:
        """The ordinary stages, then those of on_failure: one index space for attempts."""
        return self.stages + self.on_failure

    def stage_at(self, index: int) -> Stage | None:
        """Stage INDEX: the ordinary stages first, then those of on_failure after them."""
        if index < 0:
            return None
        if index < len(self.stages):
            return self.stages[index]
        index -= len(self.stages)
        return self.on_failure[index] if index < len(self.on_failure) else None


def _build_stage(
    config: Config,
    p_index: int,
    pipeline: PipelineConfig,
    index: int,
    sc: StageConfig,
    field: str = "stages",
) -> Stage:
    key = f"pipelines[{p_index}].{field}[{index}]"
    file = str(config.path)
    if sc.kind == "command":
        func = build_command_stage(sc.command)
    elif sc.kind == "builtin":
        built = build_builtin(
            sc.builtin,
            sc.options,
            file=file,
            line=sc.line,
            key=key,
            lines=sc.option_lines,
            env=BuildEnv(config.path.parent, pipeline.name),
        )
        if built.modifies and not sc.modifies:
            sc = dataclasses.replace(sc, modifies=True)  # declared by the builtin itself
        return Stage(sc, built.func, source=(file, key))
    else:
        search = [config.pipelines_dir / pipeline.name, config.pipelines_dir]
        # Imported here even when it will run in a worker process: a stage that
        # cannot be imported is a configuration error at start-up.
        func = load_python_stage(
            sc.python, sc.options, search, file=file, line=sc.line, key=key + ".python"
        )
        return Stage(sc, func, tuple(str(p) for p in search))
    return Stage(sc, func)


_JUDGED_KEPT = 8192  # names whose route is remembered (a claim batch is at most 256)


class Routes:
    """Which pipeline a name belongs to (first match wins), and which names to ignore."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._ignore = compile_globs(config.ignore)
        self.tool_names = ToolNames(config.tool_files)
        self.pipelines: tuple[Pipeline, ...] = tuple(
            Pipeline(
                pc,
                tuple(_build_stage(config, n, pc, i, sc) for i, sc in enumerate(pc.stages)),
                compile_globs(pc.match),
                tuple(
                    _build_stage(config, n, pc, i, sc, "on_failure")
                    for i, sc in enumerate(pc.on_failure)
                ),
            )
            for n, pc in enumerate(config.pipelines)
        )
        self._by_name = {p.name: p for p in self.pipelines}
        # Each name is judged once and remembered: a claim asks of every file
        # whether it is ignored and where it goes three times (the look, the
        # batch's count by pipeline, the judgement after the rename), and the
        # globs were a few percent of the loop's time at full speed.
        self._judged: dict[bytes, tuple[bool, Pipeline | None]] = {}

    def is_ignored(self, name: bytes) -> bool:
        """Hidden and temporary names: never claimed, so write-then-rename works.
        Judged by the base name: a file in a folder is named like any other."""
        return self._judge(name)[0]

    def route(self, name: bytes) -> Pipeline | None:
        """The first pipeline whose match fits the base name (a file's folder in
        incoming/ does not decide its pipeline)."""
        return self._judge(name)[1]

    def _judge(self, name: bytes) -> tuple[bool, Pipeline | None]:
        judged = self._judged.get(name)
        if judged is None:
            text = os.fsdecode(name.rpartition(b"/")[2])
            ignored = self._ignore.match(text) is not None
            pipeline = next((p for p in self.pipelines if p.pattern.match(text)), None)
            if len(self._judged) >= _JUDGED_KEPT:
                self._judged.clear()
            judged = self._judged[name] = (ignored, pipeline)
        return judged

    def get(self, name: str | None) -> Pipeline | None:
        return self._by_name.get(name) if name else None


def unreachable_pipelines(config: Config) -> list[ConfigError]:
    """Pipelines that can never receive a file, each an error at the line of its match.

    A name goes to the first pipeline that matches it, and an ignored name to
    none; a pipeline each of whose globs only matches names that `ignore` or
    earlier pipelines take is dead.  Decided exactly (see globs.py): reported
    only when it is certain.
    """
    errors: list[ConfigError] = []
    for n, pipeline in enumerate(config.pipelines):
        earlier = config.pipelines[:n]
        taken = [*config.ignore, *(glob for p in earlier for glob in p.match)]
        try:
            if any(uncovered_name(glob, taken) is not None for glob in pipeline.match):
                continue
            # Who takes its names, in routing order: ignore, then each pipeline in turn.
            takers: list[PipelineConfig] = []
            before = list(config.ignore)
            for p in earlier:
                if any(witness(g, p.match, before) is not None for g in pipeline.match):
                    takers.append(p)
                before += p.match
            ignored = _overlap(pipeline.match, config.ignore)
            only_ignored = all(uncovered_name(g, config.ignore) is None for g in pipeline.match)
        except TooComplexError:
            continue
        if only_ignored:
            why = f"ignored (ignore: {_globs(config.ignore)})"
            remedy = "take those globs out of ignore or change its match"
        else:
            named = [f'"{p.name}" (line {p.line}, match {_globs(p.match)})' for p in takers]
            plural = "s" if len(named) > 1 else ""
            why = f"taken first by pipeline{plural} {' and '.join(named)}"
            if ignored:
                why += " or ignored"
            remedy = f'put it before "{takers[0].name}" or narrow that match'
        errors.append(
            ConfigError(
                f'pipeline "{pipeline.name}" can never receive a file: every name its match '
                f"{_globs(pipeline.match)} matches is {why}; {remedy}",
                file=str(config.path),
                line=pipeline.match_line or pipeline.line,
                key=f"pipelines[{n}].match",
            )
        )
    return errors


def _overlap(globs: Sequence[str], others: Sequence[str]) -> bool:
    return any(overlaps(glob, others) for glob in globs)


def _globs(globs: Sequence[str]) -> str:
    return json.dumps(globs[0] if len(globs) == 1 else list(globs), ensure_ascii=False)
