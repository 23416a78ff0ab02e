"""Training FLOPs and wall time on a GPU (expect ±50%).

FLOPs per trained token ``(4 + 2·gc)·N`` for LoRA/QLoRA (forward, backward
to activations, recompute under checkpointing; frozen weights get no weight
gradient) or ``(6 + 2·gc)·N`` for full fine-tuning (Kaplan et al. 2020,
arXiv:2001.08361: 2N forward, 4N backward), N the decoder linears plus the
LM head; attention adds ``(3 + gc)·2·s·q·L_attn``; DPO adds a reference
forward ``2N``. Time = FLOPs / (GPUs × peak dense bf16 FLOP/s × MFU); MFU
0.54 for 16-bit LoRA and full fine-tuning, 0.41 for 4-bit QLoRA, 0.30 for
8-bit (assumed), derived from fms-acceleration's A100-80GB runs
(foundation-model-stack/fms-acceleration PR #14: 3,598 / 2,749 / 2,775
tokens/s).
"""

from __future__ import annotations

from typing import Any

from ..cards import ModelShape, card_for_id
from ..config import stage_of
from .gpus import CPU_SECONDS_PER_1K_STEP
from .settings import checkpointing

MFU_16BIT = 0.54  # fms-acceleration A100-80GB: LoRA fp16 3,598 tok/s; full FT 2,775 tok/s
MFU_4BIT = 0.41  # fms-acceleration A100-80GB: QLoRA (bnb nf4) 2,749 tok/s
MFU_8BIT = 0.30  # assumption: LLM.int8 matmuls are slower than nf4 dequant + bf16 GEMM


def flops_per_token(cfg: dict[str, Any], shape: ModelShape, row_tokens: float) -> float:
    """Training FLOPs per processed token (the module doc has the formula and sources).

    Args:
        cfg: the Axolotl config dict (adapter, checkpointing, ``rl``).
        shape: the base model's shape card.
        row_tokens: tokens per row (the attention span ``s``).
    """
    gc = 0 if checkpointing(cfg) == "off" else 1
    n = shape.compute_params()
    base = (4 + 2 * gc) * n if cfg.get("adapter") else (6 + 2 * gc) * n
    attn = (3 + gc) * 2 * row_tokens * shape.q_dim * shape.n_full
    f = base + attn
    if stage_of(cfg) == "dpo":
        f += 2 * n + 2 * row_tokens * shape.q_dim * shape.n_full  # reference forward
    return f


def mfu(cfg: dict[str, Any]) -> float:
    """Model FLOPs utilisation assumed for the config's weight precision (module doc)."""
    if cfg.get("load_in_4bit") or cfg.get("adapter") == "qlora":
        return MFU_4BIT
    if cfg.get("load_in_8bit"):
        return MFU_8BIT
    return MFU_16BIT


def cpu_flops() -> float:
    """Effective FLOP/s of the measured CPU box (SmolLM2-135M LoRA, fp32, 2 × 512 packed).

    ``1,024 tokens × flops_per_token / 9.5 s`` (:data:`CPU_SECONDS_PER_1K_STEP`,
    measured on the project's 2-core CI box).
    """
    shape = card_for_id("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert shape is not None
    demo = {"adapter": "lora", "gradient_checkpointing": False}
    return 1024 * flops_per_token(demo, shape, 512) / CPU_SECONDS_PER_1K_STEP
