"""Configuration: the YAML file loaded once into frozen, typed objects.

Nothing else in dropline reads YAML.  Every error is a ConfigError naming the
file, the line, the key, what was wrong and what is allowed.  The parts:
model.py (the sections, each key declared once), values.py (the value checks),
source.py (YAML to values and lines), load.py (the one walker), host.py (checks
of the folders and files the configuration names).
"""

from .formats import PLACEHOLDERS
from .host import check_paths
from .load import build, load_config
from .model import (
    DEFAULT_IGNORE,
    TOOL_RULES,
    Config,
    MetricsConfig,
    PipelineConfig,
    StageConfig,
    ToolFilesConfig,
)

__all__ = [
    "DEFAULT_IGNORE",
    "PLACEHOLDERS",
    "TOOL_RULES",
    "Config",
    "MetricsConfig",
    "PipelineConfig",
    "StageConfig",
    "ToolFilesConfig",
    "build",
    "check_paths",
    "load_config",
]
