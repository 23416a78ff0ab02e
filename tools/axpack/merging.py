"""Engine: merge a trained run's LoRA adapter into its base model (``axpack merge``'s work).

:func:`run_merge` finds the adapter (``output_dir`` of the trained config),
refuses an unfinished run, resolves the base to a local folder, fingerprints
adapter + base + settings, skips a merge that is already current and
otherwise writes the merged folder atomically, stamped with
:data:`axpack.runs.MERGE_FILE`. The tensor work is
:func:`axpack.lora_merge.merge_lora` (streaming, bit-identical to PEFT's
``merge_and_unload``); ``engine="axolotl"`` runs Axolotl's ``merge-lora``
instead. Progress lines go to the ``log`` callback (default: this module's
:mod:`logging` logger).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import env
from .config import resolve, stage_of
from .errors import AxpackError
from .fsutil import atomic_dir, atomic_write_json, remove_stale_temps, sha256_file
from .lora_merge import TOKENIZER_FILES, QLoraSpec, merge_lora
from .runs import ADAPTER_WEIGHTS, DONE_FILE, MERGE_FILE, RESOLVED_FILE, merged_dir_for

ENGINES = ("axpack", "axolotl")
LOG = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class Merged:
    """What :func:`run_merge` did: the merged folder, and whether it was already current."""

    path: Path
    skipped: bool


def _adapter_dir(config: str | Path, cfg: dict[str, Any]) -> Path:
    """The trained ``output_dir``, checked to hold a finished run's adapter.

    Raises:
        AxpackError: full fine-tune, no adapter weights, no resolved config,
            or no :data:`axpack.runs.DONE_FILE` (training killed or failed).
    """
    if not cfg.get("adapter"):
        raise AxpackError(f"{config}: adapter: not set; a full fine-tune has nothing to merge, use output_dir as is")
    adapter_dir = Path(cfg["output_dir"])
    if not (adapter_dir / ADAPTER_WEIGHTS).is_file():
        raise AxpackError(f"{adapter_dir}: no {ADAPTER_WEIGHTS}; train first (make {stage_of(cfg)} CONFIG={config})")
    resolved = adapter_dir / RESOLVED_FILE
    if not resolved.is_file():
        raise AxpackError(f"{resolved}: missing; train with axpack train (it records the exact config)")
    if not (adapter_dir / DONE_FILE).is_file():
        # train removes it when a run starts and writes it when Axolotl exits 0: a killed or
        # failed run leaves the previous run's adapter (or a half-saved one) under the final name
        raise AxpackError(f"{adapter_dir}: training has not finished (no {DONE_FILE}), so its {ADAPTER_WEIGHTS} "
                          f"may be from an earlier run; finish it (make {stage_of(cfg)} CONFIG={config} RESUME=1) "
                          "or train again")
    return adapter_dir


def _is_current(stamp: Path, fp: str) -> bool:
    try:
        return json.loads(stamp.read_text()).get("fingerprint") == fp
    except (OSError, ValueError):
        return False


def run_merge(config: str | Path, overrides: dict[str, Any] | None = None,
              out: str | Path | None = None, force: bool = False, engine: str = "axpack",
              qlora_base: str = "nf4", log: Callable[[str], None] | None = None) -> Merged:
    """Merge the adapter trained by ``config`` into its ``base_model``.

    Args:
        config: the Axolotl YAML that was trained.
        overrides: dotted-key overrides, as given to ``axpack train``.
        out: target folder; default :func:`axpack.runs.merged_dir_for`.
        force: merge again even when the fingerprint matches.
        engine: ``"axpack"`` (streaming, default) or ``"axolotl"`` (``axolotl merge-lora``).
        qlora_base: for QLoRA configs, ``"nf4"`` or ``"pristine"`` (see :class:`QLoraSpec`).
        log: progress lines (stale temp folders removed, QLoRA choice, shards); default: logging.

    Returns:
        :class:`Merged`: the merged folder (safetensors + config + tokenizer) and
        whether it already held this merge (nothing written).

    Raises:
        AxpackError: unknown engine (exit 2), no adapter in ``output_dir`` (train first),
            training not finished (no ``axpack-done.json``: killed or failed), unsupported
            adapter (DoRA, resized embeddings; try ``--engine axolotl``), Axolotl failed.
    """
    log = log or LOG.info
    if engine not in ENGINES:
        raise AxpackError(f"--engine {engine}: use one of {', '.join(ENGINES)}", 2)
    cfg = resolve(config, overrides)
    adapter_dir = _adapter_dir(config, cfg)
    target = Path(out) if out else merged_dir_for(cfg)
    for stale in remove_stale_temps(target.parent, target.name):  # a killed merge's temp folder: GBs for a 7B model
        log(f"axpack: removed {stale.name} (left by an interrupted merge)")
    base = base_model_dir(cfg)
    spec = qlora_spec(cfg, qlora_base)
    settings = f"engine={engine}|qlora={spec.__dict__ if spec else None}"
    fp = merge_fingerprint(cfg, adapter_dir, base, settings)
    if not force and _is_current(target / MERGE_FILE, fp):
        return Merged(target, skipped=True)
    record = {"fingerprint": fp, "config": str(config), "adapter": str(adapter_dir),
              "base_model": str(cfg["base_model"]), "base_dir": str(base)}
    t0 = time.monotonic()
    if engine == "axpack":
        with atomic_dir(target) as work:
            res = merge_lora(base, adapter_dir, work, qlora=spec, tokenizer_from=adapter_dir, log=log)
            record.update({"method": "axpack streaming merge (tensor at a time, = PEFT merge_and_unload)",
                           "merged_tensors": len(res.merged), "replaced_tensors": len(res.replaced),
                           "nf4_roundtripped": res.roundtripped, "qlora": res.qlora,
                           "seconds": round(time.monotonic() - t0, 1)})
            atomic_write_json(work / MERGE_FILE, record)
    else:
        _merge_with_axolotl(config, adapter_dir / RESOLVED_FILE, adapter_dir, target, record, log)
    return Merged(target, skipped=False)


def merge_adapter(config: str | Path, overrides: dict[str, Any] | None = None,
                  out: str | Path | None = None, force: bool = False, engine: str = "axpack",
                  qlora_base: str = "nf4", log: Callable[[str], None] | None = None) -> Path:
    """:func:`run_merge`, logging its outcome; returns the merged folder.

    For callers that only need the folder (``axpack export``, the twin chain).
    Raises what :func:`run_merge` raises.
    """
    log = log or LOG.info
    res = run_merge(config, overrides, out, force, engine, qlora_base, log)
    log(f"axpack: {res.path} already holds this merge; skipping (--force merges again)" if res.skipped
        else f"axpack: merged -> {res.path}")
    return res.path


def _merge_with_axolotl(config, resolved: Path, adapter_dir: Path, target: Path, record: dict,
                        log: Callable[[str], None]) -> None:
    """Axolotl's ``merge-lora`` (memory_efficient) into ``target``, atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        cmd = [sys.executable, "-m", "axolotl.cli.merge_lora", str(resolved),
               f"--lora_model_dir={adapter_dir}", f"--output_dir={work}"]
        log("axpack: " + " ".join(cmd))
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
