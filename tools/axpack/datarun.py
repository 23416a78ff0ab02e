"""The run skeleton the data commands share (``axpack prep``, ``axpack script``).

One run writes one output folder as a set (:class:`~axpack.fsutil.OutputSet`:
a folder holding ``summary.json`` holds the complete output of one run) and
logs every record it cannot use, the same way in every command:

- ``OUT/rejects.jsonl``: one line ``{"file", "line", "reason", "raw"}`` per
  reject (``raw`` the original text, or its base64 when it is not UTF-8);
- stderr: ``axpack CMD: reject FILE:LINE: REASON`` for the first
  :data:`WARN_CAP` rejects, then one ``... and N more rejects`` line;
- ``OUT/summary.json``: indented, key-sorted JSON, written last.

The library function returns the summary; the click command decides
``--strict`` from it (:func:`check_strict`, exit 3 after everything is written).

    with DataRun("prep", out, OUTPUTS, warn) as run:
        write = run.open("sft.jsonl").write
        ...
        run.reject(file, line, raw, reason)
        ...
        run.commit(summary)
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Self

import click
import orjson

from .errors import EXIT_REJECTS, AxpackError, io_error
from .fsutil import OutputSet

# rejects shown on stderr; the rest are counted in one line (all are in rejects.jsonl)
WARN_CAP = 20
MARKER = "summary.json"
REJECTS = "rejects.jsonl"


def summary_bytes(summary: dict[str, Any]) -> bytes:
    """summary.json's bytes: indented, key-sorted JSON (stable across reruns)."""
    return (
        json.dumps(summary, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    ).encode("utf-8")


def raw_text(raw: bytes) -> str:
    """A record's original bytes for rejects.jsonl ``raw``: the text when it
    is valid UTF-8, else its base64 (the reject's reason then says so)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii")


def stderr_warn(msg: str) -> None:
    """The default ``warn``: one line on stderr."""
    click.echo(msg, err=True)


class DataRun:
    """One data command's run: output folder, reject log, summary.

    Creating it creates ``out`` (an :class:`AxpackError` if it cannot);
    entering it opens the output set (so an owned name that is a folder fails
    before any input is read) and ``rejects.jsonl``; leaving it normally
    prints the ``... and N more rejects`` line; leaving it by an
    :class:`OSError` (an unwritable folder, a full disk, a read error
    mid-file) removes the temps and raises it as one :class:`AxpackError`
    line (:func:`~axpack.errors.io_error`).

    Args:
        command: the command's name, for stderr lines (``"prep"``).
        out: the output folder.
        owned: every file name (besides summary.json) the command may leave
            in ``out``; ``rejects.jsonl`` must be one.
        warn: callable for one-line warnings (default: stderr).

    Attributes:
        rejected: rejects logged so far.

    Raises:
        AxpackError: ``out`` cannot be created, or an I/O error (see above).
    """

    def __init__(
        self,
        command: str,
        out: str | os.PathLike,
        owned: tuple[str, ...],
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.command = command
        self.out = Path(out)
        self.owned = owned
        self.warn = warn or stderr_warn
        self.rejected = 0
        self._outs: OutputSet | None = None
        self._write_reject: Callable[[bytes], Any] | None = None
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise AxpackError(
                f"{self.out}: cannot create the output folder ({err.strerror}); check the path"
            ) from None

    def __enter__(self) -> Self:
        try:
            self._outs = OutputSet(self.out, self.owned, MARKER)
            self._write_reject = self._outs.open(REJECTS).write
        except OSError as err:
            raise io_error(err, self.out) from None
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._outs.__exit__(exc_type, exc, tb)
        if isinstance(exc, OSError):
            raise io_error(exc, self.out) from None
        if exc is None and self.rejected > WARN_CAP:
            self.warn(
                f"axpack {self.command}: ... and {self.rejected - WARN_CAP} more rejects "
                f"(all in {self.out / REJECTS})"
            )

    def open(self, name: str) -> BinaryIO:
        """A binary file to stream output ``name`` into (committed with the set)."""
        return self._outs.open(name)

    def reject(self, file: str, line: int, raw: bytes, reason: str) -> None:
        """Log one unusable record: a rejects.jsonl line and, for the first
        :data:`WARN_CAP`, a stderr line ``axpack CMD: reject FILE:LINE: REASON``."""
        rec = {"file": file, "line": line, "reason": reason, "raw": raw_text(raw)}
        self._write_reject(orjson.dumps(rec, option=orjson.OPT_APPEND_NEWLINE))
        if self.rejected < WARN_CAP:
            self.warn(f"axpack {self.command}: reject {file}:{line}: {reason}")
        self.rejected += 1

    def commit(self, summary: dict[str, Any]) -> None:
        """Write summary.json and swap the whole set into ``out`` (OutputSet.commit)."""
        self._outs.commit(summary_bytes(summary))


def check_strict(command: str, rejected: int, unit: str, out: str | os.PathLike) -> None:
    """The ``--strict`` rule, for a click command after its run returned.

    Args:
        command: ``"prep"`` or ``"script"``.
        rejected: the summary's total of rejects.
        unit: what was rejected, e.g. ``"record(s)"``.
        out: the output folder (the message points at its rejects.jsonl).

    Raises:
        AxpackError: exit 3 when ``rejected`` > 0.
    """
    if rejected:
        raise AxpackError(
            f"{command} --strict: {rejected} {unit} rejected; see {Path(out) / REJECTS}",
            EXIT_REJECTS,
        )
