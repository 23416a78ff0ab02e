"""``axpack script``: speaker-tagged dialogue -> sliding-window continuation examples.

    axpack script INPUT... --out DIR [--window 35] [--context 5]
                  [--min-completion 10] [--stride 5] [--system TEXT]
                  [--cast FILE] [--min-speaker-lines N] [--val-fraction F]
                  [--format auto|text|csv|jsonl]

Input (``--format auto`` picks by file suffix: .csv, .jsonl/.json, else text):

- plain-text scripts: a speaker line ``SPEAKER:`` followed by the speech on
  the next lines (tinyshakespeare's layout), or ``SPEAKER: speech`` on one
  line. A speaker line must follow a blank line (or a scene heading, or the
  start of the file), so speech lines that end in a colon stay speech; once
  a file has shown one-line ``SPEAKER: speech`` turns, such lines also count
  without a blank line before them. Scene headings (after a blank line):
  ``ACT I``, ``SCENE 2``, ``Episode 3``, ``INT. ...``/``EXT. ...``, a
  Markdown ``# heading``, or a rule line (``---``, ``===``, ``***``).
- CSV (header row) or JSONL with a speaker column (``speaker``,
  ``character``, ``name``), a text column (``line``, ``text``, ``dialogue``,
  ``utterance``) and optional ``episode`` and ``scene`` columns. JSONL is
  read as ``axpack prep`` reads it (BOM, CRLF, a JSON array, pretty-printed
  or not).

Nothing is dropped silently: a row that cannot be used (invalid JSON or
UTF-8, not an object, no speaker, no text) and a text line that is not
valid UTF-8 are *rejects*: one stderr line ``FILE:LINE: CODE: reason`` each
(the first 20), one ``DIR/rejects.jsonl`` line ``{"file", "line", "reason",
"raw"}`` each (``raw`` base64 when not UTF-8), and the run goes on. For rows
``lines == speeches + rejected`` in summary.json; ``--strict`` exits 3 when
anything was rejected (after writing everything).

A *turn* is one speaker's contiguous speech (consecutive speeches by the same
speaker merge). Turns never join across a scene, an episode or a file.

Windows, all counted in turns: a window holds up to ``window`` turns; its
first ``context`` turns form the prompt and the rest the completion, which
must have at least ``min_completion`` turns or the window is dropped;
windows start every ``stride`` turns within a scene. Each turn renders as
``[SPEAKER] text`` (turns joined by newlines), and each example is

    {"messages": [{"role": "system", "content": SYSTEM},
                  {"role": "user", "content": <context turns>},
                  {"role": "assistant", "content": <completion turns>}]}

for Axolotl ``type: chat_template`` with ``roles_to_train: [assistant]``, so
only the completion carries loss. Writes ``DIR/sft.jsonl``,
``DIR/rejects.jsonl`` and ``DIR/summary.json`` as one set (prep's
:class:`~axpack.prep.OutputSet`: a folder with summary.json holds one whole
run), byte-identical on rerun.

Character-name filtering (the script-continuation recipe's): with ``--cast
FILE`` (one name per line, ``#`` comments, case and spacing ignored) only
speeches whose speaker is in the cast are kept; with ``--min-speaker-lines
N`` only speakers with at least N speeches over all inputs (both: either
test keeps a speaker). A left-out speech is taken out before turns are
merged, as if absent, and counted: per input ``filtered``, and
``speakers_filtered`` {name: speeches} in summary.json; a stderr line says
how many. Nothing is dropped silently.

Validation split by position (``--val-fraction F``): within each input
file (one source script), the last ``ceil(F × windows)`` windows go to
``DIR/val.jsonl`` and every earlier window that shares a turn with one of
them is left out (counted as ``overlap_dropped``), so no validation window
overlaps a training window; Axolotl reads ``val.jsonl`` as
``test_datasets`` with ``val_set_size: 0``. A random split of sliding
windows would put near-copies of the same turns on both sides.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import orjson

from .datarun import WARN_CAP, raw_text, summary_bytes
from .errors import EXIT_REJECTS, AxpackError, io_error
from .formats import jtype
from .fsutil import OutputSet
from .records import BOM, Reject, expand_inputs, read_records

DEFAULT_SYSTEM = (
    "Continue the script. Each turn is written as [SPEAKER] text, one turn per line."
)
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


# reject(line, raw bytes, reason): one unusable row or text line
RejectFn = Callable[[int, bytes, Reject], None]


def _count_only(stats: FileStats) -> RejectFn:
    def reject(line: int, raw: bytes, rej: Reject) -> None:
        stats.rejected += 1
        stats.reject_reasons[rej.code] = stats.reject_reasons.get(rej.code, 0) + 1

    return reject


def _looks_like_name(name: str) -> bool:
    words = name.split()
    return 0 < len(words) <= 4 and all(
        w[0].isupper() or not w[0].isalpha() for w in words
    )


def parse_text(
    text: str, file: str, stats: FileStats, reject: RejectFn | None = None
) -> Iterator[tuple[str, str, tuple[str, str, str]]]:
    """Plain-text script -> (speaker, speech, scene key) per speech, in order.

    See the module docstring for the layout rules. Blank lines inside one
    speech are kept as one newline; trailing spaces are dropped. ``text`` is
    the file decoded with ``errors="surrogateescape"``: a line holding bytes
    that are not UTF-8 goes to ``reject`` (``invalid-utf8``, with its file
    line: lines end at LF, CRLF or CR) and is otherwise skipped, as if absent.
    """
    reject = reject or _count_only(stats)
    scene_no = 0
    scene = (file, "", "0")
    speaker: str | None = None
    buf: list[str] = []
    prev_blank = True
    inline_mode = False

    def flush() -> Iterator[tuple[str, str, tuple[str, str, str]]]:
        nonlocal buf
        body = "\n".join(buf).strip()
        if speaker is not None and body:
            stats.speeches += 1
            yield speaker, body, scene
        buf = []

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
        line = raw.rstrip()
        if not line.strip():
            prev_blank = True
            if buf and buf[-1] != "":
                buf.append("")
            continue
        if prev_blank and _HEADING.match(line):
            yield from flush()
            scene_no += 1
            scene = (file, "", str(scene_no))
            speaker = None
            prev_blank = True
            continue
        m = _SPEAKER.match(line)
        is_speaker = False
        if m and m.group("name")[0].isupper():
            name, inline = m.group("name").strip(), m.group("text")
            if prev_blank or (inline_mode and inline and _looks_like_name(name)):
                is_speaker = True
        if is_speaker:
            yield from flush()
            speaker = name
            if inline:
                inline_mode = True
                buf = [inline]
        elif speaker is None:
            stats.unattributed += 1
        else:
            buf.append(line.strip())
        prev_blank = False
    yield from flush()


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
) -> Iterator[tuple[str, str, tuple]]:
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
) -> list[tuple[str, str, tuple[str, str, str]]]:
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
    speeches: list[tuple[str, str, tuple[str, str, str]]], stats: FileStats
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


def read_cast(path: str | os.PathLike) -> set[str]:
    """Cast names from a file: one per line, ``#`` starts a comment, blank lines skipped.

    Raises:
        AxpackError: unreadable or not UTF-8, or no names in it.
    """
    p = Path(path)
    try:
        text = p.read_bytes().removeprefix(BOM).decode("utf-8")
    except OSError as err:
        raise AxpackError(f"--cast {p}: cannot read ({err.strerror}); pass a file with one name per line") from None
    except UnicodeDecodeError as err:
        raise AxpackError(f"--cast {p}: not UTF-8 (byte {err.start}); save the cast list as UTF-8") from None
    names = {speaker_key(ln.split("#", 1)[0]) for ln in text.splitlines()}
    names.discard("")
    if not names:
        raise AxpackError(f"--cast {p}: no names; write one character name per line")
    return names


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


def script(
    inputs: list[str] | tuple[str, ...],
    out: str | os.PathLike,
    *,
    window: int = 35,
    context: int = 5,
    min_completion: int = 10,
    stride: int = 5,
    system: str = DEFAULT_SYSTEM,
    fmt: str = "auto",
    strict: bool = False,
    warn: Callable[[str], None] | None = None,
    cast: set[str] | None = None,
    min_speaker_lines: int = 1,
    val_fraction: float = 0.0,
    cast_source: str | None = None,
) -> dict[str, Any]:
    """Build ``out/sft.jsonl`` (and ``out/val.jsonl``) continuation examples; return the summary.

    Args:
        inputs: script files, globs or folders (read in order).
        window, context, min_completion, stride: in turns (module docstring);
            defaults 35/5/10/5 as in issue #3.
        system: the system turn of every example.
        fmt: auto | text | csv | jsonl.
        strict: raise (exit 3) after writing when anything was rejected.
        warn: callable for one-line warnings (default: stderr).
        cast: speaker names to keep (:func:`speaker_key` form, e.g. from
            :func:`read_cast`); ``None``: no cast filter.
        min_speaker_lines: keep speakers with at least this many speeches over
            all inputs (1: no count filter). With ``cast``, either test keeps.
        val_fraction: share of each file's windows (its last ones) written to
            ``val.jsonl`` (0: none; module docstring, "Validation split").
        cast_source: shown in summary.json ``settings.cast`` (e.g. the file name).

    Returns:
        ``{"inputs": {FILE: stats}, "totals": {...}, "reject_reasons":
        {...}, "settings": {...}}`` (also written to ``out/summary.json``).

    Raises:
        AxpackError: bad window settings, unreadable input, an unusable
            ``out``, no examples at all, ``val_fraction`` outside [0, 0.5]
            (exit 1); ``strict`` with rejects (exit 3).
    """
    if not 0 <= val_fraction <= 0.5:
        raise AxpackError(f"script: --val-fraction {val_fraction}: expected 0 to 0.5 (e.g. 0.1)")
    if context < 1 or stride < 1 or min_completion < 1:
        raise AxpackError(
            "script: --context, --stride and --min-completion must be >= 1"
        )
    if context + min_completion > window:
        raise AxpackError(
            f"script: --context {context} + --min-completion {min_completion} > --window {window}: "
            "no window could ever be kept"
        )
    files = expand_inputs(inputs, (".txt", ".csv", ".jsonl", ".json")) if inputs else []
    out = Path(out)
    warn = warn or (lambda msg: click.echo(msg, err=True))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise AxpackError(
            f"{out}: cannot create the output folder ({err.strerror}); check the path"
        ) from None
    per_file: dict[str, FileStats] = {}
    dumps = orjson.dumps
    nl = orjson.OPT_APPEND_NEWLINE
    shown = 0

    def render(prompt: list[Turn], completion: list[Turn]) -> bytes:
        ex = {
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": "\n".join(t.render() for t in prompt)},
                {"role": "assistant", "content": "\n".join(t.render() for t in completion)},
            ]
        }
        return dumps(ex, option=nl)

    filtered_by: dict[str, int] = {}
    try:
        with OutputSet(out, ("sft.jsonl", "val.jsonl", "rejects.jsonl")) as outs:
            write = outs.open("sft.jsonl").write
            write_val = outs.open("val.jsonl").write if val_fraction > 0 else None
            write_reject = outs.open("rejects.jsonl").write
            read: list[tuple[str, list[tuple[str, str, tuple[str, str, str]]]]] = []
            for path in files:
                name = str(path)
                stats = per_file.setdefault(name, FileStats())
                count = _count_only(stats)

                def reject(
                    line: int, raw: bytes, rej: Reject, name=name, count=count
                ) -> None:
                    nonlocal shown
                    count(line, raw, rej)
                    rec = {
                        "file": name,
                        "line": line,
                        "reason": rej.reason,
                        "raw": raw_text(raw),
                    }
                    write_reject(dumps(rec, option=nl))
                    if shown < WARN_CAP:
                        warn(f"axpack script: reject {name}:{line}: {rej.reason}")
                    shown += 1

                read.append((name, read_speeches(path, fmt, stats, reject)))
            # the speaker filter counts speeches over all inputs (a recurring character)
            counts: dict[str, int] = {}
            for _, speeches in read:
                for speaker, _, _ in speeches:
                    counts[speaker] = counts.get(speaker, 0) + 1
            keep = keep_speakers(counts, cast, min_speaker_lines)
            for name, speeches in read:
                stats = per_file[name]
                kept = []
                for sp in speeches:
                    if sp[0] in keep:
                        kept.append(sp)
                    else:
                        stats.filtered += 1
                        filtered_by[sp[0]] = filtered_by.get(sp[0], 0) + 1
                turns = merge_turns(kept, stats)
                wins = []
                for win in indexed_windows(turns, window, context, min_completion, stride):
                    if win is None:
                        stats.dropped += 1
                    else:
                        wins.append(win)
                train, val, overlap = split_by_position(wins, val_fraction)
                stats.overlap_dropped = overlap
                for prompt, completion in train:
                    write(render(prompt, completion))
                    stats.windows += 1
                for prompt, completion in val:
                    write_val(render(prompt, completion))
                    stats.val_windows += 1
            inputs_summary = {k: vars(v) for k, v in per_file.items()}
            totals = {
                k: sum(s[k] for s in inputs_summary.values())
                for k in (
                    "lines",
                    "speeches",
                    "turns",
                    "scenes",
                    "unattributed",
                    "rejected",
                    "windows",
                    "dropped",
                    "filtered",
                    "val_windows",
                    "overlap_dropped",
                )
            }
            reasons: dict[str, int] = {}
            for st in per_file.values():
                for code, n in st.reject_reasons.items():
                    reasons[code] = reasons.get(code, 0) + n
            summary = {
                "inputs": inputs_summary,
                "totals": totals,
                "reject_reasons": dict(sorted(reasons.items())),
                "speakers_filtered": dict(sorted(filtered_by.items(), key=lambda kv: (-kv[1], kv[0]))),
                "settings": {
                    "window": window,
                    "context": context,
                    "min_completion": min_completion,
                    "stride": stride,
                    "system": system,
                    "format": fmt,
                    "cast": cast_source if cast is not None else None,
                    "min_speaker_lines": min_speaker_lines,
                    "val_fraction": val_fraction,
                },
            }
            outs.commit(summary_bytes(summary))
    except OSError as err:  # an unwritable --out, a full disk, a read error mid-file
        raise io_error(err, out) from None
    if shown > WARN_CAP:
        warn(
            f"axpack script: ... and {shown - WARN_CAP} more rejects (all in {out / 'rejects.jsonl'})"
        )
    if totals["windows"] == 0:
        raise AxpackError(
            f"script: no window has {context} context + {min_completion} completion turns "
            f"({totals['turns']} turns in {totals['scenes']} scenes); lower --min-completion or "
            "--context, or check the speaker format"
        )
    if val_fraction > 0 and totals["val_windows"] == 0:
        raise AxpackError(
            f"script: --val-fraction {val_fraction} left no validation window "
            f"({totals['windows']} training windows); use longer scripts or lower --window/--min-completion"
        )
    if strict and totals["rejected"]:
        raise AxpackError(
            f"script --strict: {totals['rejected']} row(s)/line(s) rejected; see {out / 'rejects.jsonl'}",
            EXIT_REJECTS,
        )
    return summary


@click.command("script")
@click.argument("inputs", nargs=-1, required=True)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="output folder (sft.jsonl, summary.json)",
)
@click.option(
    "--window",
    type=click.IntRange(min=2),
    default=35,
    show_default=True,
    help="turns per window",
)
@click.option(
    "--context",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="prompt turns per window",
)
@click.option(
    "--min-completion",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="fewest completion turns; shorter windows are dropped",
)
@click.option(
    "--stride",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="turns between window starts",
)
@click.option(
    "--system",
    default=DEFAULT_SYSTEM,
    show_default=True,
    help="system prompt of every example",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "text", "csv", "jsonl"]),
    default="auto",
    show_default=True,
)
@click.option(
    "--cast",
    "cast_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="keep only speakers named in this file (one name per line); the rest is counted",
)
@click.option(
    "--min-speaker-lines",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="keep only speakers with at least N speeches over all inputs (with --cast: either keeps)",
)
@click.option(
    "--val-fraction",
    type=click.FloatRange(min=0, max=0.5),
    default=0.0,
    show_default=True,
    help="last share of each script's windows -> OUT/val.jsonl (no overlap with sft.jsonl)",
)
@click.option("--strict", is_flag=True, help="exit 3 when any row or line was rejected")
def command(inputs, out, window, context, min_completion, stride, system, fmt, cast_file, min_speaker_lines,
            val_fraction, strict):
    """Speaker-tagged dialogue -> OUT/sft.jsonl sliding-window continuation examples."""
    try:
        s = script(
            inputs,
            out,
            window=window,
            context=context,
            min_completion=min_completion,
            stride=stride,
            system=system,
            fmt=fmt,
            strict=strict,
            cast=read_cast(cast_file) if cast_file else None,
            min_speaker_lines=min_speaker_lines,
            val_fraction=val_fraction,
            cast_source=cast_file,
        )
    except AxpackError as err:
        if (
            err.exit_code == EXIT_REJECTS
        ):  # everything was written: say what, then exit 3
            _report(orjson.loads((Path(out) / "summary.json").read_bytes()), Path(out))
        raise
    _report(s, Path(out))


def _report(summary: dict[str, Any], out: Path) -> None:
    """The run in one line on stdout, and what was not used on stderr."""
    t = summary["totals"]
    click.echo(
        f"axpack script: {t['windows']} examples ({t['dropped']} windows dropped as too short) from "
        f"{t['turns']} turns in {t['scenes']} scenes -> {out / 'sft.jsonl'}"
    )
    if t.get("val_windows"):
        click.echo(
            f"axpack script: {t['val_windows']} validation examples (the last windows of each script) -> "
            f"{out / 'val.jsonl'}; {t['overlap_dropped']} training windows left out for sharing turns with them"
        )
    if t.get("filtered"):
        who = summary.get("speakers_filtered") or {}
        top = ", ".join(f"{k} ({v})" for k, v in list(who.items())[:5])
        click.echo(
            f"axpack script: {t['filtered']} speeches by {len(who)} speaker(s) were left out by the character filter: "
            f"{top}{', ...' if len(who) > 5 else ''} (summary.json speakers_filtered)",
            err=True,
        )
    if t["unattributed"]:
        click.echo(
            f"axpack script: warning: {t['unattributed']} text lines before any speaker were "
            "not used (see summary.json)",
            err=True,
        )
    if t["rejected"]:
        click.echo(
            f"axpack script: {t['rejected']} rows/lines rejected (see {out / 'rejects.jsonl'})",
            err=True,
        )
