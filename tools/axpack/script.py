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
``DIR/rejects.jsonl`` and ``DIR/summary.json`` as one set (the run skeleton of
:mod:`axpack.datarun`: a folder with summary.json holds one whole
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

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import orjson

from .datarun import DataRun, check_strict
from .dialogue import (
    FileStats,
    RejectFn,
    Speech,
    Turn,
    count_reject,
    indexed_windows,
    keep_speakers,
    merge_turns,
    read_speeches,
    speaker_key,
    split_by_position,
)
from .errors import AxpackError
from .records import BOM, Reject, expand_inputs

DEFAULT_SYSTEM = (
    "Continue the script. Each turn is written as [SPEAKER] text, one turn per line."
)
# every file script may leave in its output folder (summary.json, the marker, besides)
OUTPUTS = ("sft.jsonl", "val.jsonl", "rejects.jsonl")
# summary.json ``totals``: the sum of these FileStats fields over the inputs
TOTALS = (
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


def _check_settings(window: int, context: int, min_completion: int, stride: int, val_fraction: float) -> None:
    """One AxpackError line (exit 1) for window settings that cannot work."""
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


def _logged(run: DataRun, name: str, stats: FileStats) -> RejectFn:
    """The reject callback for one input: counted in ``stats`` and logged by ``run``."""

    def reject(line: int, raw: bytes, rej: Reject) -> None:
        count_reject(stats, rej)
        run.reject(name, line, raw, rej.reason)

    return reject


def _filter_speakers(
    read: list[tuple[str, list[Speech]]],
    per_file: dict[str, FileStats],
    cast: set[str] | None,
    min_lines: int,
) -> tuple[list[tuple[str, list[Speech]]], dict[str, int]]:
    """The character filter over all inputs (a recurring character counts
    everywhere): each file's kept speeches, and ``{speaker: speeches left out}``;
    left-out speeches count in their file's ``filtered``."""
    counts: dict[str, int] = {}
    for _, speeches in read:
        for speaker, _, _ in speeches:
            counts[speaker] = counts.get(speaker, 0) + 1
    keep = keep_speakers(counts, cast, min_lines)
    filtered_by: dict[str, int] = {}
    out = []
    for name, speeches in read:
        stats = per_file[name]
        kept = []
        for sp in speeches:
            if sp[0] in keep:
                kept.append(sp)
            else:
                stats.filtered += 1
                filtered_by[sp[0]] = filtered_by.get(sp[0], 0) + 1
        out.append((name, kept))
    return out, filtered_by


def _render(system: str, prompt: list[Turn], completion: list[Turn]) -> bytes:
    """One example's output line: system, the context turns as the user
    turn, the completion turns as the assistant turn."""
    ex = {
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": "\n".join(t.render() for t in prompt)},
            {"role": "assistant", "content": "\n".join(t.render() for t in completion)},
        ]
    }
    return orjson.dumps(ex, option=orjson.OPT_APPEND_NEWLINE)


def _write_windows(
    speeches: list[Speech],
    stats: FileStats,
    settings: dict[str, Any],
    write: Callable[[bytes], Any],
    write_val: Callable[[bytes], Any] | None,
) -> None:
    """One file's speeches -> turns -> windows, written to ``write`` (training)
    and ``write_val`` (its last windows, with ``val_fraction``); counted in ``stats``."""
    s = settings
    turns = merge_turns(speeches, stats)
    wins = []
    for win in indexed_windows(turns, s["window"], s["context"], s["min_completion"], s["stride"]):
        if win is None:
            stats.dropped += 1
        else:
            wins.append(win)
    train, val, stats.overlap_dropped = split_by_position(wins, s["val_fraction"])
    for prompt, completion in train:
        write(_render(s["system"], prompt, completion))
        stats.windows += 1
    for prompt, completion in val:
        write_val(_render(s["system"], prompt, completion))
        stats.val_windows += 1


def _summary(
    per_file: dict[str, FileStats], filtered_by: dict[str, int], settings: dict[str, Any]
) -> dict[str, Any]:
    """summary.json: per-input stats, their totals, reject reasons, speakers filtered, settings."""
    inputs = {k: vars(v) for k, v in per_file.items()}
    reasons: dict[str, int] = {}
    for st in per_file.values():
        for code, n in st.reject_reasons.items():
            reasons[code] = reasons.get(code, 0) + n
    return {
        "inputs": inputs,
        "totals": {k: sum(s[k] for s in inputs.values()) for k in TOTALS},
        "reject_reasons": dict(sorted(reasons.items())),
        "speakers_filtered": dict(sorted(filtered_by.items(), key=lambda kv: (-kv[1], kv[0]))),
        "settings": settings,
    }


def _check_result(totals: dict[str, int], context: int, min_completion: int, val_fraction: float) -> None:
    """One AxpackError line (exit 1) when the run made no example, or no
    validation example although asked to (everything is written by then)."""
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
        warn: callable for one-line warnings (default: stderr).
        cast: speaker names to keep (:func:`~axpack.dialogue.speaker_key`
            form, e.g. from :func:`read_cast`); ``None``: no cast filter.
        min_speaker_lines: keep speakers with at least this many speeches over
            all inputs (1: no count filter). With ``cast``, either test keeps.
        val_fraction: share of each file's windows (its last ones) written to
            ``val.jsonl`` (0: none; module docstring, "Validation split").
        cast_source: shown in summary.json ``settings.cast`` (e.g. the file name).

    Returns:
        ``{"inputs": {FILE: stats}, "totals": {...}, "reject_reasons":
        {...}, "speakers_filtered": {...}, "settings": {...}}`` (also written
        to ``out/summary.json``); rejects are in ``totals["rejected"]`` (the
        command's ``--strict`` reads it).

    Raises:
        AxpackError: bad window settings, unreadable input, an unusable
            ``out``, no examples at all, ``val_fraction`` outside [0, 0.5]
            (exit 1).
    """
    _check_settings(window, context, min_completion, stride, val_fraction)
    settings = {
        "window": window,
        "context": context,
        "min_completion": min_completion,
        "stride": stride,
        "system": system,
        "format": fmt,
        "cast": cast_source if cast is not None else None,
        "min_speaker_lines": min_speaker_lines,
        "val_fraction": val_fraction,
    }
    files = expand_inputs(inputs, (".txt", ".csv", ".jsonl", ".json")) if inputs else []
    per_file: dict[str, FileStats] = {}
    with DataRun("script", out, OUTPUTS, warn) as run:
        write = run.open("sft.jsonl").write
        write_val = run.open("val.jsonl").write if val_fraction > 0 else None
        read = []
        for path in files:
            stats = per_file.setdefault(str(path), FileStats())
            read.append((str(path), read_speeches(path, fmt, stats, _logged(run, str(path), stats))))
        read, filtered_by = _filter_speakers(read, per_file, cast, min_speaker_lines)
        for name, speeches in read:
            _write_windows(speeches, per_file[name], settings, write, write_val)
        summary = _summary(per_file, filtered_by, settings)
        run.commit(summary)
    _check_result(summary["totals"], context, min_completion, val_fraction)
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
    summary = script(
        inputs,
        out,
        window=window,
        context=context,
        min_completion=min_completion,
        stride=stride,
        system=system,
        fmt=fmt,
        cast=read_cast(cast_file) if cast_file else None,
        min_speaker_lines=min_speaker_lines,
        val_fraction=val_fraction,
        cast_source=cast_file,
    )
    _report(summary, Path(out))
    if strict:  # everything is written and reported; exit 3 when anything was rejected
        check_strict("script", summary["totals"]["rejected"], "row(s)/line(s)", out)


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
