"""``axpack stats``: what a data file means for training under one config.

    axpack stats [DATA...] --config CONFIG [--plot FILE.png] [--json FILE] [--limit N] [--trust-remote-code]

Tokenizes every example exactly as Axolotl will: the config's tokenizer
(``tokenizer_config`` or ``base_model``), its ``chat_template`` (resolved by
Axolotl's ``get_chat_template_from_config``) and, for SFT, Axolotl's own
``ChatTemplateStrategy`` with the dataset's ``roles_to_train`` /
``train_on_eos``, so "trainable tokens" are the tokens whose label is not
-100. DPO pairs (``prompt``/``chosen``/``rejected``) are measured as
prompt+chosen and prompt+rejected rendered with the same template; a pair's
length is the longer of the two, its trainable tokens the two answers.

Reports token length min/mean/p50/p90/p95/p99/max (numpy linear-interpolation
percentiles), trainable tokens, the share of examples longer than
``sequence_len`` (Axolotl drops them, or truncates with
``excess_length_strategy: truncate``), and padding efficiency = real tokens /
processed tokens for ``micro_batch_size``:

- unpacked: batches of ``micro_batch_size`` examples in a seeded random order,
  each padded to its longest example rounded up to ``pad_to_multiple_of``
  (64 unless set; to ``sequence_len`` with ``pad_to_sequence_len: true``), as
  Axolotl's causal builder configures its collator
  (``axolotl/core/builders/causal.py``);
- packed: Axolotl's own ``MultipackBatchSampler`` (the sample packing
  sampler) over the same lengths, each packed row ``sequence_len`` long.

DATA defaults to the config's ``datasets`` paths. Raw shapes (ShareGPT,
Alpaca, ...) are converted as ``axpack prep`` would; records that cannot be
converted are counted and skipped (run ``axpack prep`` to see why).
Exit 1 when the tokenizer cannot be loaded (offline and not local, or
missing: for the demo config run ``axpack demo-model`` first), when the config
says ``trust_remote_code: true`` without ``--trust-remote-code`` (as ``axpack
train``), or when ``--plot`` / ``--json`` cannot be written — the table is
printed before that error, so the measurement is not lost.
"""

from __future__ import annotations

import errno
import math
import os
import random
from pathlib import Path
from typing import Any

import click

from . import env
from .config import load_config
from .errors import AxpackError
from .formats import SFT, Reject, to_example
from .fsutil import atomic_write_bytes, atomic_write_json
from .records import expand_inputs, read_records

PERCENTILES = (50, 90, 95, 99)


def load_examples(paths: list[Path], limit: int | None = None) -> tuple[str, list[dict[str, Any]], int]:
    """Examples of the first kind found (SFT or DPO) from ``paths``, in order.

    Returns (kind, examples, skipped) where skipped counts records that are
    not JSON, not a known shape, or of the other kind.
    """
    kind: str | None = None
    out: list[dict[str, Any]] = []
    skipped = 0
    for path in paths:
        for rec in read_records(path):
            if limit is not None and len(out) >= limit:
                return kind or SFT, out, skipped
            if rec.error is not None:
                skipped += 1
                continue
            try:
                k, ex = to_example(rec.value)
            except Reject:
                skipped += 1
                continue
            kind = kind or k
            if k != kind:
                skipped += 1
                continue
            out.append(ex)
    return kind or SFT, out, skipped


def _resolve_local(p: str, config_path: Path) -> str:
    for base in (Path.cwd(), env.project_root(), config_path.parent):
        cand = base / p
        if cand.exists():
            return str(cand)
    return p


def load_tokenizer(cfg: dict[str, Any], config_path: Path, trust_remote_code: bool = False):
    """The config's tokenizer (``tokenizer_config`` or ``base_model``).

    A config with ``trust_remote_code: true`` is refused unless
    ``trust_remote_code`` (the ``--trust-remote-code`` flag) is given too, as
    ``axpack train`` does: the tokenizer's ``auto_map`` would import and run
    Python files shipped with the model.

    Raises:
        AxpackError: ``trust_remote_code: true`` without the flag; not found
            locally and not loadable from the Hub (or offline).
    """
    name = cfg.get("tokenizer_config") or cfg.get("base_model")
    if not name:
        raise AxpackError(f"{config_path}: no base_model or tokenizer_config to load a tokenizer from")
    remote = bool(cfg.get("trust_remote_code"))
    if remote and not trust_remote_code:
        raise AxpackError(
            f"{config_path}: trust_remote_code: true runs Python code shipped with the model's tokenizer; "
            "read that code, then pass --trust-remote-code (or remove the key)"
        )
    env.apply_to_process()
    from transformers import AutoTokenizer

    path = _resolve_local(str(name), config_path)
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=remote)
    except (OSError, ValueError) as err:
        hint = "run `axpack demo-model` (make setup) first" if "smollm2" in str(name) else \
            "check the path, or unset AXPACK_OFFLINE to download it"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise AxpackError(f"{config_path}: base_model {name}: cannot load its tokenizer ({first[:200]}); {hint}") \
            from None


def _ids(result: Any) -> list[int]:
    if isinstance(result, dict) or hasattr(result, "keys"):
        result = result["input_ids"]
    return list(result)


def measure(kind: str, examples: list[dict[str, Any]], cfg: dict[str, Any], tokenizer) -> tuple[list[int], list[int]]:
    """(token length, trainable tokens) per example, tokenized as Axolotl does."""
    from axolotl.utils.chat_templates import get_chat_template_from_config
    from axolotl.utils.dict import DictDefault

    datasets = cfg.get("datasets") or [{}]
    ds_cfg = dict(datasets[0]) if isinstance(datasets[0], dict) else {}
    lengths: list[int] = []
    trainable: list[int] = []
    if kind == SFT:
        from axolotl.prompt_strategies.chat_template import StrategyLoader

        ds = {
            "type": "chat_template",
            "field_messages": "messages",
            "roles_to_train": ds_cfg.get("roles_to_train", ["assistant"]),
            "train_on_eos": ds_cfg.get("train_on_eos", "turn"),
        }
        for key in ("chat_template", "chat_template_jinja", "train_on_eot", "drop_system_message", "roles"):
            if ds_cfg.get(key) is not None:
                ds[key] = ds_cfg[key]
        scfg = DictDefault({
            "sequence_len": 1 << 30,  # measure full lengths; truncation is judged below
            "chat_template": cfg.get("chat_template"),
            "chat_template_jinja": cfg.get("chat_template_jinja"),
            "chat_template_kwargs": cfg.get("chat_template_kwargs") or {},
            "train_on_inputs": bool(cfg.get("train_on_inputs")),
            "eot_tokens": cfg.get("eot_tokens"),
        })
        strategy = StrategyLoader()(tokenizer, scfg, ds)
        for ex in examples:
            res = strategy.tokenize_prompt(ex)
            lengths.append(len(res["input_ids"]))
            trainable.append(sum(1 for x in res["labels"] if x != -100))
        return lengths, trainable
    template = get_chat_template_from_config(cfg=DictDefault(cfg), ds_cfg=ds_cfg, tokenizer=tokenizer)
    kwargs = cfg.get("chat_template_kwargs") or {}
    for ex in examples:
        prompt = _ids(tokenizer.apply_chat_template(ex["prompt"], chat_template=template, tokenize=True,
                                                    add_generation_prompt=True, **kwargs))
        full = [_ids(tokenizer.apply_chat_template(ex["prompt"] + ex[k], chat_template=template, tokenize=True,
                                                   **kwargs)) for k in ("chosen", "rejected")]
        lengths.append(max(len(f) for f in full))
        trainable.append(sum(max(len(f) - len(prompt), 0) for f in full))
    return lengths, trainable


def _pad_multiple(cfg: dict[str, Any]) -> int:
    """Unpacked padding target as Axolotl's causal builder sets it."""
    seq_len = int(cfg.get("sequence_len") or 512)
    multiple = int(cfg.get("pad_to_multiple_of") or 64)
    if cfg.get("pad_to_sequence_len"):
        return multiple * math.ceil(seq_len / multiple)
    if cfg.get("pad_to_sequence_len") is None:
        return multiple
    return 1


def padding_unpacked(lengths: list[int], mbs: int, multiple: int, seed: int) -> float:
    """real / processed tokens for batches of ``mbs`` in a seeded random
    order, each padded to its longest example rounded up to ``multiple``
    (with ``pad_to_sequence_len`` the multiple is the padded sequence_len)."""
    if not lengths:
        return 0.0
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    processed = 0
    for i in range(0, len(order), mbs):
        batch = [lengths[j] for j in order[i:i + mbs]]
        processed += len(batch) * multiple * math.ceil(max(batch) / multiple)
    return sum(lengths) / processed


def padding_packed(lengths: list[int], cfg: dict[str, Any], mbs: int, seed: int) -> tuple[float, int]:
    """(real / processed tokens, packed rows) with Axolotl's MultipackBatchSampler."""
    if not lengths:
        return 0.0, 0
    import numpy as np
    import torch
    from axolotl.utils.samplers.multipack import MultipackBatchSampler
    from torch.utils.data import RandomSampler, SequentialSampler

    seq_len = int(cfg.get("sequence_len") or 512)
    sequential = bool(cfg.get("sample_packing_sequentially"))
    sampler = SequentialSampler(range(len(lengths))) if sequential else RandomSampler(
        range(len(lengths)), generator=torch.Generator().manual_seed(seed))
    mp = MultipackBatchSampler(
        sampler, batch_size=mbs, batch_max_len=seq_len, lengths=np.array(lengths),
        bin_size=int(cfg.get("sample_packing_bin_size") or 200),
        group_size=int(cfg.get("sample_packing_group_size") or 100_000),
        sequential=sequential, num_processes=1, drop_last=False, seed=seed,
    )
    batches = mp.generate_batches(set_stats=True)
    rows = sum(len(b) for b in batches)
    padded = 64 * math.ceil(seq_len / 64)  # pad_to_sequence_len is forced on with packing
    used = sum(lengths[i] for b in batches for row in b for i in row)
    return used / (rows * padded), rows


def summarize(lengths: list[int], trainable: list[int], cfg: dict[str, Any], kind: str = SFT) -> dict[str, Any]:
    """The numbers of the report (see the module docstring for definitions);
    packing is measured for SFT only (DPO pairs are not packed)."""
    import numpy as np

    seq_len = int(cfg.get("sequence_len") or 512)
    mbs = int(cfg.get("micro_batch_size") or 1)
    seed = int(cfg.get("seed") or 42)
    strategy = cfg.get("excess_length_strategy") or "drop"
    arr = np.array(lengths or [0])
    tr = np.array(trainable or [0])

    def dist(a):
        return {"min": int(a.min()), "mean": round(float(a.mean()), 1),
                **{f"p{p}": round(float(np.percentile(a, p)), 1) for p in PERCENTILES}, "max": int(a.max())}

    over = int((arr > seq_len).sum()) if lengths else 0
    fit = [min(n, seq_len) for n in lengths] if strategy == "truncate" else [n for n in lengths if n <= seq_len]
    packed, rows = padding_packed(fit, cfg, mbs, seed) if kind == SFT else (None, None)
    return {
        "examples": len(lengths),
        "tokens": dist(arr),
        "trainable": dist(tr),
        "tokens_total": int(arr.sum()) if lengths else 0,
        "trainable_total": int(tr.sum()) if lengths else 0,
        "sequence_len": seq_len,
        "over_sequence_len": over,
        "over_sequence_len_pct": round(100.0 * over / len(lengths), 2) if lengths else 0.0,
        "excess_length_strategy": strategy,
        "micro_batch_size": mbs,
        "pad_to_multiple_of": _pad_multiple(cfg),
        "padding_efficiency_unpacked": round(padding_unpacked(fit, mbs, _pad_multiple(cfg), seed), 4),
        "padding_efficiency_packed": None if packed is None else round(packed, 4),
        "packed_rows": rows,
        "sample_packing": bool(cfg.get("sample_packing")),
    }


def markdown(s: dict[str, Any], kind: str, data: list[str], config: str) -> str:
    """The report as a Markdown table."""
    cols = ["min", "mean", "p50", "p90", "p95", "p99", "max"]
    pct = 100.0 * s["trainable_total"] / s["tokens_total"] if s["tokens_total"] else 0.0
    fate = "truncated" if s["excess_length_strategy"] == "truncate" else "dropped"
    lines = [
        f"### axpack stats: {', '.join(data)} under `{config}` ({kind.upper()}, {s['examples']} examples)",
        "",
        "| tokens per example | " + " | ".join(cols) + " |",
        "|---|" + "---:|" * len(cols),
        "| all | " + " | ".join(str(s["tokens"][c]) for c in cols) + " |",
        "| trainable | " + " | ".join(str(s["trainable"][c]) for c in cols) + " |",
        "",
        "| | |",
        "|---|---:|",
        f"| tokens, total | {s['tokens_total']:,} |",
        f"| trainable tokens, total | {s['trainable_total']:,} ({pct:.1f}%) |",
        (f"| longer than sequence_len {s['sequence_len']} ({fate} by Axolotl) | {s['over_sequence_len']} "
         f"({s['over_sequence_len_pct']:.1f}%) |"),
        (f"| padding efficiency, unpacked (micro_batch_size {s['micro_batch_size']}, "
         f"pad to multiple of {s['pad_to_multiple_of']}) | {100 * s['padding_efficiency_unpacked']:.1f}% |"),
    ]
    if s["padding_efficiency_packed"] is not None:
        using = "in use" if s["sample_packing"] else "not enabled in this config"
        lines.append(f"| padding efficiency, packed ({s['packed_rows']} rows of {s['sequence_len']}; "
                     f"sample_packing {using}) | {100 * s['padding_efficiency_packed']:.1f}% |")
    return "\n".join(lines) + "\n"


def plot(lengths: list[int], seq_len: int, path: Path, title: str) -> None:
    """Histogram of token lengths with the sequence_len line (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import io

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.hist(lengths, bins=min(60, max(10, len(set(lengths)))), color="#4c72b0")
    ax.axvline(seq_len, color="#c44e52", linestyle="--", label=f"sequence_len = {seq_len}")
    ax.set_xlabel("tokens per example")
    ax.set_ylabel("examples")
    ax.set_title(title, fontsize=10)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})  # no version stamp: stable bytes
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def stats(data: list[str] | tuple[str, ...], config: str | os.PathLike, *, plot_path: str | None = None,
          json_path: str | None = None, limit: int | None = None,
          trust_remote_code: bool = False) -> tuple[dict[str, Any], str]:
    """Measure ``data`` under ``config``, then write ``plot_path`` / ``json_path``;
    return (summary dict, Markdown).

    Raises:
        AxpackError: missing config/data, no usable example, tokenizer not
            loadable (or ``trust_remote_code`` without the flag), an output not writable.
    """
    s, md, lengths, title = measure_files(data, config, limit=limit, trust_remote_code=trust_remote_code)
    write_outputs(s, lengths, title, plot_path=plot_path, json_path=json_path)
    return s, md


def measure_files(data: list[str] | tuple[str, ...], config: str | os.PathLike, *, limit: int | None = None,
                  trust_remote_code: bool = False) -> tuple[dict[str, Any], str, list[int], str]:
    """Measure ``data`` under ``config``; write nothing.

    Returns:
        (summary dict, Markdown, token length per example, histogram title).

    Raises:
        AxpackError: missing config/data, no usable example, tokenizer not loadable.
    """
    config_path = Path(config)
    cfg = load_config(config_path)
    if not data:
        data = [str(d["path"]) for d in cfg.get("datasets") or [] if isinstance(d, dict) and d.get("path")]
        if not data:
            raise AxpackError(f"{config_path}: no datasets[].path; pass DATA files")
    files = expand_inputs(list(data))
    kind, examples, skipped = load_examples(files, limit)
    if not examples:
        raise AxpackError(f"{', '.join(map(str, data))}: no usable SFT or DPO example; run axpack prep on it first")
    tokenizer = load_tokenizer(cfg, config_path, trust_remote_code)
    lengths, trainable = measure(kind, examples, cfg, tokenizer)
    s = summarize(lengths, trainable, cfg, kind)
    s["kind"] = kind
    s["skipped_records"] = skipped
    md = markdown(s, kind, [str(f) for f in files], str(config_path))
    if skipped:
        md += f"\n{skipped} record(s) skipped (not JSON, unknown shape, or not {kind.upper()}).\n"
    return s, md, lengths, f"{', '.join(f.name for f in files)} - {config_path.name}"


def _why(path: Path, err: OSError) -> str:
    """Why ``path`` could not be written, in words (mkdir under a file says only "File exists")."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                return f"{parent} is a file, not a folder"
            break
    return err.strerror or type(err).__name__


def write_outputs(s: dict[str, Any], lengths: list[int], title: str, *, plot_path: str | None = None,
                  json_path: str | None = None) -> None:
    """Write the histogram PNG and/or the JSON numbers (each atomically; one
    that cannot be written does not stop the other).

    Raises:
        AxpackError: an output path cannot be written (names each such option and path).
    """
    failed: list[str] = []
    for option, path, write in (
            ("--json", json_path, lambda p: atomic_write_json(p, s)),
            ("--plot", plot_path, lambda p: plot(lengths, s["sequence_len"], p, title))):
        if not path:
            continue
        try:
            write(Path(path))
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise  # the CLI's one line for a full disk
            failed.append(f"{option} {path}: cannot write it ({_why(Path(path), err)}); "
                          "choose a path in a writable folder")
    if failed:
        raise AxpackError("; ".join(failed))


@click.command("stats")
@click.argument("data", nargs=-1)
@click.option("--config", "config", required=True, type=click.Path(dir_okay=False), help="the Axolotl config")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="write a length histogram PNG")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="write the numbers as JSON")
@click.option("--limit", type=click.IntRange(min=1), help="measure only the first N examples")
@click.option("--trust-remote-code", is_flag=True,
              help="Allow a config with trust_remote_code: true (runs the tokenizer's own Python files).")
def command(data, config, plot_path, json_path, limit, trust_remote_code):
    """Token lengths, trainable tokens, truncation and padding/packing efficiency of DATA under CONFIG."""
    s, md, lengths, title = measure_files(data, config, limit=limit, trust_remote_code=trust_remote_code)
    click.echo(md, nl=False)  # first: an unwritable --plot/--json must not cost the measured table
    write_outputs(s, lengths, title, plot_path=plot_path, json_path=json_path)
    if plot_path:
        click.echo(f"\nhistogram: {plot_path}")


