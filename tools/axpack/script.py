"""``axpack script``: speaker-tagged dialogue -> sliding-window continuation examples.

    axpack script INPUT... --out DIR [--window 35] [--context 5]
                  [--min-completion 10] [--stride 5] [--system TEXT]
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
  ``utterance``) and optional ``episode`` and ``scene`` columns.

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
only the completion carries loss. Writes ``DIR/sft.jsonl`` and
``DIR/summary.json`` (atomic, byte-identical on rerun).
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import orjson

from .errors import AxpackError
from .fsutil import atomic_output, atomic_write_json
from .prep import expand_inputs

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
    skipped_rows: int = 0  # CSV/JSONL rows without speaker or text
    skipped_reasons: dict[str, int] = field(default_factory=dict)
    windows: int = 0
    dropped: int = 0


def _looks_like_name(name: str) -> bool:
    words = name.split()
    return 0 < len(words) <= 4 and all(
        w[0].isupper() or not w[0].isalpha() for w in words
    )


def parse_text(
    text: str, file: str, stats: FileStats
) -> Iterator[tuple[str, str, tuple[str, str, str]]]:
    """Plain-text script -> (speaker, speech, scene key) per speech, in order.

    See the module docstring for the layout rules. Blank lines inside one
    speech are kept as one newline; trailing spaces are dropped.
    """
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

    for raw in text.splitlines():
        stats.lines += 1
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
    rows: Iterator[tuple[int, Any]], file: str, stats: FileStats
) -> Iterator[tuple[str, str, tuple]]:
    """CSV/JSONL rows -> (speaker, speech, scene key); rows without a speaker
    or text are counted in ``skipped_rows`` with a reason, never used."""
    for _, row in rows:
        stats.lines += 1
        if not isinstance(row, dict):
            reason = "not an object"
        else:
            speaker, text = _pick(row, SPEAKER_KEYS), _pick(row, TEXT_KEYS)
            if speaker is None or str(speaker).strip() == "":
                reason = "no speaker"
            elif (
                text is None
                or not isinstance(text, str | int | float)
                or str(text).strip() == ""
            ):
                reason = "no text"
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
        stats.skipped_rows += 1
        stats.skipped_reasons[reason] = stats.skipped_reasons.get(reason, 0) + 1


def read_turns(path: Path, fmt: str, stats: FileStats) -> list[Turn]:
    """All turns of one file (speeches merged per speaker within a scene).

    Raises:
        AxpackError: unreadable file, not UTF-8, or a CSV without the needed columns.
    """
    try:
        data = path.read_bytes()
    except OSError as err:
        raise AxpackError(f"{path}: cannot read ({err.strerror})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise AxpackError(
            f"{path}:{line}: not valid UTF-8; re-save the script as UTF-8"
        ) from None
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
    if fmt == "text":
        speeches = parse_text(text, name, stats)
    elif fmt == "csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        cols = {c.strip().lower() for c in reader.fieldnames or []}
        if not cols & set(SPEAKER_KEYS) or not cols & set(TEXT_KEYS):
            raise AxpackError(
                f"{path}:1: CSV header needs a speaker column ({'/'.join(SPEAKER_KEYS)}) and a text "
                f"column ({'/'.join(TEXT_KEYS)}); found {sorted(cols)}"
            )
        speeches = parse_rows(enumerate(reader, 2), name, stats)
    elif fmt == "jsonl":
        speeches = parse_rows(_jsonl_rows(text, path), name, stats)
    else:
        raise AxpackError(f"--format {fmt!r}: expected auto, text, csv or jsonl")
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


def _jsonl_rows(text: str, path: Path) -> Iterator[tuple[int, Any]]:
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            rows = orjson.loads(stripped)
        except orjson.JSONDecodeError as err:
            raise AxpackError(f"{path}: invalid JSON array ({err})") from None
        yield from enumerate(rows, 1)
        return
    # JSON Lines are separated by "\n" only: str.splitlines would also cut at
    # U+2028, U+0085, \x1c ... which JSON strings may hold unescaped
    for i, line in enumerate(text.split("\n"), 1):
        if line.strip():
            try:
                yield i, orjson.loads(line)
            except orjson.JSONDecodeError as err:
                raise AxpackError(
                    f"{path}:{i}: invalid JSON ({str(err).split(': line ')[0]}); fix or remove "
                    "the line"
                ) from None


def windows(
    turns: list[Turn], window: int, context: int, min_completion: int, stride: int
) -> Iterator[tuple[list[Turn], list[Turn]] | None]:
    """Sliding windows over ``turns``, scene by scene.

    Yields (prompt turns, completion turns) for each kept window and None for
    each dropped one (completion shorter than ``min_completion``). Window
    starts are 0, stride, 2*stride, ... within a scene while at least one
    completion turn would follow the context (later starts are not windows).
    """
    i = 0
    while i < len(turns):
        j = i
        while j < len(turns) and turns[j].scene == turns[i].scene:
            j += 1
        scene = turns[i:j]
        for start in range(0, max(len(scene) - context, 0), stride):
            win = scene[start : start + window]
            prompt, completion = win[:context], win[context:]
            yield (prompt, completion) if len(completion) >= min_completion else None
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
) -> dict[str, Any]:
    """Build ``out/sft.jsonl`` continuation examples; return the summary.

    Args:
        inputs: script files, globs or folders (read in order).
        window, context, min_completion, stride: in turns (module docstring);
            defaults 35/5/10/5 as in issue #3.
        system: the system turn of every example.
        fmt: auto | text | csv | jsonl.

    Returns:
        ``{"inputs": {FILE: stats}, "totals": {...}, "settings": {...}}``
        (also written to ``out/summary.json``).

    Raises:
        AxpackError: bad window settings, unreadable input, no examples at all.
    """
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
    per_file: dict[str, FileStats] = {}
    dumps = orjson.dumps
    with atomic_output(out / "sft.jsonl") as fh:
        for path in files:
            stats = per_file.setdefault(str(path), FileStats())
            turns = read_turns(path, fmt, stats)
            for win in windows(turns, window, context, min_completion, stride):
                if win is None:
                    stats.dropped += 1
                    continue
                prompt, completion = win
                ex = {
                    "messages": [
                        {"role": "system", "content": system},
                        {
                            "role": "user",
                            "content": "\n".join(t.render() for t in prompt),
                        },
                        {
                            "role": "assistant",
                            "content": "\n".join(t.render() for t in completion),
                        },
                    ]
                }
                fh.write(dumps(ex, option=orjson.OPT_APPEND_NEWLINE))
                stats.windows += 1
    inputs_summary = {k: vars(v) for k, v in per_file.items()}
    totals = {
        k: sum(s[k] for s in inputs_summary.values())
        for k in (
            "lines",
            "speeches",
            "turns",
            "scenes",
            "unattributed",
            "skipped_rows",
            "windows",
            "dropped",
        )
    }
    summary = {
        "inputs": inputs_summary,
        "totals": totals,
        "settings": {
            "window": window,
            "context": context,
            "min_completion": min_completion,
            "stride": stride,
            "system": system,
            "format": fmt,
        },
    }
    atomic_write_json(out / "summary.json", summary)
    if totals["windows"] == 0:
        raise AxpackError(
            f"script: no window has {context} context + {min_completion} completion turns "
            f"({totals['turns']} turns in {totals['scenes']} scenes); lower --min-completion or "
            "--context, or check the speaker format"
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
def command(inputs, out, window, context, min_completion, stride, system, fmt):
    """Speaker-tagged dialogue -> OUT/sft.jsonl sliding-window continuation examples."""
    s = script(
        inputs,
        out,
        window=window,
        context=context,
        min_completion=min_completion,
        stride=stride,
        system=system,
        fmt=fmt,
    )
    t = s["totals"]
    click.echo(
        f"axpack script: {t['windows']} examples ({t['dropped']} windows dropped as too short) from "
        f"{t['turns']} turns in {t['scenes']} scenes -> {Path(out) / 'sft.jsonl'}"
    )
    if t["unattributed"] or t["skipped_rows"]:
        click.echo(
            f"axpack script: warning: {t['unattributed']} text lines before any speaker and "
            f"{t['skipped_rows']} rows without speaker/text were not used (see summary.json)",
            err=True,
        )
