"""Error types. Each names the field or node, the value, and what is allowed or what to do."""

from __future__ import annotations


class QcompileError(Exception):
    """Base class of every error qcompile raises on bad input."""


class ConfigError(QcompileError, ValueError):
    """A configuration value is outside its space (names field, value and allowed set)."""

    def __init__(self, field: str, value: object = None, allowed: object = None, hint: str = ""):
        self.field, self.value, self.allowed = field, value, allowed
        msg = f"{field}: got {value!r}"
        if allowed is not None:
            msg += f"; allowed: {allowed}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)


class LoweringError(QcompileError):
    """A graph cannot be lowered: names the node (or setting) and the remedy."""

    def __init__(self, where: str, problem: str, remedy: str = ""):
        self.where, self.problem, self.remedy = where, problem, remedy
        msg = f"{where}: {problem}"
        if remedy:
            msg += f". Remedy: {remedy}"
        super().__init__(msg)


class CheckpointError(QcompileError):
    """A checkpoint or artifact on disk is missing, corrupt, or belongs to something else."""


class PassError(QcompileError):
    """A pass failed; the message names the pass, the pipeline so far and a reproducer."""
