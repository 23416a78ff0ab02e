"""Merge a trained LoRA adapter into its base model.

``axpack merge CONFIG`` reads the config Axolotl trained (``output_dir`` holds
the adapter) and writes the merged HF folder next to it: an SFT config merges
into ``runs/<run>/sft-merged/`` (the base for DPO, "Plan C"), a DPO config into
``runs/<run>/merged/`` (the final model).

The merge is axpack's own streaming merge (:mod:`axpack.lora_merge`): one
tensor in memory at a time, bit-identical to PEFT's ``merge_and_unload``.
Axolotl's ``merge-lora`` measured 961 MB above its import baseline where a
tensor-at-a-time merge needs ~390 MB on the same 1.1 GB model, too much for the
memory goal of a 7-9B merge on a 24 GB machine. ``--engine axolotl`` still runs
Axolotl's merge-lora for what axpack refuses (DoRA, resized embeddings).

For QLoRA configs (``adapter: qlora`` / ``load_in_4bit``) the delta is folded
into the NF4 round trip of the base by default — the weights the adapter was
trained against — and ``--qlora-base pristine`` folds it into the original
weights; the choice and its reason are printed and recorded.

The tokenizer files come from the training output, so the merged folder
carries exactly the chat template and special tokens the model was trained
with. The folder appears atomically with ``axpack-merge.json`` (a fingerprint
of the adapter, base and settings); a rerun with the same fingerprint is
skipped.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from . import env
from .config import parse_overrides, resolve, stage_of
from .errors import AxpackError
from .fsutil import atomic_dir, atomic_write_json, sha256_file
from .lora_merge import TOKENIZER_FILES, QLoraSpec, merge_lora, shard_files  # noqa: F401 (re-exported)
from .train import DONE_FILE as TRAIN_DONE

MERGE_FILE = "axpack-merge.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ENGINES = ("axpack", "axolotl")


def merged_dir_for(cfg: dict[str, Any]) -> Path:
    """``runs/<run>/sft-merged`` for an SFT config, ``runs/<run>/merged`` for DPO
    (siblings of the config's ``output_dir``)."""
    out = Path(cfg["output_dir"])
    return out.parent / ("sft-merged" if stage_of(cfg) == "sft" else "merged")


def base_model_dir(cfg: dict[str, Any]) -> Path:
    """The config's ``base_model`` as a local folder.

    A Hub id is resolved through the local Hugging Face cache
    (``snapshot_download``; with ``AXPACK_OFFLINE=1`` only the cache is read).

    Raises:
        AxpackError: not a folder and not in the cache / not downloadable.
    """
    name = str(cfg.get("base_model") or "")
    if not name:
        raise AxpackError("base_model: missing in the config; set the model the adapter was trained on")
    path = Path(name)
    if path.is_dir():
        return path
    env.apply_to_process()
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt",
                                                             "*.jinja", "*.py"]))
    except Exception as err:  # noqa: BLE001 - any hub failure is one expected line
        raise AxpackError(f"base_model: {name}: not a local folder and not available from the Hub cache "
                          f"({type(err).__name__}); download it first or point base_model at a folder") from None


def qlora_spec(cfg: dict[str, Any], base: str = "nf4") -> QLoraSpec | None:
    """The QLoRA settings Axolotl trained with, or None for a plain LoRA config.

    The pre-quantization dtype follows Axolotl's ``torch_dtype`` rule
    (``bf16: true``/``auto`` -> bfloat16, ``fp16: true`` -> float16, else
    float32); blocksize 64 and double quant are Axolotl's bitsandbytes defaults
    unless ``bnb_config_kwargs`` says otherwise.
    """
    if not (cfg.get("adapter") == "qlora" or cfg.get("load_in_4bit")):
        return None
    kw = cfg.get("bnb_config_kwargs") or {}
    bf16 = cfg.get("bf16")
    dtype = "bfloat16" if bf16 is True or bf16 == "auto" else "float16" if cfg.get("fp16") else "float32"
    return QLoraSpec(base=base, dtype=dtype, blocksize=int(kw.get("blocksize", 64)),
                     double_quant=bool(kw.get("bnb_4bit_use_double_quant", True)),
                     quant_type=str(kw.get("bnb_4bit_quant_type", "nf4")),
                     skip_modules=tuple(kw.get("llm_int8_skip_modules") or ()))


def merge_fingerprint(cfg: dict[str, Any], adapter_dir: Path, base: Path | None = None,
                      settings: str = "") -> str:
    """sha256 over the adapter (weights, config, tokenizer), the base and ``settings``.

    The base counts by its config.json/index content and each shard's name,
    size and mtime (hashing 15 GB of a 7B base on every rerun would cost a
    minute; base shards are read-only inputs, a re-download changes mtime).
    """
    h = hashlib.sha256()
    h.update(sha256_file(adapter_dir / ADAPTER_WEIGHTS).encode())
    h.update((adapter_dir / "adapter_config.json").read_bytes())
    for name in TOKENIZER_FILES:
        if (adapter_dir / name).is_file():
            h.update(name.encode() + sha256_file(adapter_dir / name).encode())
    base = base if base is not None else Path(str(cfg["base_model"]))
    if base.is_dir():
        for f in (base / "config.json", base / "model.safetensors.index.json"):
            if f.is_file():
                h.update(f.name.encode() + sha256_file(f).encode())
        for f in sorted(base.glob("*.safetensors")):
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    h.update(str(cfg["base_model"]).encode() + b"|" + settings.encode())
    return h.hexdigest()


def merge_adapter(config: str | Path, overrides: dict[str, Any] | None = None,
                  out: str | Path | None = None, force: bool = False, engine: str = "axpack",
                  qlora_base: str = "nf4") -> Path:
    """Merge the adapter trained by ``config`` into its ``base_model``.

    Args:
        config: the Axolotl YAML that was trained.
        overrides: dotted-key overrides, as given to ``axpack train``.
        out: target folder; default :func:`merged_dir_for`.
        force: merge again even when the fingerprint matches.
        engine: ``"axpack"`` (streaming, default) or ``"axolotl"`` (``axolotl merge-lora``).
        qlora_base: for QLoRA configs, ``"nf4"`` or ``"pristine"`` (see :class:`QLoraSpec`).

    Returns:
        The merged folder (safetensors + config + tokenizer).

    Raises:
        AxpackError: no adapter in ``output_dir`` (train first), training
            not finished (no ``axpack-done.json``: killed or failed), unsupported
            adapter (DoRA, resized embeddings; try ``--engine axolotl``), Axolotl failed.
    """
    if engine not in ENGINES:
        raise AxpackError(f"--engine {engine}: use one of {', '.join(ENGINES)}", 2)
    cfg = resolve(config, overrides)
    if not cfg.get("adapter"):
        raise AxpackError(f"{config}: adapter: not set; a full fine-tune has nothing to merge, use output_dir as is")
    adapter_dir = Path(cfg["output_dir"])
    if not (adapter_dir / ADAPTER_WEIGHTS).is_file():
        raise AxpackError(f"{adapter_dir}: no {ADAPTER_WEIGHTS}; train first (make {stage_of(cfg)} CONFIG={config})")
    resolved = adapter_dir / "axpack-config.yaml"
    if not resolved.is_file():
        raise AxpackError(f"{resolved}: missing; train with axpack train (it records the exact config)")
    if not (adapter_dir / TRAIN_DONE).is_file():
        # train removes it when a run starts and writes it when Axolotl exits 0: a killed or
        # failed run leaves the previous run's adapter (or a half-saved one) under the final name
        raise AxpackError(f"{adapter_dir}: training has not finished (no {TRAIN_DONE}), so its {ADAPTER_WEIGHTS} "
                          f"may be from an earlier run; finish it (make {stage_of(cfg)} CONFIG={config} RESUME=1) or train again")
    target = Path(out) if out else merged_dir_for(cfg)
    for stale in sorted(target.parent.glob(f".{target.name}.*.tmp")):
        shutil.rmtree(stale, ignore_errors=True)  # a killed merge's temp folder: GBs for a 7B model
        click.echo(f"axpack: removed {stale.name} (left by an interrupted merge)", err=True)
    base = base_model_dir(cfg)
    spec = qlora_spec(cfg, qlora_base)
    settings = f"engine={engine}|qlora={spec.__dict__ if spec else None}"
    fp = merge_fingerprint(cfg, adapter_dir, base, settings)
    stamp = target / MERGE_FILE
    if not force and stamp.is_file():
        try:
            if json.loads(stamp.read_text()).get("fingerprint") == fp:
                click.echo(f"axpack: {target} already holds this merge; skipping (--force merges again)")
                return target
        except (OSError, ValueError):
            pass
    record = {"fingerprint": fp, "config": str(config), "adapter": str(adapter_dir),
              "base_model": str(cfg["base_model"]), "base_dir": str(base)}
    t0 = time.monotonic()
    if engine == "axpack":
        with atomic_dir(target) as work:
            res = merge_lora(base, adapter_dir, work, qlora=spec, tokenizer_from=adapter_dir,
                             log=lambda m: click.echo(m, err=True))
            record.update({"method": "axpack streaming merge (tensor at a time, = PEFT merge_and_unload)",
                           "merged_tensors": len(res.merged), "replaced_tensors": len(res.replaced),
                           "nf4_roundtripped": res.roundtripped, "qlora": res.qlora,
                           "seconds": round(time.monotonic() - t0, 1)})
            atomic_write_json(work / MERGE_FILE, record)
    else:
        _merge_with_axolotl(config, resolved, adapter_dir, target, record)
    click.echo(f"axpack: merged -> {target}")
    return target


def _merge_with_axolotl(config, resolved: Path, adapter_dir: Path, target: Path, record: dict) -> None:
    """Axolotl's ``merge-lora`` (memory_efficient) into ``target``, atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        cmd = [sys.executable, "-m", "axolotl.cli.merge_lora", str(resolved),
               f"--lora_model_dir={adapter_dir}", f"--output_dir={work}"]
        click.echo("axpack: " + " ".join(cmd), err=True)
        proc = subprocess.run(cmd, env=env.child_env(), check=False)
        merged = work / "merged"
        if proc.returncode != 0 or not merged.is_dir():
            raise AxpackError(f"{config}: axolotl merge-lora exited with code {proc.returncode}; its log is above")
        for name in TOKENIZER_FILES:
            if (adapter_dir / name).is_file():
                shutil.copy2(adapter_dir / name, merged / name)
        record["method"] = "axolotl merge-lora (memory_efficient)"
        atomic_write_json(merged / MERGE_FILE, record)
        with atomic_dir(target) as final:
            final.rmdir()
            merged.rename(final)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@click.command("merge")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Same overrides as at training.")
@click.option("--out", type=click.Path(file_okay=False), help="Target folder [default: sft-merged/ or merged/].")
@click.option("--force", is_flag=True, help="Merge again even if the target holds this merge.")
@click.option("--engine", type=click.Choice(ENGINES), default="axpack", show_default=True,
              help="axpack's streaming merge, or Axolotl's merge-lora (for DoRA / resized embeddings).")
@click.option("--qlora-base", type=click.Choice(["nf4", "pristine"]), default="nf4", show_default=True,
              help="QLoRA only: fold the delta into the NF4 round trip of the base (the trained model) "
                   "or into the original weights.")
def command(config, sets, out, force, engine, qlora_base):
    """Merge CONFIG's trained LoRA adapter into its base model."""
    merge_adapter(config, parse_overrides(sets), out, force, engine, qlora_base)
