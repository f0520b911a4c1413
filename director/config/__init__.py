"""The config contract: YAML -> typed frozen models, with every error located."""

from director.config.load import (
    ConfigInvalid,
    ConfigUnreadable,
    Report,
    check_text,
    format_path,
    load_config,
)
from director.config.models import Config, Instance, Service
from director.config.rules import Diagnostic

__all__ = [
    "Config",
    "ConfigInvalid",
    "ConfigUnreadable",
    "Diagnostic",
    "Instance",
    "Report",
    "Service",
    "check_text",
    "format_path",
    "load_config",
]
