"""The errors edgepipe raises for foreseeable failures, each with its exit code.

Only ``cli/`` turns these into output and an exit status; the codes are listed in docs/reference/exit-codes.md.
"""

from __future__ import annotations

from typing import Any


class EdgepipeError(Exception):
    """A failure the user can act on; the message is one line saying what is wrong and what to do."""

    exit_code = 1

    def __init__(self, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.details = details or []  # rows for a table the CLI shows above the message


class ConfigError(EdgepipeError):
    """A target, profile or option is unknown, malformed or does not fit."""

    exit_code = 3


class ModelError(EdgepipeError):
    """The model source is missing, unsafe, broken or not supported."""

    exit_code = 4


class GuardError(EdgepipeError):
    """The built model missed the profile's accuracy bar or the target's size budget."""

    exit_code = 5


class VerifyError(EdgepipeError):
    """A bundle or archive does not match its manifest or is unsafe to open."""

    exit_code = 6


class StageError(EdgepipeError):
    """A stage failed for a reason outside the user's inputs (export, quantize, bench)."""

    exit_code = 7


class ResourceError(EdgepipeError):
    """The machine ran out of something (disk space) or the output is locked by another build."""

    exit_code = 8


class BudgetError(EdgepipeError):
    """A measured bundle breaks one of its target's budgets, or a comparison's limits."""

    exit_code = 9


class LicenceError(EdgepipeError):
    """The model's licence is outside the licence policy (denied, not allowed, or not accepted)."""

    exit_code = 10


class RegistryError(EdgepipeError):
    """An OCI registry cannot be reached, refuses the credentials, or sent what its digest does not name."""

    exit_code = 11
