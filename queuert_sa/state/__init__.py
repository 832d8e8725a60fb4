"""The state layer: the only place that builds and executes SQL."""

from .capabilities import Capabilities, capabilities_for, immediate_engine, prepare_engine
from .operations import NewJob, database_errors

__all__ = [
    "Capabilities",
    "NewJob",
    "capabilities_for",
    "database_errors",
    "immediate_engine",
    "prepare_engine",
]
