"""Compiler passes. Each is a pure function ``Graph -> (Graph, stats)``; `run_passes`
runs them in order (default: dce, cse, fuse, schedule) and records their effect."""

from .cse import CseStats, cse
from .dce import DceStats, dce
from .estimate import Estimate, count_tokens, estimate
from .fuse import FuseStats, fuse, toposort
from .pipeline import DEFAULT_PASSES, PassResult, run_passes
from .schedule import ScheduleStats, level_of, priority_of, schedule

__all__ = [
    "dce", "cse", "fuse", "schedule", "estimate", "run_passes", "DEFAULT_PASSES",
    "PassResult", "Estimate", "DceStats", "CseStats", "FuseStats", "ScheduleStats",
    "count_tokens", "toposort", "level_of", "priority_of",
]
