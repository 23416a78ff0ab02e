"""Speaker-tagged dialogue -> speeches -> turns -> sliding windows (``axpack script``'s engine).

Readers for plain-text scripts (:func:`parse_text`), CSV and JSONL rows
(:func:`parse_rows`; JSONL through :func:`axpack.records.read_records`), the
speaker filter (:func:`keep_speakers`), turn merging (:func:`merge_turns`),
windows (:func:`windows`, :func:`indexed_windows`) and the positional
validation split (:func:`split_by_position`). The input layouts and the
window rules are documented in :mod:`axpack.script`. Nothing here writes a
file: unusable rows and lines go to a ``reject`` callback.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import AxpackError
from .formats import jtype
from .records import BOM, Reject, read_records

SPEAKER_KEYS = ("speaker", "character", "name")
TEXT_KEYS = ("line", "text", "dialogue", "utterance")
EPISODE_KEYS = ("episode", "episode_id")
SCENE_KEYS = ("scene", "scene_id")

_SPEAKER = re.compile(
    r"^(?P<name>[^\W\d_][\w .,'&-]{0,40}?)\s*:(?:\s+(?P<text>.*?))?\s*$"
)
_HEADING = re.compile(
    r"^\s*(?:(?:ACT|SCENE|EPISODE|Act|Scene|Episode)\s+(?:\d+|[IVXLC]+)\b.*"
    r"|(?:INT|EXT)\.\s.*|#{1,6}\s.*|[-=*]{3,})\s*$"
)


@dataclass
class Turn:
    """One speaker's contiguous speech; ``scene`` is the (file, episode, scene) key."""

    speaker: str
    text: str
    scene: tuple[str, str, str]

    def render(self) -> str:
        """The turn as the examples show it: ``[SPEAKER] text``."""
        return f"[{self.speaker}] {self.text}"


@dataclass
class FileStats:
    """Per-input accounting (summary.json ``inputs``)."""

    lines: int = 0  # text lines or data rows read
    speeches: int = 0  # speaker-tagged speeches before merging
    turns: int = 0
    scenes: int = 0
    unattributed: int = 0  # non-blank text lines before any speaker in a scene
    rejected: int = 0  # rows / text lines in rejects.jsonl
    reject_reasons: dict[str, int] = field(default_factory=dict)
    windows: int = 0  # training windows written to sft.jsonl
    dropped: int = 0  # windows with too short a completion
    filtered: int = 0  # speeches left out by --cast / --min-speaker-lines
    val_windows: int = 0  # windows written to val.jsonl
    overlap_dropped: int = 0  # training windows sharing a turn with a validation window


# (speaker, speech, scene key): one speaker-tagged speech as read
Speech = tuple[str, str, tuple[str, str, str]]
# reject(line, raw bytes, reason): one unusable row or text line
RejectFn = Callable[[int, bytes, Reject], None]


def count_reject(stats: FileStats, rej: Reject) -> None:
    """Count one reject in ``stats`` (``rejected`` and ``reject_reasons``)."""
    stats.rejected += 1
    stats.reject_reasons[rej.code] = stats.reject_reasons.get(rej.code, 0) + 1


def _count_only(stats: FileStats) -> RejectFn:
    """The default reject callback: counted in ``stats``, logged nowhere."""

    def reject(line: int, raw: bytes, rej: Reject) -> None:
        count_reject(stats, rej)

    return reject


def _looks_like_name(name: str) -> bool:
    words = name.split()
    return 0 < len(words) <= 4 and all(
        w[0].isupper() or not w[0].isalpha() for w in words
    )


def _utf8_lines(text: str, stats: FileStats, reject: RejectFn) -> Iterator[str]:
    """The lines of a script decoded with ``surrogateescape``, line ends
    removed, each counted in ``stats.lines``; a line holding bytes that are
    not UTF-8 goes to ``reject`` with its file line (lines end at LF, CRLF
    or CR) instead."""
    file_line = 1
    for piece in text.splitlines(keepends=True):
        raw = piece.rstrip("\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")
        lineno = file_line
        if piece.endswith(("\n", "\r")):
            file_line += 1
        stats.lines += 1
        if not raw.isascii():
            try:
                raw.encode("utf-8")
            except UnicodeEncodeError as err:
                data = raw.encode("utf-8", "surrogateescape")
                col = len(raw[: err.start].encode("utf-8", "surrogateescape")) + 1
                reject(
                    lineno,
                    data,
                    Reject(
                        "invalid-utf8",
                        f"not valid UTF-8 at byte {col} of the line; raw is base64; "
                        "re-save the script as UTF-8",
                    ),
                )
                continue
        yield raw


def _speech(
    speaker: str | None, buf: list[str], scene: tuple[str, str, str], stats: FileStats
) -> list[Speech]:
    """The speech collected in ``buf`` (none without a speaker or text)."""
    body = "\n".join(buf).strip()
    if speaker is None or not body:
        return []
    stats.speeches += 1
    return [(speaker, body, scene)]


def parse_text(
    text: str, file: str, stats: FileStats, reject: RejectFn | None = None
) -> Iterator[Speech]:
    """Plain-text script -> (speaker, speech, scene key) per speech, in order.

    See :mod:`axpack.script` for the layout rules. Blank lines inside one
    speech are kept as one newline; trailing spaces are dropped. ``text`` is
    the file decoded with ``errors="surrogateescape"``: a line holding bytes
    that are not UTF-8 goes to ``reject`` (``invalid-utf8``, with its file
    line: lines end at LF, CRLF or CR) and is otherwise skipped, as if absent.
    """
    scene_no = 0
    scene = (file, "", "0")
    speaker: str | None = None
    buf: list[str] = []
    prev_blank = True
    inline_mode = False  # the file has shown one-line "SPEAKER: speech" turns
    for raw in _utf8_lines(text, stats, reject or _count_only(stats)):
        line = raw.rstrip()
        if not line.strip():
            prev_blank = True
            if buf and buf[-1] != "":
                buf.append("")
            continue
        if prev_blank and _HEADING.match(line):
            yield from _speech(speaker, buf, scene, stats)
            scene_no += 1
            scene, speaker, buf = (file, "", str(scene_no)), None, []
            continue
        m = _SPEAKER.match(line)
        is_speaker = False
        if m and m.group("name")[0].isupper():
            name, inline = m.group("name").strip(), m.group("text")
            if prev_blank or (inline_mode and inline and _looks_like_name(name)):
                is_speaker = True
        if is_speaker:
            yield from _speech(speaker, buf, scene, stats)
            speaker, buf = name, []
            if inline:
                inline_mode = True
                buf = [inline]
        elif speaker is None:
            stats.unattributed += 1
        else:
            buf.append(line.strip())
        prev_blank = False
    yield from _speech(speaker, buf, scene, stats)


def _pick(row: dict[str, Any], keys: tuple[str, ...]) -> Any:
    lowered = {str(k).strip().lower(): v for k, v in row.items()}
    for k in keys:
        if k in lowered and lowered[k] is not None:
            return lowered[k]
    return None


def parse_rows(
    rows: Iterator[tuple[int, bytes, Any, Reject | None, str | None]],
    file: str,
    stats: FileStats,
    reject: RejectFn | None = None,
) -> Iterator[Speech]:
    """CSV/JSONL rows ``(line, raw, value, error, note)`` -> (speaker,
    speech, scene key). A row that cannot be used (``error`` set, not an
    object, no speaker, no text) goes to ``reject`` with its line and a
    reason (``note``, where in the line a row of a one-line JSON array
    starts, appended)."""
    reject = reject or _count_only(stats)

    def refuse(line: int, raw: bytes, err: Reject, note: str | None) -> None:
        reject(line, raw, Reject(err.code, err.detail + note) if note else err)

    for line, raw, row, err, note in rows:
        stats.lines += 1
        if err is not None:
            refuse(line, raw, err, note)
            continue
        if not isinstance(row, dict):
            err = Reject(
                "not-object",
                f"row is a JSON {jtype(row)}, expected an object with speaker and text",
            )
        else:
            speaker, text = _pick(row, SPEAKER_KEYS), _pick(row, TEXT_KEYS)
            if speaker is None or str(speaker).strip() == "":
                err = Reject(
                    "no-speaker",
                    f"no speaker ({'/'.join(SPEAKER_KEYS)} missing or empty)",
                )
            elif (
                text is None
                or not isinstance(text, str | int | float)
                or str(text).strip() == ""
            ):
                kind = "" if text is None else f" ({jtype(text)})"
                err = Reject(
                    "no-text",
                    f"no text{kind}: {'/'.join(TEXT_KEYS)} missing, empty or not a string",
                )
            else:
                episode, scene = _pick(row, EPISODE_KEYS), _pick(row, SCENE_KEYS)
                stats.speeches += 1
                yield (
                    str(speaker).strip(),
                    str(text).strip(),
                    (
                        file,
                        "" if episode is None else str(episode),
                        "" if scene is None else str(scene),
                    ),
                )
                continue
        refuse(line, raw, err, note)


def read_speeches(
    path: Path, fmt: str, stats: FileStats, reject: RejectFn | None = None
) -> list[Speech]:
    """All speeches of one file, in order: ``(speaker, text, scene key)``.

    Unusable rows and undecodable text lines go to ``reject`` (default:
    counted in ``stats`` only) and the file reads on.

    Raises:
        AxpackError: unreadable file, or a CSV without the needed columns.
    """
    if fmt == "auto":
        suffix = path.suffix.lower()
        fmt = (
            "csv"
            if suffix == ".csv"
            else "jsonl"
            if suffix in (".jsonl", ".json")
            else "text"
        )
    name = str(path)
    reject = reject or _count_only(stats)
    if fmt == "jsonl":
        speeches = parse_rows(read_records(path), name, stats, reject)
    elif fmt in ("text", "csv"):
        try:
            data = path.read_bytes()
        except OSError as err:
            raise AxpackError(f"{path}: cannot read ({err.strerror})") from None
        # bytes that are not UTF-8 become lone surrogates: rejected per line / row
        text = data.removeprefix(BOM).decode("utf-8", "surrogateescape")
        if fmt == "text":
            speeches = parse_text(text, name, stats, reject)
        else:
            speeches = parse_rows(_csv_rows(text, path), name, stats, reject)
    else:
        raise AxpackError(f"--format {fmt!r}: expected auto, text, csv or jsonl")
    return list(speeches)


def merge_turns(
    speeches: list[Speech], stats: FileStats
) -> list[Turn]:
    """Speeches -> turns (consecutive speeches by one speaker in one scene merge);
    sets ``stats.turns`` and ``stats.scenes``."""
    turns: list[Turn] = []
    scenes: set[tuple[str, str, str]] = set()
    for speaker, body, scene in speeches:
        scenes.add(scene)
        last = turns[-1] if turns else None
        if last is not None and last.speaker == speaker and last.scene == scene:
            last.text += "\n" + body
        else:
            turns.append(Turn(speaker, body, scene))
    stats.turns = len(turns)
    stats.scenes = len(scenes)
    return turns


def read_turns(
    path: Path, fmt: str, stats: FileStats, reject: RejectFn | None = None
) -> list[Turn]:
    """All turns of one file (:func:`read_speeches` then :func:`merge_turns`).

    Raises:
        AxpackError: unreadable file, or a CSV without the needed columns.
    """
    return merge_turns(read_speeches(path, fmt, stats, reject), stats)


def speaker_key(name: str) -> str:
    """How speaker names compare for the cast filter: case-folded, spaces collapsed."""
    return " ".join(name.split()).casefold()


def keep_speakers(
    counts: dict[str, int], cast: set[str] | None, min_lines: int
) -> set[str]:
    """Speakers kept by the filter: in ``cast`` (by :func:`speaker_key`) or with
    at least ``min_lines`` speeches; everyone when neither filter is set."""
    if cast is None and min_lines <= 1:
        return set(counts)
    keep = set()
    for name, n in counts.items():
        if (cast is not None and speaker_key(name) in cast) or (min_lines > 1 and n >= min_lines):
            keep.add(name)
    return keep


def split_by_position(
    wins: list[tuple[int, list[Turn], list[Turn]]], val_fraction: float
) -> tuple[list[tuple[list[Turn], list[Turn]]], list[tuple[list[Turn], list[Turn]]], int]:
    """One file's kept windows ``(first turn index, prompt, completion)`` in order
    -> (train, val, overlap_dropped).

    The last ``ceil(val_fraction × len(wins))`` windows are validation; a
    training window is kept only if it ends before the first validation window
    starts (turn indices), so the two sets share no turn.
    """
    if val_fraction <= 0 or not wins:
        return [(p, c) for _, p, c in wins], [], 0
    n_val = min(len(wins), math.ceil(val_fraction * len(wins)))
    val = wins[len(wins) - n_val:]
    cut = val[0][0]
    train, dropped = [], 0
    for start, prompt, completion in wins[: len(wins) - n_val]:
        if start + len(prompt) + len(completion) <= cut:
            train.append((prompt, completion))
        else:
            dropped += 1
    return train, [(p, c) for _, p, c in val], dropped


def _csv_rows(
    text: str, path: Path
) -> Iterator[tuple[int, bytes, Any, Reject | None, None]]:
    """CSV rows as ``(first line, raw, {column: value}, error, None)``, like
    prep's records: a row the csv module refuses, or one holding bytes that
    are not UTF-8, carries a Reject; blank lines are no rows.

    Raises:
        AxpackError: the header has no speaker or no text column.
    """
    physical = io.StringIO(text, newline="").readlines()  # csv's line_num units
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None) or []
    cols = [c.strip().lower() for c in header]
    if not set(cols) & set(SPEAKER_KEYS) or not set(cols) & set(TEXT_KEYS):
        raise AxpackError(
            f"{path}:1: CSV header needs a speaker column ({'/'.join(SPEAKER_KEYS)}) and a text "
            f"column ({'/'.join(TEXT_KEYS)}); found {sorted(set(cols))}"
        )
    while True:
        start = reader.line_num + 1
        err = None
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            row, err = None, Reject("invalid-csv", f"{exc}")
        raw_text = "".join(physical[start - 1 : reader.line_num]).rstrip("\r\n")
        raw = raw_text.encode("utf-8", "surrogateescape")
        if row == []:  # a blank line
            continue
        if err is None:
            try:
                raw_text.encode("utf-8")
            except UnicodeEncodeError:
                err = Reject("invalid-utf8", "not valid UTF-8; raw is base64")
        yield start, raw, None if err else dict(zip(header, row)), err, None


def windows(
    turns: list[Turn], window: int, context: int, min_completion: int, stride: int
) -> Iterator[tuple[list[Turn], list[Turn]] | None]:
    """Sliding windows over ``turns``, scene by scene.

    Yields (prompt turns, completion turns) for each kept window and None for
    each dropped one (completion shorter than ``min_completion``). Window
    starts are 0, stride, 2*stride, ... within a scene while at least one
    completion turn would follow the context (later starts are not windows).
    """
    for item in indexed_windows(turns, window, context, min_completion, stride):
        yield None if item is None else (item[1], item[2])


def indexed_windows(
    turns: list[Turn], window: int, context: int, min_completion: int, stride: int
) -> Iterator[tuple[int, list[Turn], list[Turn]] | None]:
    """:func:`windows` with each kept window's first turn index in ``turns``."""
    i = 0
    while i < len(turns):
        j = i
        while j < len(turns) and turns[j].scene == turns[i].scene:
            j += 1
        scene = turns[i:j]
        for start in range(0, max(len(scene) - context, 0), stride):
            win = scene[start : start + window]
            prompt, completion = win[:context], win[context:]
            yield (i + start, prompt, completion) if len(completion) >= min_completion else None
        i = j
