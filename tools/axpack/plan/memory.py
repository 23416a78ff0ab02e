"""Peak GPU memory of one training process (GiB = 2**30 bytes).

``weights + adapter/optimizer + stored activations + max(logits, one-layer
recompute) + backward buffers`` is the peak *allocated*; what ``nvidia-smi``
shows is ``weights + (peak − weights) × 1.38 + 0.5 GiB``: the caching
allocator holds freed blocks of what churns every step (activations, logits,
gradients: fms-acceleration's four runs give 1.34–1.39 for that factor, QLoRA
and LoRA alike), not of the weights loaded once; 0.5 GiB is the CUDA context.
A fixed ×1.25 on the whole peak put the ops recipe's 8 GB run (6.1 GiB
allocated, 5.2 of it weights) at 8.1 GiB, above the card it ran on.

Each term's formula and source sits on the function that computes it
(:func:`weight_bytes`, :func:`trainable_state_bytes`, :func:`activation_bytes`,
:func:`logit_bytes`). T = micro rows × sequence_len, rows = micro × 2 for DPO.

Checked against measured runs (tests/test_plan.py): fms-acceleration's
A100-80GB benchmark (foundation-model-stack/fms-acceleration PR #14,
scripts/benchmarks/refs/a100_80gb.csv: Mistral-7B, r 16 on q/k/v/o, 4 × 4096
tokens, gradient checkpointing, flash attention): QLoRA peak 14.8 GiB
allocated / 19.5 GiB reserved, LoRA fp16 24.3 / 29.0 GiB; and users' reports
(QLoRA 7B on an A100 40 GB "~18–22 GB").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..cards import ModelShape
from ..config import stage_of
from ..formatting import fmt_int, fmt_params
from .gpus import GIB
from .settings import (
    act_bytes,
    attention,
    checkpointing,
    num,
    shard_name,
    targeted_modules,
    trainable_params,
    zero_stage,
)

NF4_BYTES = 0.5 + (8 / 64 + 32 / (64 * 256)) / 8  # 0.516: NF4 + double-quantized absmax
# nvidia-smi = weights + (peak allocated − weights) × 1.38 + 0.5 GiB: the allocator's
# cache grows with what is allocated and freed every step (activations, logits,
# gradients), not with the weights loaded once; fms-acceleration's four runs give
# 1.34–1.39 for that factor (QLoRA and fp16 LoRA, micro 4 and 8)
RESERVED_FACTOR = 1.38
CUDA_CONTEXT_GIB = 0.5
LOGIT_BYTES = 12

EIGHT_BIT_OPTIMIZERS = ("8bit", "8_bit", "adamw_bnb_8bit", "paged_adamw_8bit", "ademamix_8bit")
CHUNKED_LOSS_KEYS = ("cut_cross_entropy", "liger_fused_linear_cross_entropy", "chunked_cross_entropy")
ATTN_NAMES = {"q_proj", "k_proj", "v_proj", "o_proj"}
LINEAR_ATTN_NAMES = {"in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a", "out_proj"}
MLP_NAMES = ("gate_proj", "up_proj", "down_proj")


@dataclass
class Memory:
    """Estimated GPU memory of one training process, GiB (see the module doc)."""

    weights: float
    adapter: float
    stored: float
    transient: float
    logits: float
    buffers: float
    peak_alloc: float
    reserved: float
    tokens: int  # tokens in one micro-batch (T)
    how: dict[str, str] = field(default_factory=dict)


def weight_bytes(cfg: dict[str, Any], shape: ModelShape, world: int) -> tuple[float, str]:
    """Bytes of the loaded weights on one GPU, and the arithmetic.

    4-bit NF4 with double quantization 0.516 B/param on every decoder linear
    (0.5 + (8/64 + 32/(64·256))/8, Dettmers et al. 2023, arXiv:2305.14314 §3),
    8-bit 1 B/param; embeddings, LM head and norms stay 16-bit (Axolotl's
    patched ``prepare_model_for_kbit_training`` leaves embeddings alone);
    full/LoRA weights at 2 B (bf16/fp16) or 4 B. A loaded vision tower
    (``processor_type``) adds its parameters; ZeRO-3 / FSDP FULL_SHARD divide
    by the world size.
    """
    a = act_bytes(cfg)
    small = shape.embedding_params() + shape.small_params()
    lin = shape.linear_params()
    if cfg.get("load_in_4bit") or cfg.get("adapter") == "qlora":
        w = lin * NF4_BYTES + small * a
        how = (f"{fmt_params(lin)} linear × {NF4_BYTES:.3f} B (NF4 + double quant) "
               f"+ {fmt_params(small)} embed/norm × {a} B")
    elif cfg.get("load_in_8bit"):
        w = lin * 1.0 + small * a
        how = f"{fmt_params(lin)} linear × 1 B (int8) + {fmt_params(small)} embed/norm × {a} B"
    else:
        w = (lin + small) * a
        how = f"{fmt_params(lin + small)} × {a} B"
    if cfg.get("processor_type") and shape.vision_params():
        w += shape.vision_params() * a
        how += f" + {fmt_params(shape.vision_params())} vision × {a} B"
    zero = zero_stage(cfg)
    if zero >= 3 and world > 1:
        w /= world
        how += f", ÷ {world} ({shard_name(cfg, zero)})"
    return w, how


def trainable_state_bytes(cfg: dict[str, Any], shape: ModelShape, world: int) -> tuple[float, str]:
    """Bytes of trainable weights, gradients and optimizer states on one GPU, and the arithmetic.

    Adapter: 16 B per trainable parameter (PEFT keeps LoRA weights in fp32:
    4 weight + 4 grad + 8 AdamW m and v), 10 B with an 8-bit optimizer, 8 B
    with SGD; ZeRO-2+ divides grad + optimizer by the world size. Full
    fine-tuning: grads + optimizer states at the param dtype (ZeRO-1 shards
    the states, ZeRO-2 also the grads).
    """
    a = act_bytes(cfg)
    zero = zero_stage(cfg)
    opt = str(cfg.get("optimizer") or "adamw_torch_fused").lower()
    opt_bytes = 2 if any(k in opt for k in EIGHT_BIT_OPTIMIZERS) else (0 if opt == "sgd" else 8)
    p_t = trainable_params(cfg, shape)
    if cfg.get("adapter"):
        per = 4 + 4 + opt_bytes
        shard = world if zero >= 2 and world > 1 else 1
        ad = p_t * 4 + p_t * (4 + opt_bytes) / shard
        how = f"{fmt_params(p_t)} × {per} B (fp32 weight + grad + {opt_bytes} B optimizer)" + (
            f", grad + optimizer ÷ {world} ({shard_name(cfg, zero)})" if shard > 1 else "")
    else:
        grad, state = a, (2 if opt_bytes == 2 else 2 * a)
        div_s = world if zero >= 1 and world > 1 else 1
        div_g = world if zero >= 2 and world > 1 else 1
        ad = p_t * (grad / div_g + state / div_s)
        how = f"{fmt_params(p_t)} × ({grad} B grad + {state} B optimizer) (full fine-tune)"
    return ad, how


def layer_bytes_per_token(cfg: dict[str, Any], shape: ModelShape) -> dict[str, float]:
    """Activation bytes one layer keeps per token, by layer kind (``"attention"``, ``"linear"``).

    Bytes = a × units, a = 2 for bf16/fp16, 4 for fp32: ``7h + 4·q + 4·kv +
    4·I`` (+ q for a gated attention output) for an attention layer (two
    RMSNorm inputs kept in fp32 and their outputs; q/k before and after RoPE,
    v, attention output and its log-sum-exp; gate, up, SiLU(gate) and their
    product), after Korthikanti et al. 2022 (arXiv:2205.05198, §4) adapted to
    GQA and SwiGLU; for a Gated DeltaNet layer ``7h + 3·conv + 4·v_dim +
    2·v_heads + 4·I`` plus the fp32 chunk states ``4·v_heads·d_k·d_v / 64``
    B/token (chunk size 64). LoRA adds ``a·r`` per targeted module and, with
    ``lora_dropout > 0``, the dropped input copy and mask ``(a + 1)·in_features``.
    """
    a = act_bytes(cfg)
    h = shape.hidden
    mods = targeted_modules(cfg, shape) if cfg.get("adapter") else []
    r = int(num(cfg, "lora_r", 8)) if cfg.get("adapter") else 0
    dropout = float(num(cfg, "lora_dropout", 0.0) or 0.0)

    def lora_extra(kind_names: set[str]) -> float:
        extra = 0.0
        for name, fin, _, _ in mods:
            if name in kind_names or name in MLP_NAMES:
                extra += a * r + ((a + 1) * fin if dropout > 0 else 0)
        return extra

    inter = shape.intermediate
    full_layer = a * (7 * h + 4 * shape.q_dim + 4 * shape.kv_dim + 4 * inter
                      + (shape.q_dim if shape.attn_output_gate else 0)) + lora_extra(ATTN_NAMES)
    per_layer = {"attention": full_layer}
    la = shape.linear_attention
    if shape.n_linear and la is not None:
        states = 4 * la.value_heads * la.key_head_dim * la.value_head_dim / 64
        per_layer["linear"] = (a * (7 * h + 3 * la.conv_dim + 4 * la.value_dim + 2 * la.value_heads + 4 * inter)
                               + states + lora_extra(LINEAR_ATTN_NAMES))
    return per_layer


def activation_bytes(cfg: dict[str, Any], shape: ModelShape, rows: int, seq: int,
                     how: dict[str, str]) -> tuple[float, float]:
    """``(stored, transient)`` activation bytes of one micro-batch of ``rows × seq`` tokens.

    Without checkpointing every layer keeps :func:`layer_bytes_per_token`
    for all T tokens; gradient checkpointing keeps only each layer's input
    (``L × T × h × a``; none on the GPU with ``offload``) and recomputes one
    layer at a time (the transient). Eager attention adds ``2a × rows × heads
    × s²`` per layer; flash/SDPA kernels do not. Fills ``how["activations"]``
    and ``how["recompute"]``.
    """
    a = act_bytes(cfg)
    T = rows * seq
    per_layer = layer_bytes_per_token(cfg, shape)
    eager = 2 * a * rows * shape.heads * seq * seq if attention(cfg) == "eager" else 0.0
    gc = checkpointing(cfg)
    if gc == "off":
        stored = T * (per_layer["attention"] * shape.n_full + per_layer.get("linear", 0.0) * shape.n_linear)
        stored += eager * shape.n_full
        transient = 0.0
        how["activations"] = f"no checkpointing: all {shape.layers} layers × {fmt_int(T)} tok kept"
    else:
        stored = 0.0 if gc == "offload" else shape.layers * T * shape.hidden * a
        transient = T * max(per_layer.values()) + eager
        how["activations"] = (f"checkpointing: {shape.layers} layers × {fmt_int(T)} tok × {shape.hidden} × {a} B"
                              + (" (offloaded to CPU)" if gc == "offload" else ""))
    how["recompute"] = f"one layer: {fmt_int(T)} tok × {fmt_int(max(per_layer.values()))} B"
    return stored, transient


def logit_bytes(cfg: dict[str, Any], shape: ModelShape, tokens: int) -> tuple[float, str]:
    """Bytes of the logits at the loss for ``tokens`` tokens, and the arithmetic.

    SFT ``T × vocab × 12`` B (the 16-bit logits, their fp32 upcast in
    transformers' ``ForCausalLMLoss``, log-softmax output and its gradient);
    DPO ``T × vocab × 2a`` (TRL 1.14.1's fused Triton
    ``selective_log_softmax_and_entropy`` reads the logits in place on CUDA:
    the logits and their gradient); ~0 with Cut Cross-Entropy, Liger's fused
    linear cross-entropy or ``chunked_cross_entropy`` (counted as two hidden
    states per token).
    """
    a = act_bytes(cfg)
    # the plugins only act when their key is set (cut_cross_entropy: true, liger_fused_...: true)
    if any(cfg.get(k) for k in CHUNKED_LOSS_KEYS):
        return tokens * shape.hidden * a * 2.0, "chunked / fused cross-entropy: no full logits tensor"
    # SFT: transformers' ForCausalLMLoss upcasts to fp32 (12 B); DPO: TRL's fused
    # log-prob kernel reads the 16-bit logits in place (logits + their gradient)
    per = 2 * a if stage_of(cfg) == "dpo" else LOGIT_BYTES
    return float(tokens) * shape.vocab * per, f"{fmt_int(tokens)} tok × {fmt_int(shape.vocab)} vocab × {per} B"


def estimate_memory(cfg: dict[str, Any], shape: ModelShape, world: int = 1) -> Memory:
    """Peak GPU memory of one process, GiB (the module doc has the sum and its sources).

    Args:
        cfg: the Axolotl config dict.
        shape: the base model's shape card.
        world: GPUs; divides sharded state under ZeRO / FSDP.

    Raises:
        AxpackError: a numeric key holds a non-number string.
    """
    a = act_bytes(cfg)
    micro = int(num(cfg, "micro_batch_size", 1))
    seq = int(num(cfg, "sequence_len", 512))
    rows = micro * (2 if stage_of(cfg) == "dpo" else 1)
    T = rows * seq
    how: dict[str, str] = {}
    w, how["weights"] = weight_bytes(cfg, shape, world)
    ad, how["adapter"] = trainable_state_bytes(cfg, shape, world)
    stored, transient = activation_bytes(cfg, shape, rows, seq, how)
    logits, how["logits"] = logit_bytes(cfg, shape, T)
    buffers = 2.0 * T * shape.hidden * a
    peak = w + ad + stored + max(logits, transient) + buffers
    reserved = (w + (peak - w) * RESERVED_FACTOR) / GIB + CUDA_CONTEXT_GIB
    return Memory(
        weights=w / GIB, adapter=ad / GIB, stored=stored / GIB, transient=transient / GIB,
        logits=logits / GIB, buffers=buffers / GIB, peak_alloc=peak / GIB, reserved=reserved, tokens=T, how=how,
    )
