"""What an Axolotl config's keys amount to for the plan: numbers, precision, attention, LoRA targets, sharding.

Pure readers of the config dict (plus the DeepSpeed JSON a config names);
every other ``axpack.plan`` module asks these instead of reading keys.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..cards import ModelShape
from ..errors import AxpackError


def num(cfg: dict[str, Any], key: str, default: Any = None) -> Any:
    """``cfg[key]`` as a number: a YAML-1.1 string such as ``"2e-4"`` is parsed; ``None`` -> ``default``.

    Raises:
        AxpackError: the value is a string that is not a number.
    """
    value = cfg.get(key, default)
    if value is None:
        return default
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise AxpackError(f"{key}: expected a number, got {value!r}") from None
    return value


def act_bytes(cfg: dict[str, Any]) -> int:
    """Bytes per activation element: 2 for bf16/fp16 (``bf16: auto`` counts as bf16 on a GPU), else 4."""
    return 2 if (cfg.get("bf16") in (True, "auto", "true") or cfg.get("fp16") in (True, "true")) else 4


def checkpointing(cfg: dict[str, Any]) -> str:
    """``"off"``, ``"on"`` or ``"offload"`` (``gradient_checkpointing: offload|offload_disk``)."""
    gc = cfg.get("gradient_checkpointing")
    if gc in ("offload", "offload_disk"):
        return "offload"
    return "on" if gc else "off"


def attention(cfg: dict[str, Any]) -> str:
    """The attention kernel: ``attn_implementation``, else Axolotl's legacy flags, else ``"sdpa"``."""
    impl = str(cfg.get("attn_implementation") or "")
    if impl:
        return "eager" if impl == "eager" else impl
    if cfg.get("flash_attention"):
        return "flash_attention_2"
    if cfg.get("sdp_attention") or cfg.get("xformers_attention"):
        return "sdpa"
    if cfg.get("eager_attention"):
        return "eager"
    return "sdpa"  # transformers' default when nothing is set


def targeted_modules(cfg: dict[str, Any], shape: ModelShape) -> list[tuple[str, int, int, int]]:
    """The linear modules LoRA wraps, ``(name, in_features, out_features, count)``.

    From ``lora_target_linear`` (every decoder linear, as Axolotl's
    ``find_all_linear_names``: all but ``lm_head``), else
    ``lora_target_modules`` (names, or a regex string), else PEFT's default
    for llama/qwen/mistral-style models (``q_proj``, ``v_proj``).
    """
    mods = shape.linear_modules()
    if cfg.get("lora_target_linear"):
        return mods
    targets = cfg.get("lora_target_modules")
    if not targets:
        # PEFT's default for llama/qwen/mistral-style models: q_proj, v_proj
        targets = ["q_proj", "v_proj"]
    if isinstance(targets, str):
        rx = re.compile(targets)
        return [m for m in mods if rx.search(m[0])]
    names = {str(t).split(".")[-1] for t in targets}
    return [m for m in mods if m[0] in names]


def trainable_params(cfg: dict[str, Any], shape: ModelShape) -> int:
    """Trainable parameters: LoRA/DoRA (+ modules_to_save), or all text parameters without an adapter.

    ``Σ r × (in + out)`` over :func:`targeted_modules`, ``+ out`` per module
    for DoRA (``peft_use_dora``), plus ``lora_modules_to_save`` in full
    (``embed_tokens``/``lm_head``: ``vocab × hidden`` each).
    """
    if not cfg.get("adapter"):
        return shape.text_params()
    r = int(num(cfg, "lora_r", 8))
    mods = targeted_modules(cfg, shape)
    n = sum(r * (fin + fout) * cnt for _, fin, fout, cnt in mods)
    if cfg.get("peft_use_dora"):
        n += sum(fout * cnt for _, _, fout, cnt in mods)
    for name in cfg.get("lora_modules_to_save") or []:
        if name in ("embed_tokens", "lm_head"):
            n += shape.vocab * shape.hidden
    return n


def find_local(path: str) -> Path | None:
    """``path`` as an existing file, relative to the working directory or the project root."""
    from ..env import project_root

    for base in (Path.cwd(), project_root()):
        p = (base / path) if not Path(path).is_absolute() else Path(path)
        if p.is_file():
            return p
    return None


def zero_stage(cfg: dict[str, Any]) -> int:
    """The ZeRO stage a config's sharding amounts to (0: none).

    DeepSpeed: its ``zero_optimization.stage`` (the JSON the config names, or a
    ``zero<N>`` in its file name). FSDP2 (``fsdp_version: 2`` or an
    ``fsdp_config``): 3 when parameters are resharded after forward (FULL_SHARD,
    the default), else 2 (SHARD_GRAD_OP) — PyTorch FSDP docs, "Sharding strategy".
    """
    if cfg.get("fsdp_version") or cfg.get("fsdp_config"):
        fc = cfg.get("fsdp_config") or {}
        return 3 if fc.get("reshard_after_forward", True) else 2
    ds = cfg.get("deepspeed")
    if not ds:
        return 0
    if isinstance(ds, dict):
        return int((ds.get("zero_optimization") or {}).get("stage", 0))
    p = find_local(str(ds))
    if p is not None:
        try:
            return int(json.loads(p.read_text())["zero_optimization"]["stage"])
        except (ValueError, KeyError, TypeError, OSError):
            pass
    m = re.search(r"zero[_-]?(\d)", str(ds))
    return int(m.group(1)) if m else 0


def shard_name(cfg: dict[str, Any], zero: int) -> str:
    """How the plan names the sharding: ``"ZeRO-2"`` or ``"FSDP2, as ZeRO-3"``."""
    return f"FSDP2, as ZeRO-{zero}" if cfg.get("fsdp_version") or cfg.get("fsdp_config") else f"ZeRO-{zero}"
