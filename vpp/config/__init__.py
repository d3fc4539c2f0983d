"""Enrollment configuration: schema, YAML loading with line numbers, and reference checks."""

from vpp.config.loader import LoadedConfig, load_park, load_rule_set
from vpp.config.schema import AnyAsset, Enterprise, Park

__all__ = ["AnyAsset", "Enterprise", "LoadedConfig", "Park", "load_park", "load_rule_set"]
