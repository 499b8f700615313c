"""Domain errors: each carries the exit code the CLI maps it to and a reason code.

The message is one sentence saying what was wrong, followed where useful by what
to do next. Messages never contain a secret.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """The documented exit codes (README "Exit codes")."""

    OK = 0
    FAILURE = 1
    USAGE = 2
    NOT_FOUND = 3
    REFUSED = 4
    DENIED = 5
    CONFLICT = 6
    DECLINED = 7  # the person answered no at a confirmation prompt: nothing changed
    INTERRUPTED = 130


class PlanctlError(Exception):
    """Base of every error the CLI turns into one stderr line and an exit code."""

    exit_code: ExitCode = ExitCode.FAILURE
    default_reason = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason


class InvalidInput(PlanctlError):
    """Malformed or out-of-range input: exit 2."""

    exit_code = ExitCode.USAGE
    default_reason = "invalid_input"


class NotFound(PlanctlError):
    """A named thing does not exist: exit 3."""

    exit_code = ExitCode.NOT_FOUND
    default_reason = "not_found"


class Refused(PlanctlError):
    """A business rule refuses the request: exit 4."""

    exit_code = ExitCode.REFUSED
    default_reason = "refused"


class Denied(PlanctlError):
    """Admission denied: exit 5."""

    exit_code = ExitCode.DENIED
    default_reason = "denied"


class Conflict(PlanctlError):
    """Duplicate, idempotency mismatch or database busy: exit 6."""

    exit_code = ExitCode.CONFLICT
    default_reason = "conflict"
