"""Merge a trained LoRA adapter into its base model.

``axpack merge CONFIG`` reads the config Axolotl trained (``output_dir`` holds
the adapter) and writes the merged HF folder next to it: an SFT config merges
into ``runs/<run>/sft-merged/`` (the base for DPO, "Plan C"), a DPO config into
``runs/<run>/merged/`` (the final model). For now the merge itself is
Axolotl's ``merge-lora`` (memory-efficient, shard by shard); the tokenizer
files are then taken from the training output, so the merged folder carries
exactly the chat template and special tokens the model was trained with.

The folder appears atomically with ``axpack-merge.json`` (a fingerprint of the
adapter and base); a rerun with the same fingerprint is skipped.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from . import env
from .config import parse_overrides, resolve, stage_of
from .errors import AxpackError
from .fsutil import atomic_write_json, sha256_file

MERGE_FILE = "axpack-merge.json"
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
    "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
)
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def merged_dir_for(cfg: dict[str, Any]) -> Path:
    """``runs/<run>/sft-merged`` for an SFT config, ``runs/<run>/merged`` for DPO
    (siblings of the config's ``output_dir``)."""
    out = Path(cfg["output_dir"])
    return out.parent / ("sft-merged" if stage_of(cfg) == "sft" else "merged")


def merge_fingerprint(cfg: dict[str, Any], adapter_dir: Path) -> str:
    """sha256 over the adapter weights + adapter config and the base model's config.json."""
    h = hashlib.sha256()
    h.update(sha256_file(adapter_dir / ADAPTER_WEIGHTS).encode())
    h.update((adapter_dir / "adapter_config.json").read_bytes())
    base = Path(str(cfg["base_model"]))
    for name in ("config.json", "model.safetensors.index.json", "model.safetensors"):
        if (base / name).is_file():
            h.update(name.encode() + sha256_file(base / name).encode())
            break
    h.update(str(base).encode())
    return h.hexdigest()


def merge_adapter(config: str | Path, overrides: dict[str, Any] | None = None,
                  out: str | Path | None = None, force: bool = False) -> Path:
    """Merge the adapter trained by ``config`` into its ``base_model``.

    Args:
        config: the Axolotl YAML that was trained.
        overrides: dotted-key overrides, as given to ``axpack train``.
        out: target folder; default :func:`merged_dir_for`.
        force: merge again even when the fingerprint matches.

    Returns:
        The merged folder (safetensors + config + tokenizer).

    Raises:
        AxpackError: no adapter in ``output_dir`` (train first), Axolotl failed.
    """
    cfg = resolve(config, overrides)
    if not cfg.get("adapter"):
        raise AxpackError(f"{config}: adapter: not set; a full fine-tune has nothing to merge, use output_dir as is")
    adapter_dir = Path(cfg["output_dir"])
    if not (adapter_dir / ADAPTER_WEIGHTS).is_file():
        raise AxpackError(f"{adapter_dir}: no {ADAPTER_WEIGHTS}; train first (make {stage_of(cfg)} CONFIG={config})")
    resolved = adapter_dir / "axpack-config.yaml"
    if not resolved.is_file():
        raise AxpackError(f"{resolved}: missing; train with axpack train (it records the exact config)")
    target = Path(out) if out else merged_dir_for(cfg)
    fp = merge_fingerprint(cfg, adapter_dir)
    stamp = target / MERGE_FILE
    if not force and stamp.is_file():
        try:
            if json.loads(stamp.read_text()).get("fingerprint") == fp:
                click.echo(f"axpack: {target} already holds this merge; skipping (--force merges again)")
                return target
        except (OSError, ValueError):
            pass
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        cmd = [sys.executable, "-m", "axolotl.cli.merge_lora", str(resolved),
               f"--lora_model_dir={adapter_dir}", f"--output_dir={work}"]
        click.echo("axpack: " + " ".join(cmd), err=True)
        proc = subprocess.run(cmd, env=env.child_env())
        merged = work / "merged"
        if proc.returncode != 0 or not merged.is_dir():
            raise AxpackError(f"{config}: axolotl merge-lora exited with code {proc.returncode}; its log is above")
        for name in TOKENIZER_FILES:
            if (adapter_dir / name).is_file():
                shutil.copy2(adapter_dir / name, merged / name)
        atomic_write_json(merged / MERGE_FILE, {
            "fingerprint": fp, "config": str(config), "adapter": str(adapter_dir),
            "base_model": str(cfg["base_model"]), "method": "axolotl merge-lora (memory_efficient)",
        })
        if target.exists():
            shutil.rmtree(target)
        merged.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    click.echo(f"axpack: merged -> {target}")
    return target


@click.command("merge")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Same overrides as at training.")
@click.option("--out", type=click.Path(file_okay=False), help="Target folder [default: sft-merged/ or merged/].")
@click.option("--force", is_flag=True, help="Merge again even if the target holds this merge.")
def command(config, sets, out, force):
    """Merge CONFIG's trained LoRA adapter into its base model."""
    merge_adapter(config, parse_overrides(sets), out, force)
