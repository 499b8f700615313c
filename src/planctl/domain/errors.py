"""Domain errors: each carries the exit code the CLI maps it to and a reason code.

The message is one sentence saying what was wrong, in words any caller can show
(the gateway sends some to API clients): it names no command and no flag.
Where the command line has more to say (the flag to fix, the command to run
next), the error carries a `code` and the `fields` to word it with, and
cli/hints.py words it. Messages never contain a secret.
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

    def __init__(self, message: str, *, reason: str | None = None, code: str | None = None, **fields: object) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason  # stable, machine-readable (`--json` errors, the gateway)
        self.code = code  # what the CLI words (cli/hints.py); None: the message says it all
        self.fields = fields  # the values the wording uses: ids, names, instants


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


class Note(str):
    """A sentence for people that is not an error (a sale's note, a check's detail): like an error's
    message it names no command, and like an error it may carry a `code` and `fields` the CLI
    words (cli/hints.py). It is a `str`, so every caller can show it as it is."""

    code: str | None
    fields: dict[str, object]

    def __new__(cls, text: str, *, code: str | None = None, **fields: object) -> Note:
        note = super().__new__(cls, text)
        note.code, note.fields = code, fields
        return note
