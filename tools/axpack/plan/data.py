"""How many examples a run sees and how long they are.

Examples: ``--num-examples``; else ``--data DIR``: ``DIR/summary.json``
``outputs.<sft|dpo>.kept`` (stage by the config's ``rl`` key), else the
records of ``DIR/<stage>.jsonl``; else the records of the config's local
``datasets`` files. (``val_set_size`` is applied later, by
:func:`axpack.plan.compute.compute_plan`.) Tokens per example: see
:mod:`axpack.plan.tokens`; up to :data:`MAX_TOKENIZED` records per file are
sampled.

Records come through :func:`iter_records`, a thin wrapper over
:func:`axpack.records.read_records` (prep's reader), so plan counts what prep accepts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..cards import ModelShape
from ..config import dataset_entries, stage_of
from ..errors import AxpackError
from ..formatting import fmt_int
from .settings import find_local
from .tokens import TokenCounter, estimate_tokens, find_tokenizer

# records tokenized per file; a larger file is sampled at an even stride (the mean of
# 1,000 draws is within ~2% for length spreads seen in chat data; BPE encoding is
# the slow part: ~0.7 s per 1,000 conversations on a 2-core box, bench/bench_review.py)
MAX_TOKENIZED = 1000


@dataclass
class DataInfo:
    """How many examples a run sees and how long they are.

    ``examples`` is ``None`` when unknown; ``mean_tokens`` is tokens per
    example (per pair for DPO: prompt twice + chosen + rejected) or ``None``.
    """

    examples: int | None
    source: str
    mean_tokens: float | None = None
    tokens_source: str = ""


def iter_records(path: Path) -> Iterator[Any]:
    """Every record's value of a JSONL/JSON file, in file order, read by
    :func:`axpack.records.read_records` (the reader prep uses: BOM, CRLF, arrays,
    pretty-printed objects), so plan counts what prep accepts.

    Raises:
        AxpackError: a record that does not decode, with file:line.
    """
    from ..records import read_records

    for rec in read_records(path):
        if rec.error is not None:
            raise AxpackError(f"{path}:{rec.line}: {rec.error.reason}; fix it or pass --num-examples")
        yield rec.value


def read_sample(path: Path, want: bool) -> tuple[int, list[Any]]:
    """(record count, up to :data:`MAX_TOKENIZED` records at an even stride; none unless ``want``).

    Raises:
        AxpackError: from :func:`iter_records`.
    """
    rows = list(iter_records(path))
    stride = max(1, math.ceil(len(rows) / MAX_TOKENIZED))
    return len(rows), (rows[::stride] if want else [])


def dataset_files(cfg: dict[str, Any]) -> list[str]:
    """The ``path`` of every ``datasets`` entry of the config (as written; ``test_datasets`` not counted)."""
    return [str(ds["path"]) for _, _, ds in dataset_entries(cfg, ("datasets",)) if ds.get("path")]


def _mean_tokens(records: list[Any], stage: str, counter: TokenCounter | None) -> float | None:
    if not records:
        return None
    if counter is not None:
        return counter.mean_tokens(records, stage)
    return sum(estimate_tokens(r, stage) for r in records) / len(records)


def _token_counter(cfg: dict[str, Any], shape: ModelShape | None, tokenize: bool,
                   tokenizer_dir: str | Path | None) -> tuple[TokenCounter | None, str]:
    """The counter to use and how the plan names it (``--tokenizer``, a local tokenizer, or chars/4).

    Raises:
        AxpackError: ``tokenizer_dir`` has no usable tokenizer.
    """
    if tokenizer_dir is not None:
        try:
            counter = TokenCounter(Path(tokenizer_dir))
        except Exception as err:  # noqa: BLE001 - report any unreadable tokenizer as one line
            raise AxpackError(f"--tokenizer {tokenizer_dir}: no usable tokenizer.json + chat template ({err}); "
                              "pass a Hugging Face model folder") from None
        return counter, f"tokenizer + chat template of {tokenizer_dir}"
    folder = find_tokenizer(cfg, shape) if tokenize else None
    counter = None
    if folder is not None:
        try:
            counter = TokenCounter(folder)
        except Exception:  # noqa: BLE001 - unreadable tokenizer/template: heuristic
            counter = None
    if counter is None:
        return None, "≈ chars/4 + 4/message"
    return counter, f"tokenizer + chat template of {folder}"


def _from_data_dir(data_dir: str | Path, stage: str) -> tuple[DataInfo, list[Path]]:
    """Examples from prep's output folder: ``summary.json`` kept count, else the stage's JSONL.

    Raises:
        AxpackError: not a folder, or neither file is there.
    """
    d = Path(data_dir)
    if not d.is_dir():
        raise AxpackError(f"--data {d}: not a folder; pass the prep output folder (e.g. runs/<run>/data)")
    jsonl = d / f"{stage}.jsonl"
    summary = d / "summary.json"
    kept = None
    if summary.is_file():
        try:
            kept = int(json.loads(summary.read_text(encoding="utf-8"))["outputs"][stage]["kept"])
        except (ValueError, KeyError, TypeError):
            kept = None
    if kept is not None:
        info = DataInfo(kept, f"{summary} outputs.{stage}.kept")
    elif jsonl.is_file():
        info = DataInfo(None, f"lines in {jsonl}")
    else:
        raise AxpackError(
            f"--data {d}: has neither summary.json nor {stage}.jsonl; "
            f"pass the folder `axpack prep` wrote (runs/<run>/data)"
        )
    return info, ([jsonl] if jsonl.is_file() else [])


def _from_config(cfg: dict[str, Any]) -> tuple[DataInfo, list[Path]]:
    """Examples from the config's local ``datasets`` files; no files when one is not local JSON/JSONL."""
    names = dataset_files(cfg)
    if not names:
        return DataInfo(None, "unknown: the config lists no local datasets"), []
    files = []
    for f in names:
        p = find_local(f)
        if p is None or p.suffix not in (".jsonl", ".json"):
            if p is None and not Path(f).suffix:
                return DataInfo(None, f"unknown: {f} is not a local file (a Hub dataset?); pass --num-examples"), []
            why = "not found" if p is None else "not JSON/JSONL"
            return DataInfo(None, f"unknown: {f} {why} (run `axpack prep`, or pass --data/--num-examples)"), []
        files.append(p)
    return DataInfo(None, "lines in " + ", ".join(names)), files


def count_examples(
    cfg: dict[str, Any],
    data_dir: str | Path | None = None,
    num_examples: int | None = None,
    tokens_per_example: float | None = None,
    shape: ModelShape | None = None,
    tokenize: bool = True,
    tokenizer_dir: str | Path | None = None,
) -> DataInfo:
    """Examples and mean tokens for a config (the module doc has the order of sources).

    Tokens come from ``tokens_per_example``, else (``tokenize``) the
    tokenizer and chat template in ``tokenizer_dir`` or found locally
    (:func:`axpack.plan.tokens.find_tokenizer`), else the chars/4 heuristic.

    Raises:
        AxpackError: ``data_dir`` is not a folder, ``tokenizer_dir`` has no
            usable tokenizer, or a data file is malformed.
    """
    stage = stage_of(cfg)
    want = tokens_per_example is None
    counter, how = _token_counter(cfg, shape, tokenize, tokenizer_dir) if want else (None, "")
    if num_examples is not None:
        info, files = DataInfo(int(num_examples), "--num-examples"), []
    elif data_dir is not None:
        info, files = _from_data_dir(data_dir, stage)
    else:
        info, files = _from_config(cfg)
        if not files:
            return info
    total = sampled = 0
    tok = 0.0
    for p in files:
        n, recs = read_sample(p, want)
        total += n
        sampled += len(recs)
        tok += (_mean_tokens(recs, stage, counter) or 0.0) * n
    if info.examples is None:
        info.examples = total
    if want and total:
        info.mean_tokens = tok / total
        info.tokens_source = how + (f" ({fmt_int(sampled)} of {fmt_int(total)} sampled)" if sampled < total else "")
    if tokens_per_example is not None:
        info.mean_tokens = float(tokens_per_example)
        info.tokens_source = "--tokens-per-example"
    return info
