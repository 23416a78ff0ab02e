"""The one exception type for expected failures.

Exit codes for every command (ARCHITECTURE.md): 0 ok, 1 expected failure (bad input,
bad config, missing tool), 2 usage error (click), 3 ``--strict`` found rejects.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_REJECTS = 3


class AxpackError(Exception):
    """An expected failure, reported by the CLI as one line and an exit code.

    The message must say what is wrong, where (``file:line`` or a config key)
    and what to do, e.g. ``"configs/x.yaml: lora_alpah: unknown key (did you
    mean lora_alpha?)"``.

    Args:
        message: the one line shown to the user (no trailing newline).
        exit_code: process exit code; 1 unless stated (3 for ``--strict``).
    """

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.message


def io_error(err: OSError, where: object) -> AxpackError:
    """The one line for an I/O failure of a command's own files (an unwritable
    output, a full disk, a read error mid-file): the file the OS named (else
    ``where``), its reason, and what to check. Raise it ``from None``."""
    path = err.filename2 or err.filename or where
    return AxpackError(f"{path}: {err.strerror or err}; check the path, its permissions and free space")
