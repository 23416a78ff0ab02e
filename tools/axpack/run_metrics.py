"""Engine: the numbers a user keeps per training run, read from what the run left.

From a finished ``output_dir`` and the run's log (``axpack smoke`` keeps it
in ``smoke.log``): Axolotl's ``train_runtime``, PEFT's ``trainable params:``
line (for DPO, the saved adapter's tensor sizes), tokens/s (loss-bearing
tokens: Axolotl's ``tokens/trainable``, or TRL's ``num_tokens`` for DPO, over
``train_runtime``), the last ``loss`` / ``eval_loss`` in the latest
checkpoint's ``trainer_state.json``, and the GPU peak from Axolotl's
``memory/max_allocated`` log; :func:`table` renders rows as Markdown.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

from .runs import latest_checkpoint


def parse_metrics(out: Path, log_text: str) -> dict[str, Any]:
    """Numbers for the table from the run's output folder and its log.

    Returns keys (None when the run did not log it): train_runtime_s,
    trainable_params, all_params, tokens_per_s, final_loss, eval_loss, steps,
    gpu_peak_gib.
    """
    res: dict[str, Any] = {k: None for k in ("train_runtime_s", "trainable_params", "all_params", "tokens_per_s",
                                             "final_loss", "eval_loss", "steps", "gpu_peak_gib")}
    m = None
    for m in re.finditer(r"'train_runtime': '?([0-9.]+)", log_text):
        pass
    if m:
        res["train_runtime_s"] = float(m.group(1))
    m = re.search(r"trainable params: ([\d,]+) \|\| all params: ([\d,]+)", log_text)
    if m:
        res["trainable_params"] = int(m.group(1).replace(",", ""))
        res["all_params"] = int(m.group(2).replace(",", ""))
    ckpt = latest_checkpoint(out)
    if res["trainable_params"] is None:
        # TRL's trainers (DPO) print no PEFT summary: count the saved adapter's tensors
        adapter = next((d / "adapter_model.safetensors" for d in (out, ckpt) if d
                        and (d / "adapter_model.safetensors").is_file()), None)
        if adapter is not None:
            res["trainable_params"] = adapter_params(adapter)
    state_file = ckpt / "trainer_state.json" if ckpt else None
    if state_file and state_file.is_file():
        state = json.loads(state_file.read_text())
        hist = state.get("log_history", [])
        res["steps"] = state.get("global_step")
        losses = [h["loss"] for h in hist if "loss" in h]
        evals = [h["eval_loss"] for h in hist if "eval_loss" in h]
        # Axolotl's count of loss-bearing tokens (SFT), else TRL's num_tokens (DPO: chosen + rejected)
        counts = [h["tokens/trainable"] for h in hist if "tokens/trainable" in h] or \
            [float(h["num_tokens"]) for h in hist if "num_tokens" in h]
        gpu = [h.get("memory/max_allocated (GiB)") or 0 for h in hist]
        res["final_loss"] = losses[-1] if losses else None
        res["eval_loss"] = evals[-1] if evals else None
        if counts and res["train_runtime_s"]:
            res["tokens_per_s"] = counts[-1] / res["train_runtime_s"]
        res["gpu_peak_gib"] = max(gpu) if gpu and max(gpu) > 0 else None
    return res


def adapter_params(path: Path) -> int:
    """Number of parameters in a safetensors file (its header's shapes; no torch)."""
    with path.open("rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(size))
    total = 0
    for name, meta in header.items():
        if name != "__metadata__":
            n = 1
            for d in meta["shape"]:
                n *= d
            total += n
    return total


def _fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return "n/a"
    return format(value, spec) if spec else str(value)


def table(rows: list[dict[str, Any]]) -> str:
    """The Markdown table users keep by hand (one row per smoke run)."""
    head = ("| config | base | steps | runtime (s) | wall (s) | peak memory | trainable params "
            "| tokens/s | final loss | eval loss |\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        mem = f"{r['gpu_peak_gib']:.2f} GiB GPU" if r.get("gpu_peak_gib") else \
            f"{r['peak_rss_gib']:.2f} GiB RSS" if r.get("peak_rss_gib") else "n/a"
        params = "n/a" if r.get("trainable_params") is None else f"{r['trainable_params']:,}" + (
            f" ({100 * r['trainable_params'] / r['all_params']:.2f}%)" if r.get("all_params") else "")
        lines.append(f"| {r['config']} | {r['base_model']} | {_fmt(r.get('steps'))} "
                     f"| {_fmt(r.get('train_runtime_s'), '.1f')} | {_fmt(r.get('wall_s'), '.0f')} | {mem} "
                     f"| {params} | {_fmt(r.get('tokens_per_s'), '.1f')} | {_fmt(r.get('final_loss'), '.4f')} "
                     f"| {_fmt(r.get('eval_loss'), '.4f')} |")
    return "\n".join(lines)
