"""``axpack prep``: raw chat files in, clean Axolotl SFT/DPO/KTO JSONL out, with accounting.

    axpack prep RAW... --out DIR [--system strip|keep|default --system-text TEXT]
                [--format auto|messages|sharegpt|alpaca|dpo|sharegpt-dpo|alpaca-dpo|
                          dpo-messages|prompt-completion]
                [--val-fraction F] [--near-dup THRESHOLD] [--tool-roles reject|map]
                [--labels reject|kto|keep-true] [--ignore-key KEY ...]
                [--replace KEY=VALUE ...] [--strict]

Prep never changes what a record means: every key of a record is read,
honoured, rejected with a reason, or known inert and counted
(:mod:`axpack.record_keys` is the one list).

Writes (as one set, see :class:`~axpack.fsutil.OutputSet`: a folder with summary.json holds
the complete output of one run; a rerun on the same input gives byte-identical
files):

- ``DIR/sft.jsonl``  ``{"messages": [{"role", "content"[, "train"]}, ...]}``
  (Axolotl ``type: chat_template``, ``field_messages: messages``; a turn's
  ``train`` flag, from a per-turn loss weight, needs
  ``message_field_training: train``)
- ``DIR/dpo.jsonl``  ``{"prompt": [turns], "chosen": [turn], "rejected": [turn]}``
  (Axolotl ``type: chat_template.default``)
- ``DIR/kto.jsonl`` with ``--labels kto``: ``{"completion": [turns], "label":
  bool}`` (Axolotl ``rl: kto``, ``type: chatml.argilla_chat`` or
  ``llama3.argilla_chat``: the turns before the last are the prompt)
- ``DIR/sft.val.jsonl``, ``DIR/dpo.val.jsonl`` (``kto.val.jsonl``) with
  ``--val-fraction`` (for ``test_datasets``), split by content hash: stable
  across reruns and input order
- ``DIR/rejects.jsonl``  one line per rejected record:
  ``{"file", "line", "reason", "raw"}``; ``raw`` is the original text, or its
  base64 when it is not valid UTF-8 (the reason then says so)
- ``DIR/duplicates.jsonl``  one line per dropped duplicate:
  ``{"file", "line", "kept_file", "kept_line", "kind"}`` (``kind`` exact or near)
- ``DIR/summary.json``  ``{"inputs": {FILE: COUNTS}, "outputs": {"sft": COUNTS,
  "dpo": COUNTS[, "kto": COUNTS]}, "totals": COUNTS, "ignored_keys": {KEY:
  N}, "train_flagged": N, ...}`` with COUNTS = ``{"read", "kept",
  "duplicates", "rejected"}`` and ``read == kept + duplicates + rejected`` in
  every COUNTS. A duplicate counts in the file where it was found. Records
  that cannot be classified (bad JSON, unknown shape) count in ``inputs`` and
  ``totals`` but in no output. ``ignored_keys`` counts, among written
  examples, the records (``id``) or turns (``messages[].name``) holding
  each inert key.

Exit codes: 0 ok, 1 expected failure (missing input, unwritable output),
2 usage, 3 ``--strict`` and at least one reject (outputs are still written).
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import orjson
from xxhash import xxh3_128_digest

from . import record_keys
from .cleaning import (
    SYSTEM_POLICIES,
    NearDup,
    convert,
    digest,
    fast_messages,
    fast_sharegpt,
    is_val,
)
from .datarun import DataRun, check_strict
from .errors import AxpackError
from .formats import DPO, FORMATS, KTO, SFT, Opts, Reject
from .records import (
    MAX_LINE_BYTES,
    LineBatch,
    RecordBatch,
    decode,
    expand_inputs,
    line_record,
    read_batches,
)

# Every file prep may leave in its output folder (summary.json, the marker, besides).
OUTPUTS = (
    "sft.jsonl",
    "dpo.jsonl",
    "sft.val.jsonl",
    "dpo.val.jsonl",
    "kto.jsonl",
    "kto.val.jsonl",
    "rejects.jsonl",
    "duplicates.jsonl",
)


@dataclass(slots=True)
class Counts:
    """One COUNTS of summary.json; ``read == kept + duplicates + rejected``
    by construction (``read`` is their sum)."""

    kept: int = 0
    duplicates: int = 0
    rejected: int = 0

    @property
    def read(self) -> int:
        """Records read: kept + duplicates + rejected."""
        return self.kept + self.duplicates + self.rejected

    def as_dict(self) -> dict[str, int]:
        """``{"read", "kept", "duplicates", "rejected"}`` for summary.json."""
        return {
            "read": self.read,
            "kept": self.kept,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
        }

    @classmethod
    def total(cls, counts: list[Counts]) -> Counts:
        """The field-wise sum of ``counts``."""
        return cls(
            sum(c.kept for c in counts),
            sum(c.duplicates for c in counts),
            sum(c.rejected for c in counts),
        )


@dataclass(slots=True)
class Source:
    """One input file of the run.

    Attributes:
        name: the file as named in outputs (``str(path)``).
        tag: ``file index << 32``: the dedupe index stores ``tag | line``
            (plain ints, which the GC never scans).
        counts: the file's COUNTS (a duplicate counts where it was found).
    """

    name: str
    tag: int
    counts: Counts


@dataclass(slots=True)
class PrepSettings:
    """prep's options (see :func:`prep` for each); :meth:`check` validates them."""

    system: str = "keep"
    system_text: str | None = None
    fmt: str = "auto"
    val_fraction: float = 0.0
    near_dup: float | None = None
    tool_roles: str = "reject"
    labels: str = "reject"
    ignore_keys: tuple[str, ...] = ()
    replace: dict[str, str] = field(default_factory=dict)

    def check(self) -> None:
        """One :class:`AxpackError` line (exit 1) for the first bad option."""
        if self.system not in SYSTEM_POLICIES:
            raise AxpackError(
                f"--system {self.system!r}: expected strip, keep or default"
            )
        if self.system == "default" and not self.system_text:
            raise AxpackError(
                "--system default needs --system-text TEXT (the system prompt to insert)"
            )
        if self.fmt not in FORMATS:
            raise AxpackError(
                f"--format {self.fmt!r}: expected one of {', '.join(FORMATS)}"
            )
        if not 0.0 <= self.val_fraction < 1.0:
            raise AxpackError(f"--val-fraction {self.val_fraction}: expected 0 <= F < 1")
        if self.near_dup is not None and not 0.0 < self.near_dup <= 1.0:
            raise AxpackError(
                f"--near-dup {self.near_dup}: expected a Jaccard threshold in (0, 1]"
            )
        if self.tool_roles not in ("reject", "map"):
            raise AxpackError(
                f"--tool-roles {self.tool_roles!r}: expected reject or map"
            )
        if self.labels not in record_keys.LABEL_POLICIES:
            raise AxpackError(
                f"--labels {self.labels!r}: expected reject, kto or keep-true"
            )
        for key in self.ignore_keys:
            why = record_keys.refusable(key)
            if why:
                raise AxpackError(f"--ignore-key {key}: {why}; it cannot be ignored")

    @property
    def subs(self) -> dict[str, str]:
        """``replace`` as placeholder -> text: ``{"{{name}}": "Juniper"}``."""
        return {"{{" + k + "}}": v for k, v in self.replace.items()}

    def as_dict(self) -> dict[str, Any]:
        """summary.json ``settings``."""
        return {
            "system": self.system,
            "system_text": self.system_text,
            "format": self.fmt,
            "val_fraction": self.val_fraction,
            "near_dup": self.near_dup,
            "tool_roles": self.tool_roles,
            "labels": self.labels,
            "ignore_keys": sorted(set(self.ignore_keys)),
        }


class PrepRun:
    """The accounting and writing of one prep run (inside a :class:`DataRun`).

    Every record ends in exactly one of :meth:`reject` and :meth:`keep`
    (which writes it, or logs it as a duplicate), so every COUNTS keeps
    ``read == kept + duplicates + rejected``; :meth:`summary` is the
    summary.json dict. :func:`_read_inputs` drives it.

    Args:
        run: the open output set and reject log.
        files: the inputs, in reading order (:attr:`sources` follows it).
        settings: checked options.
    """

    # slots: keep() and record() run once per record (attribute reads are the hot cost)
    __slots__ = (
        "convert_args",
        "ignored",
        "inputs",
        "kinds",
        "near",
        "opts",
        "outputs",
        "reject_reasons",
        "run",
        "seen",
        "settings",
        "sources",
        "splits",
        "train_flagged",
        "val_fraction",
        "write",
        "write_dup",
        "write_val",
    )

    def __init__(self, run: DataRun, files: list[Path], settings: PrepSettings) -> None:
        s = settings
        self.run = run
        self.settings = s
        self.opts = Opts(
            tool_roles=s.tool_roles, labels=s.labels, ignore=frozenset(s.ignore_keys)
        )
        # convert()'s arguments after the record (opts is filled per record)
        self.convert_args = (s.fmt, s.system, s.system_text, s.subs, self.opts)
        self.kinds = (SFT, DPO, KTO) if s.labels == "kto" else (SFT, DPO)
        self.sources = [
            Source(str(p), i << 32, Counts()) for i, p in enumerate(files)
        ]
        self.inputs = {src.name: src.counts for src in self.sources}
        self.outputs = {k: Counts() for k in self.kinds}
        self.splits = {k: {"train": 0, "val": 0} for k in self.kinds}
        self.reject_reasons: dict[str, int] = {}
        self.ignored: Counter[str] = Counter()
        self.train_flagged = 0  # SFT examples written with per-turn train flags
        self.seen: dict[bytes, int] = {}  # digest -> Source.tag | line
        self.near = NearDup(s.near_dup) if s.near_dup is not None else None
        self.val_fraction = s.val_fraction
        self.write = {k: run.open(f"{k}.jsonl").write for k in self.kinds}
        self.write_dup = run.open("duplicates.jsonl").write
        self.write_val = (
            {k: run.open(f"{k}.val.jsonl").write for k in self.kinds}
            if s.val_fraction > 0
            else {}
        )

    def record(
        self,
        src: Source,
        line: int,
        raw: bytes,
        value: Any,
        error: Reject | None,
        note: str | None = None,
    ) -> None:
        """The general path for one record as read (:class:`~axpack.records.Record`
        fields): convert it, then reject or keep it."""
        if error is None:
            try:
                kind, ex, data, key = convert(value, *self.convert_args)
            except Reject as rej:
                error = rej
            else:
                if self.keep(src, line, kind, ex, data, key):
                    if self.opts.ignored:
                        self.ignored.update(self.opts.ignored)
                    if self.opts.flagged and kind == SFT:
                        self.train_flagged += 1
                return
        self.reject(src, line, raw, error, note)

    def reject(
        self, src: Source, line: int, raw: bytes, error: Reject, note: str | None = None
    ) -> None:
        """Count one reject (in its file and, when its shape was known, its
        output) and log it; ``note`` is appended to the reason."""
        src.counts.rejected += 1
        if error.kind:
            self.outputs[error.kind].rejected += 1
        self.reject_reasons[error.code] = self.reject_reasons.get(error.code, 0) + 1
        self.run.reject(
            src.name, line, raw, error.reason + note if note else error.reason
        )

    def keep(
        self, src: Source, line: int, kind: str, ex: dict, data: bytes, key: bytes
    ) -> bool:
        """Dedupe (exact by ``key``, then near) and write one clean example
        (``data``, its output line) to its output or its split; False when
        it was a duplicate (logged in duplicates.jsonl)."""
        dup = self.seen.get(key)
        if dup is None:
            near = self.near
            if near is None or (dup := near.check(kind, ex, (src.name, line))) is None:
                self.seen[key] = src.tag | line
                src.counts.kept += 1
                self.outputs[kind].kept += 1
                if self.val_fraction and is_val(key, self.val_fraction):
                    self.splits[kind]["val"] += 1
                    self.write_val[kind](data)
                else:
                    self.write[kind](data)
                return True
            dup_kind = "near"
        else:
            dup = (self.sources[dup >> 32].name, dup & 0xFFFFFFFF)
            dup_kind = "exact"
        src.counts.duplicates += 1
        self.outputs[kind].duplicates += 1
        rec = {
            "file": src.name,
            "line": line,
            "kept_file": dup[0],
            "kept_line": dup[1],
            "kind": dup_kind,
        }
        self.write_dup(orjson.dumps(rec, option=orjson.OPT_APPEND_NEWLINE))
        return False

    def summary(self) -> dict[str, Any]:
        """summary.json (module docstring): COUNTS per input, per output and
        in total, splits, reject reasons, inert keys, train flags, settings."""
        for k, split in self.splits.items():
            split["train"] = self.outputs[k].kept - split["val"]
        return {
            "inputs": {k: c.as_dict() for k, c in self.inputs.items()},
            "outputs": {k: c.as_dict() for k, c in self.outputs.items()},
            "totals": Counts.total(list(self.inputs.values())).as_dict(),
            "splits": self.splits,
            "reject_reasons": dict(sorted(self.reject_reasons.items())),
            "ignored_keys": dict(sorted(self.ignored.items())),
            "train_flagged": self.train_flagged,
            "settings": self.settings.as_dict(),
        }


def _read_inputs(prun: PrepRun, files: list[Path], max_line_bytes: int, fast: bool) -> None:
    """Every record of every input into ``prun`` (the hot loop).

    Plain ``{...}`` JSONL lines are decoded here; with ``fast``, clean OpenAI
    ``messages`` and ShareGPT records (only their shape's keys) take the
    inline fast path (:func:`~axpack.cleaning.fast_messages`,
    :func:`~axpack.cleaning.fast_sharegpt`) straight to :meth:`PrepRun.keep`;
    everything else goes to :meth:`PrepRun.record`.
    """
    record, keep = prun.record, prun.keep
    s = prun.settings
    system, system_text, auto = s.system, s.system_text, s.fmt == "auto"
    loads, dumps, nl = orjson.loads, orjson.dumps, orjson.OPT_APPEND_NEWLINE
    decode_error = orjson.JSONDecodeError
    for src, path in zip(prun.sources, files, strict=True):
        for batch in _progress(read_batches(path, max_line_bytes), path):
            if type(batch) is RecordBatch:
                for rec in batch.records:
                    record(src, *rec)
                continue
            lineno = batch.first - 1
            for line in batch.lines:
                lineno += 1
                # Anything but a plain '{...}' line (blank, CR, BOM, leading
                # space) takes the general path via line_record.
                if not line or line[0] != 123 or line[-1] == 13:
                    rec = line_record(line, lineno, max_line_bytes)
                    if rec is not None:
                        record(src, *rec)
                    continue
                try:
                    value = loads(line)
                except decode_error:
                    record(src, lineno, line, None, decode(line, lineno)[1])
                    continue
                if fast and type(value) is dict:
                    # fast_shape()'s rule, inline: only the shape's own keys
                    n = len(value)
                    if n == 1 and "messages" in value:
                        ex = fast_messages(value["messages"], system, system_text)
                    elif (
                        auto
                        and "conversations" in value
                        and (n == 1 or (n == 2 and "system" in value))
                    ):
                        ex = fast_sharegpt(value, system, system_text)
                    else:
                        ex = None
                    if ex is not None:
                        data = dumps(ex, option=nl)
                        key = xxh3_128_digest(data) if data.isascii() else digest(data)
                        keep(src, lineno, SFT, ex, data, key)
                        continue
                record(src, lineno, line, value, None)


def prep(
    inputs: list[str] | tuple[str, ...],
    out: str | os.PathLike,
    *,
    system: str = "keep",
    system_text: str | None = None,
    fmt: str = "auto",
    val_fraction: float = 0.0,
    near_dup: float | None = None,
    tool_roles: str = "reject",
    labels: str = "reject",
    ignore_keys: tuple[str, ...] | list[str] = (),
    replace: dict[str, str] | None = None,
    max_line_bytes: int = MAX_LINE_BYTES,
    warn: Callable[[str], None] | None = None,
    _fast: bool = True,
) -> dict[str, Any]:
    """Convert, clean, dedupe and split raw chat files into ``out``.

    Args:
        inputs: files, globs or folders, read in the given order (globs sorted).
        out: output folder (created).
        system: ``strip`` | ``keep`` | ``default`` (with ``system_text``).
        fmt: one of :data:`axpack.formats.FORMATS`; ``auto`` detects per record.
        val_fraction: 0 <= F < 1 share of kept examples sent to ``*.val.jsonl``.
        near_dup: MinHash Jaccard threshold in (0, 1]; None = exact dedupe only.
        tool_roles: ``reject`` or ``map`` ShareGPT function_call/observation.
        labels: records with a desirability ``label``: ``reject`` (default),
            ``kto`` (write them to kto.jsonl) or ``keep-true`` (label: true
            as SFT, label: false rejected).
        ignore_keys: keys to treat as inert besides
            :data:`axpack.record_keys.INERT_TOP` / ``INERT_TURN``.
        replace: ``{"name": "Juniper"}`` replaces ``{{name}}`` in every content.
        max_line_bytes: a longer JSONL line is rejected unread.
        warn: callable for one-line warnings (default: stderr).
        _fast: use the inline fast path for clean ``messages`` records
            (tests turn it off to check both paths write the same bytes).

    Returns:
        The summary dict (also written to ``out/summary.json``); rejects are
        in ``summary["totals"]["rejected"]`` (the command's ``--strict``
        reads it).

    Raises:
        AxpackError: bad option, unreadable input, unusable ``out`` (exit 1).
    """
    settings = PrepSettings(
        system,
        system_text,
        fmt,
        val_fraction,
        near_dup,
        tool_roles,
        labels,
        tuple(ignore_keys),
        dict(replace or {}),
    )
    settings.check()
    files = expand_inputs(inputs)
    with DataRun("prep", out, OUTPUTS, warn) as run:
        prun = PrepRun(run, files, settings)
        # the inline fast path (clean OpenAI messages or ShareGPT) needs: no
        # forced other format, nothing to replace, no near-dup index
        fast = _fast and fmt in ("auto", "messages") and not replace and near_dup is None
        _read_inputs(prun, files, max_line_bytes, fast)
        summary = prun.summary()
        # the whole set at once (a stale *.val.jsonl of an earlier run goes too)
        run.commit(summary)
        for name, c in prun.inputs.items():
            if not c.read:
                run.warn(f"axpack prep: warning: {name}: no records (empty file)")
    if prun.train_flagged:
        run.warn(
            f'axpack prep: note: {prun.train_flagged} SFT example(s) carry per-turn "train" flags '
            "(from loss_weight/weight/train): the config's dataset needs "
            "`message_field_training: train`, else Axolotl trains by role and ignores them"
        )
    return summary


def _progress(
    it: Iterator[LineBatch | RecordBatch], path: Path
) -> Iterator[LineBatch | RecordBatch]:
    """A tqdm bar (stderr, only on a terminal) for inputs over 8 MiB, in MiB read."""
    try:
        size = path.stat().st_size
    except OSError:
        size = 0
    if size < (8 << 20) or not sys.stderr.isatty():
        yield from it
        return
    from tqdm import tqdm

    with tqdm(
        desc=path.name,
        total=size,
        unit="B",
        unit_scale=True,
        file=sys.stderr,
        leave=False,
    ) as bar:
        for batch in it:
            if type(batch) is LineBatch:
                bar.update(sum(map(len, batch.lines)) + len(batch.lines))
            yield batch


def print_table(summary: dict[str, Any], out: Path) -> None:
    """The summary as a short rich table on stdout."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"axpack prep -> {out}", title_justify="left")
    for col in ("", "read", "kept", "duplicates", "rejected"):
        table.add_column(col, justify="left" if not col else "right")
    for name, c in summary["inputs"].items():
        table.add_row(
            name, *(str(c[k]) for k in ("read", "kept", "duplicates", "rejected"))
        )
    table.add_section()
    for kind, c in summary["outputs"].items():
        val = summary["splits"][kind]["val"]
        label = f"{kind}.jsonl" + (f" (+{val} val)" if val else "")
        table.add_row(
            label, *(str(c[k]) for k in ("read", "kept", "duplicates", "rejected"))
        )
    table.add_section()
    t = summary["totals"]
    table.add_row(
        "total",
        *(str(t[k]) for k in ("read", "kept", "duplicates", "rejected")),
        style="bold",
    )
    Console(width=110).print(table)
    if summary["reject_reasons"]:
        click.echo(
            "rejects by reason: "
            + ", ".join(f"{k} {v}" for k, v in summary["reject_reasons"].items())
        )
    if summary.get("ignored_keys"):
        click.echo(
            "inert keys ignored (records or turns): "
            + ", ".join(f"{k} {v}" for k, v in summary["ignored_keys"].items())
        )


def _parse_replace(items: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(
                f"{item!r}: expected KEY=VALUE", param_hint="--replace"
            )
        out[key] = value
    return out


@click.command("prep")
@click.argument("raw", nargs=-1, required=True)
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(file_okay=False),
    help="output folder",
)
@click.option(
    "--system",
    "system",
    default="keep",
    show_default=True,
    help="system prompts: strip | keep | default (insert --system-text where none); "
    "'default:TEXT' is accepted too",
)
@click.option("--system-text", default=None, help="system prompt for --system default")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="auto",
    show_default=True,
    help="input shape; auto detects per record",
)
@click.option(
    "--val-fraction",
    type=float,
    default=0.0,
    show_default=True,
    help="share of examples (by content hash) written to *.val.jsonl",
)
@click.option(
    "--near-dup",
    type=float,
    default=None,
    help="also drop near-duplicates at this MinHash Jaccard threshold",
)
@click.option(
    "--tool-roles",
    type=click.Choice(["reject", "map"]),
    default="reject",
    show_default=True,
    help="ShareGPT function_call/observation turns",
)
@click.option(
    "--labels",
    type=click.Choice(record_keys.LABEL_POLICIES),
    default="reject",
    show_default=True,
    help="records with a desirability label: reject | kto (write kto.jsonl for rl: kto) "
    "| keep-true (label: true as SFT, label: false rejected)",
)
@click.option(
    "--ignore-key",
    "ignore_keys",
    multiple=True,
    metavar="KEY",
    help="treat KEY (top level or per turn) as inert: ignored and counted in summary.json "
    "ignored_keys (repeatable; keys that change meaning are refused)",
)
@click.option(
    "--replace",
    "replace",
    multiple=True,
    metavar="KEY=VALUE",
    help="replace {{KEY}} in all content",
)
@click.option("--strict", is_flag=True, help="exit 3 when any record is rejected")
@click.option("--quiet", "-q", is_flag=True, help="no table")
def command(
    raw,
    out,
    system,
    system_text,
    fmt,
    val_fraction,
    near_dup,
    tool_roles,
    labels,
    ignore_keys,
    replace,
    strict,
    quiet,
):
    """Raw chat files (JSONL/JSON, globs, folders) -> OUT/{sft,dpo[,kto]}.jsonl, rejects, summary.json."""
    if system.startswith(("default:", "default=")):
        system, system_text = "default", system[8:]
    if system not in SYSTEM_POLICIES:
        raise click.BadParameter(
            f"{system!r}: expected strip, keep or default", param_hint="--system"
        )
    summary = prep(
        raw,
        out,
        system=system,
        system_text=system_text,
        fmt=fmt,
        val_fraction=val_fraction,
        near_dup=near_dup,
        tool_roles=tool_roles,
        labels=labels,
        ignore_keys=ignore_keys,
        replace=_parse_replace(replace),
    )
    if not quiet:
        print_table(summary, Path(out))
    if strict:  # everything is written; exit 3 when anything was rejected
        check_strict("prep", summary["totals"]["rejected"], "record(s)", out)
