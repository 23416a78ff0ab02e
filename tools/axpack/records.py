"""The one JSON record reader: input files -> records, nothing skipped.

Every data command reads its JSON inputs here (prep, script's JSONL, stats;
plan and validate), so a file one of them accepts, all accept:

- JSONL, one record per line, streamed in 4 MiB chunks; a UTF-8 BOM and
  CRLF line ends are accepted, blank lines are not records;
- a JSON array (in a ``.json`` or a ``.jsonl`` file, pretty-printed or not),
  element by element: one malformed element is one reject, the rest reads;
- one JSON object spread over several lines.

Anything undecodable (bad JSON, bad UTF-8, a NUL byte, nesting too deep, a
line over :data:`MAX_LINE_BYTES`, an array the file ends inside) becomes a
:class:`Record` whose ``error`` is a :class:`Reject` naming the file line
(and column), never a skipped line and never an exception.

Public API:

- :func:`read_records` ``(path) -> Iterator[Record]``: every record of one
  file, in file order; ``Record(line, raw, value, error, note)``. The one
  entry point for a caller that wants decoded records.
- :func:`read_batches` ``(path) -> Iterator[LineBatch | RecordBatch]``: the
  same, in batches, for prep's hot loop (it decodes plain JSONL lines itself
  and hands anything unusual to :func:`line_record`).
- :func:`expand_inputs`: paths, globs and folders -> an ordered file list.
- :class:`Reject`: why a record cannot be used (``code`` + ``detail``).
"""

from __future__ import annotations

import glob
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import orjson

from .errors import AxpackError

BOM = b"\xef\xbb\xbf"
# One JSONL line above this is rejected without being held in memory whole.
MAX_LINE_BYTES = 64 << 20
# rejects.jsonl keeps at most this much of an over-long record.
RAW_KEEP_BYTES = 4096
# JSONL is read in chunks of this many bytes (whole lines are handed on).
CHUNK_BYTES = 1 << 22
ARRAY_OPEN = "JSON array not closed: the file ends inside it"


class Reject(Exception):
    """A record that cannot become a training example.

    Attributes:
        code: short machine-readable category (``invalid-json``, ``role-order``, ...),
            counted in summary.json ``reject_reasons``.
        detail: the human reason (what is wrong and, where useful, what to do).
        kind: the output (``"sft"``, ``"dpo"``, ``"kto"``) whose count the
            reject goes to, when its shape was recognised before it failed;
            None otherwise (set by :func:`axpack.cleaning.convert`).
    """

    kind: str | None = None

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail

    @property
    def reason(self) -> str:
        """``"CODE: detail"``, the line shown to users and in rejects.jsonl."""
        return f"{self.code}: {self.detail}"


class Record(NamedTuple):
    """One record as read.

    Attributes:
        line: the file line where the record starts (1-based).
        raw: the record's original bytes (BOM and line end removed; at most
            :data:`RAW_KEEP_BYTES` of an over-long line).
        value: the decoded JSON value (None when ``error`` is set).
        error: None, or why the record could not be decoded.
        note: None, or where in its line the record starts when others
            start on that line too (a one-line JSON array):
            `` (array element N, column C)``, to append to a reject reason.
    """

    line: int
    raw: bytes
    value: Any
    error: Reject | None
    note: str | None = None


@dataclass(slots=True)
class LineBatch:
    """Plain JSONL lines, undecoded (the caller decodes; see :func:`line_record`).

    Attributes:
        first: the file line number of ``lines[0]`` (1-based).
        lines: raw lines without their ``\\n`` (a ``\\r``, a BOM or blanks may remain).
    """

    first: int
    lines: list[bytes]


@dataclass(slots=True)
class RecordBatch:
    """Records already decoded (a JSON array, a pretty-printed object, over-long lines)."""

    records: list[Record]


def decode(raw: bytes, line: int = 1, col: int = 1) -> tuple[Any, Reject | None]:
    """orjson-decode one record -> ``(value, None)`` or ``(None, Reject)``.

    The reject's reason names the file line and column of the error
    (``line``, ``col`` = where the record starts in the file), and says
    what kind of failure it is: ``invalid-utf8``, ``invalid-json`` (also
    for a NUL byte), ``too-deep`` (orjson's nesting limit).
    """
    try:
        return orjson.loads(raw), None
    except orjson.JSONDecodeError as err:
        msg = str(err).split(": line ")[0]
        colno = err.colno + (col - 1 if err.lineno == 1 else 0)
        where = f"at line {line + err.lineno - 1} column {colno}"
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as uerr:
            bad_line = line + raw.count(b"\n", 0, uerr.start)
            return None, Reject(
                "invalid-utf8", f"not valid UTF-8 at line {bad_line}; raw is base64"
            )
        if b"\x00" in raw:
            return None, Reject(
                "invalid-json", f"NUL byte in the record ({msg} {where})"
            )
        if "recursion" in msg or "depth" in msg:
            return None, Reject(
                "too-deep", f"nested deeper than the JSON parser allows ({msg} {where})"
            )
        return None, Reject("invalid-json", f"{msg} {where}")


def _too_long(line: int, head: bytes, limit: int) -> Record:
    reason = (
        f"line longer than {limit} bytes; raw holds its first {RAW_KEEP_BYTES} bytes"
    )
    return Record(line, head[:RAW_KEEP_BYTES], None, Reject("line-too-long", reason))


def line_record(
    line: bytes, lineno: int, max_line_bytes: int = MAX_LINE_BYTES
) -> Record | None:
    """One JSONL line (without its ``\\n``) -> a :class:`Record`, or None for
    a blank line. A trailing CR and a leading BOM are removed first; a line
    over ``max_line_bytes`` is a ``line-too-long`` reject."""
    if len(line) > max_line_bytes:
        return _too_long(lineno, line, max_line_bytes)
    if line.endswith(b"\r"):
        line = line.rstrip(b"\r")
    if line.startswith(BOM):
        line = line[3:]
    if not line or line.isspace():
        return None
    value, err = decode(line, lineno)
    return Record(lineno, line, value, err)


def _jsonl_batches(
    fh: BinaryIO, max_line_bytes: int
) -> Iterator[LineBatch | RecordBatch]:
    """JSONL, streamed in 4 MiB chunks of whole lines. A line over
    ``max_line_bytes`` is skipped without being held whole and becomes a
    ``line-too-long`` reject."""
    lineno = 0
    pend: list[bytes] = []  # the unfinished last line, in pieces
    pend_len = 0
    skip_head: bytes | None = None  # head of an over-long line being skipped
    while True:
        chunk = fh.read(CHUNK_BYTES)
        if not chunk:
            break
        if skip_head is not None:
            nl = chunk.find(b"\n")
            if nl == -1:
                continue
            lineno += 1
            yield RecordBatch([_too_long(lineno, skip_head, max_line_bytes)])
            skip_head = None
            chunk = chunk[nl + 1 :]
        if b"\n" not in chunk:
            pend.append(chunk)
            pend_len += len(chunk)
            if pend_len > max_line_bytes:
                skip_head, pend, pend_len = b"".join(pend)[:RAW_KEEP_BYTES], [], 0
            continue
        lines = chunk.split(b"\n")
        if pend:
            lines[0] = b"".join(pend) + lines[0]
        last = lines.pop()
        pend, pend_len = ([last], len(last)) if last else ([], 0)
        if max(map(len, lines)) > max_line_bytes:
            recs = (
                line_record(x, lineno + i, max_line_bytes)
                for i, x in enumerate(lines, 1)
            )
            yield RecordBatch([r for r in recs if r is not None])
        else:
            yield LineBatch(lineno + 1, lines)
        lineno += len(lines)
    if skip_head is not None:
        yield RecordBatch([_too_long(lineno + 1, skip_head, max_line_bytes)])
    elif pend:
        rec = line_record(b"".join(pend), lineno + 1, max_line_bytes)
        if rec is not None:
            yield RecordBatch([rec])


# strings (unrolled, so long strings stay linear), brackets, commas, a lone quote
_ARRAY_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},]|"', re.DOTALL)


class _ArrayElements:
    """The elements of one JSON array document, collected as :class:`Record` s
    while :func:`split_array` scans it, with their start line and column.

    Line and column move forward only and incrementally (a one-line array
    stays linear): the character column ``col`` is that of byte offset
    ``col_pos``, and ``line`` that of ``line_pos``.
    """

    def __init__(self, data: bytes, start: int) -> None:
        self.data = data
        self.records: list[Record] = []
        self.cols: list[int] = []
        self.line = 1 + data.count(b"\n", 0, start)
        self.line_pos = start
        self.col_pos = data.rfind(b"\n", 0, start) + 1
        if self.col_pos == 0 and data.startswith(BOM):
            self.col_pos = len(BOM)  # editors do not show the BOM as a column
        self.col = 1

    def advance(self, to: int) -> None:
        """Move line / col to byte offset ``to`` (forward only)."""
        data = self.data
        newlines = data.count(b"\n", self.line_pos, to)
        if newlines:
            self.line += newlines
            self.col_pos, self.col = data.rfind(b"\n", self.line_pos, to) + 1, 1
        self.col += len(data[self.col_pos : to].decode("utf-8", "replace"))
        self.line_pos = self.col_pos = to

    def add(self, s: int, e: int, truncated: bool = False) -> None:
        """The element between byte offsets ``s`` and ``e`` (commas excluded);
        ``truncated``: the file ended inside the array after it."""
        chunk = self.data[s:e]
        stripped = chunk.strip()
        if not stripped:
            if truncated:
                self.advance(len(self.data))
                self._append(b"", None, Reject("truncated", ARRAY_OPEN))
            return
        self.advance(s + (len(chunk) - len(chunk.lstrip())))
        value, err = decode(stripped, self.line, self.col)
        if truncated and err is None:
            err = Reject("truncated", ARRAY_OPEN)
        self._append(stripped, value, err)

    def _append(self, raw: bytes, value: Any, err: Reject | None) -> None:
        self.records.append(Record(self.line, raw, value, err))
        self.cols.append(self.col)

    def result(self) -> list[Record]:
        """The records; where several start on one line, each with its note."""
        recs = self.records
        per_line = Counter(rec.line for rec in recs)
        if len(per_line) == len(recs):
            return recs
        return [
            rec._replace(note=f" (array element {i}, column {c})")
            if per_line[rec.line] > 1
            else rec
            for i, (rec, c) in enumerate(zip(recs, self.cols, strict=True), 1)
        ]


def split_array(data: bytes, base: int) -> list[Record] | None:
    """A JSON array file (``[ {...}, {...} ]``), element by element.

    Element boundaries come from a bracket/string scanner, and each element is
    parsed on its own, so one malformed element is one reject and the rest of
    the file still reads. ``base`` is the byte offset of the opening bracket.
    Each record's ``line`` is the line where the element starts, a parse
    error names its file line and column, and ``note`` is set when other
    elements start on its line too (see :class:`Record`). Returns None when
    the array closes before the end of the file with more data after it:
    that is JSONL whose first record happens to be an array.
    """
    els = _ArrayElements(data, base + 1)
    start = base + 1
    depth = 0
    for m in _ARRAY_TOKEN.finditer(data, base):
        tok = m.group()
        if tok == b'"':  # unterminated string: the rest is one broken element
            break
        if tok in (b"[", b"{"):
            depth += 1
        elif tok in (b"]", b"}"):
            depth -= 1
            if depth == 0:
                if data[m.end() :].strip():
                    return None
                els.add(start, m.start())
                return els.result()
        elif tok == b"," and depth == 1:
            els.add(start, m.start())
            start = m.end()
    els.add(start, len(data), truncated=True)
    return els.result()


def read_batches(
    path: str | os.PathLike, max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[LineBatch | RecordBatch]:
    """Every record of one input file, in file order, in batches.

    Accepted containers: see the module docstring (a JSON array is held in
    memory whole, as any JSON document must be to be parsed; JSONL is
    streamed). :class:`LineBatch` holds plain JSONL lines to decode (with
    :func:`line_record`, or a faster equivalent for plain ``{...}`` lines);
    :class:`RecordBatch` holds decoded records.

    Raises:
        AxpackError: the file cannot be opened (one line naming it).
        OSError: a read error after opening (the caller names its output).
    """
    path = Path(path)
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed by the with below; open errors become AxpackError
    except OSError as err:
        raise AxpackError(
            f"{path}: cannot read input ({err.strerror}); check the path"
        ) from None
    with fh:
        head = fh.read(1 << 16)
        lead = (head[3:] if head.startswith(BOM) else head).lstrip()
        if lead.startswith(b"["):
            data = head + fh.read()
            recs = split_array(data, len(head) - len(lead))
            if recs is not None:
                yield RecordBatch(recs)
                return
        if lead.startswith(b"{"):
            nl = lead.find(b"\n")
            small = os.fstat(fh.fileno()).st_size <= MAX_LINE_BYTES
            if small and nl != -1 and decode(lead[:nl].rstrip(b"\r"))[1] is not None:
                # first line is no object on its own: maybe one pretty-printed object
                data = lead + fh.read()
                value, err = decode(data.strip())
                if err is None and isinstance(value, dict):
                    line = 1 + head.count(b"\n", 0, len(head) - len(lead))
                    yield RecordBatch([Record(line, data.strip(), value, None)])
                    return
        fh.seek(0)
        yield from _jsonl_batches(fh, max_line_bytes)


def read_records(
    path: str | os.PathLike, max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[Record]:
    """Every record of one input file, in file order, as :class:`Record`
    ``(line, raw, value, error, note)``; blank lines are no records.

    A record that cannot be decoded has ``error`` set (and ``value`` None);
    it is never skipped. Accepted containers: see the module docstring.

    Raises:
        AxpackError: the file cannot be opened (one line naming it).
        OSError: a read error after opening.
    """
    for batch in read_batches(path, max_line_bytes):
        if type(batch) is RecordBatch:
            yield from batch.records
            continue
        for i, line in enumerate(batch.lines, batch.first):
            rec = line_record(line, i, max_line_bytes)
            if rec is not None:
                yield rec


def expand_inputs(
    raw: list[str] | tuple[str, ...], suffixes: tuple[str, ...] = (".json", ".jsonl")
) -> list[Path]:
    """Paths, globs (expanded, sorted) and folders (their files with one of
    ``suffixes``, sorted) -> an ordered list of files, each once (by
    resolved path).

    Raises:
        AxpackError: a path or glob matches nothing.
    """
    out: list[Path] = []
    seen: set[Path] = set()
    for item in raw:
        p = Path(item)
        if p.is_dir():
            found = sorted(
                q for q in p.iterdir() if q.suffix.lower() in suffixes and q.is_file()
            )
        elif p.exists():
            found = [p]
        elif glob.has_magic(item):
            found = [
                Path(q)
                for q in sorted(glob.glob(item, recursive=True))
                if Path(q).is_file()
            ]
        else:
            found = []
        if not found:
            raise AxpackError(
                f"{item}: no such input file (or the glob matches nothing); check the path"
            )
        for q in found:
            key = q.resolve()
            if key not in seen:
                seen.add(key)
                out.append(q)
    return out
