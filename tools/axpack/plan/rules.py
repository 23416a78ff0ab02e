"""Settings that usually hurt: plan's rules on one config, and diff's rules on a change.

Both tables are :class:`axpack.rules.Rule` rows (id, source, test).
:data:`RULES` tests ``(plan, cfg)`` and fires on one config (``axpack plan``
lists them; ``axpack diff`` marks them new / still / resolved);
:data:`CHANGE_RULES` tests ``(plan_a, plan_b, cfg_a, cfg_b)`` and fires on a
change from A to B (``axpack diff``). Each returns a one-line message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..formatting import fmt_gib, fmt_lr, fmt_num, show_value
from ..rules import Rule, fire
from .gpus import GPUS

if TYPE_CHECKING:
    from .compute import Check, Plan

UNSLOTH_GUIDE = ("Unsloth, LoRA hyperparameters guide "
                 "(unsloth.ai/docs/get-started/fine-tuning-llms-guide/lora-hyperparameters-guide)")
MEMORY_SOURCE = "this module's memory estimate (see axpack.plan docstring)"


# ---- one config ------------------------------------------------------------------
def _rule_scale(p: Plan, cfg: dict[str, Any]) -> str | None:
    if p.lora_scale is not None and p.lr is not None and p.lora_scale > 2 and p.lr >= 1e-4:
        return (f"LoRA scale {'α/√r' if p.rslora else 'α/r'} = {fmt_num(p.lora_scale)} with learning_rate "
                f"{fmt_lr(p.lr)}: the adapter steps at lr × scale = {fmt_lr(p.lr_scaled)}; keep α ≤ 2r at "
                "lr ≥ 1e-4 or lower the lr")
    return None


def _rule_batch(p: Plan, cfg: dict[str, Any]) -> str | None:
    if p.eff_batch < 8:
        return (f"effective batch {p.eff_batch} ({p.micro} × {p.ga} GA × {p.world}) is below 8: noisy "
                "gradients; raise gradient_accumulation_steps (16 is the usual starting point)")
    return None


def _rule_dpo_lr(p: Plan, cfg: dict[str, Any]) -> str | None:
    if p.stage == "dpo" and p.lr is not None and p.lr > 1e-5:
        return (f"DPO learning_rate {fmt_lr(p.lr)} is above 1e-5: preference training drifts far from the "
                "reference at SFT-like rates (TRL's default is 1e-6, 5e-6 is a common LoRA choice)")
    return None


def _rule_beta(p: Plan, cfg: dict[str, Any]) -> str | None:
    beta = cfg.get("rl_beta", cfg.get("dpo_beta"))
    if p.stage == "dpo" and beta is not None and not (0.01 <= float(beta) <= 0.5):
        return f"rl_beta {beta} is outside 0.01–0.5 (TRL's default 0.1): the KL pull is extreme"
    return None


def _rule_epochs(p: Plan, cfg: dict[str, Any]) -> str | None:
    if p.stage == "sft" and not p.max_steps and p.epochs > 3:
        return f"num_epochs {fmt_num(p.epochs)} > 3: instruct fine-tunes usually overfit past 1–3 epochs"
    return None


def _rule_fit(p: Plan, cfg: dict[str, Any]) -> str | None:
    if p.memory is not None and p.memory.reserved > max(g.vram_gib for g in GPUS.values()):
        return (f"estimated peak {fmt_gib(p.memory.reserved)} exceeds every listed GPU: "
                "lower micro batch or sequence_len")
    return None


def _rule_named_fit(p: Plan, cfg: dict[str, Any]) -> str | None:
    g = next((g for g in p.gpus if g.key == p.named_gpu), None) if p.named_gpu else None
    if g is not None and g.fits == "no" and p.memory is not None:
        return (f"the file name names {g.name}, but the estimated peak {fmt_gib(p.memory.reserved)} exceeds its "
                f"{g.vram_gib:.0f} GiB: lower micro batch or sequence_len, or rename the config")
    return None


RULES: list[Rule] = [
    Rule("lora-scale-high-lr", f"{UNSLOTH_GUIDE}: lora_alpha = r or 2r, lr 2e-4; rsLoRA (Kalajdzievski 2023, "
         "arXiv:2312.03732) on how α/r scales the update", _rule_scale),
    Rule("small-effective-batch", f"{UNSLOTH_GUIDE}: effective batch 16 (2 × GA 8); QLoRA (Dettmers et al. 2023, "
         "arXiv:2305.14314, App. B) trained 7–13B at batch 16", _rule_batch),
    Rule("dpo-lr-high", "TRL 1.14.1 DPOConfig learning_rate default 1e-6 (trl/trainer/dpo_config.py); DPO paper "
         f"(Rafailov et al. 2023, arXiv:2305.18290) used 1e-6; {UNSLOTH_GUIDE}: 5e-6 for DPO", _rule_dpo_lr),
    Rule("dpo-beta-range", "TRL 1.14.1 DPOConfig beta default 0.1 (trl/trainer/dpo_config.py)", _rule_beta),
    Rule("many-epochs", f"{UNSLOTH_GUIDE}: 1–3 epochs for instruction datasets", _rule_epochs),
    Rule("no-gpu-fits", MEMORY_SOURCE, _rule_fit),
    Rule("named-gpu-does-not-fit", MEMORY_SOURCE, _rule_named_fit),
]


def run_checks(plan: Plan, cfg: dict[str, Any]) -> list[Check]:
    """Every :data:`RULES` entry that fires on ``plan``, as :class:`~axpack.plan.compute.Check` rows."""
    from .compute import Check

    return [Check(rule.id, msg, rule.source) for rule, msg in fire(RULES, plan, cfg)]


# ---- a change from A to B --------------------------------------------------------
def _eff_batch_same_lr(pa: Plan, pb: Plan, a: dict, b: dict) -> str | None:
    if pa.stage == pb.stage and pa.eff_batch != pb.eff_batch and pa.lr == pb.lr:
        k = pb.eff_batch / pa.eff_batch
        steps = ""
        if pa.total_steps and pb.total_steps:
            steps = f", total steps {pa.total_steps:,} → {pb.total_steps:,}"
        what = ""
        if a.get("micro_batch_size") != b.get("micro_batch_size") and \
                a.get("gradient_accumulation_steps") == b.get("gradient_accumulation_steps"):
            what = (f"micro_batch_size {a.get('micro_batch_size')} → {b.get('micro_batch_size')} without touching "
                    "gradient_accumulation_steps: ")
        return (f"{what}effective batch {pa.eff_batch} → {pb.eff_batch} (×{k:.3g}){steps} at the same learning_rate "
                f"{fmt_lr(pb.lr)}: each step now averages {'more' if k > 1 else 'fewer'} examples; scale the lr "
                f"by ×{k ** 0.5:.2g} (√k, Adam) to ×{k:.2g} (k, SGD) or keep the batch")
    return None


def _scale_same_lr(pa: Plan, pb: Plan, a: dict, b: dict) -> str | None:
    if pa.lora_scale and pb.lora_scale and pa.lora_scale != pb.lora_scale and pa.lr == pb.lr:
        k = pb.lora_scale / pa.lora_scale
        return (f"LoRA scale {fmt_num(pa.lora_scale)} → {fmt_num(pb.lora_scale)} at the same learning_rate: "
                f"adapter updates ×{k:.3g} (lr × scale {fmt_lr(pa.lr_scaled)} → {fmt_lr(pb.lr_scaled)})")
    return None


def _seq_shorter(pa: Plan, pb: Plan, a: dict, b: dict) -> str | None:
    if pb.seq_len < pa.seq_len:
        return (f"sequence_len {pa.seq_len:,} → {pb.seq_len:,}: examples longer than {pb.seq_len:,} tokens are now "
                "dropped (or truncated); check the length histogram with `axpack stats`")
    return None


def _base_changed(pa: Plan, pb: Plan, a: dict, b: dict) -> str | None:
    if pa.model and pb.model and pa.model != pb.model:
        return (f"base model {pa.model} → {pb.model}: adapters, tokenizer and chat template do not carry over; "
                "retrain from SFT")
    return None


def _template_changed(pa: Plan, pb: Plan, a: dict, b: dict) -> str | None:
    if a.get("chat_template") != b.get("chat_template") and (a.get("chat_template") or b.get("chat_template")):
        return (f"chat_template {show_value(a.get('chat_template'))} → {show_value(b.get('chat_template'))}: "
                "prompts tokenize differently; the template used to serve (GGUF/Ollama) must match the one "
                "trained on")
    return None


def _memory_grew(pa: Plan, pb: Plan, a: dict, b: dict) -> str | None:
    ma, mb = pa.memory, pb.memory
    if ma is None or mb is None or mb.reserved <= ma.reserved * 1.1:
        return None
    lost = [g.name for g in GPUS.values() if ma.reserved <= g.vram_gib < mb.reserved]
    if not lost:
        return None
    return (f"estimated peak memory {ma.reserved:.1f} → {mb.reserved:.1f} GiB: no longer fits a "
            + ", ".join(lost))


def _packing_attn(cfg: dict) -> str:
    return str(cfg.get("attn_implementation") or ("flash_attention_2" if cfg.get("flash_attention") else "sdpa"))


def _packing_changed(pa: Plan, pb: Plan, a: dict, b: dict) -> str | None:
    if pa.stage != "sft" or pb.stage != "sft" or pa.packing == pb.packing:
        return None
    out = [f"sample_packing {str(pa.packing).lower()} → {str(pb.packing).lower()}"]
    if pa.total_steps and pb.total_steps:
        def pre(p: Plan) -> str:
            return "" if p.steps_exact else "≈ "

        out.append(f"total steps {pre(pa)}{pa.total_steps:,} → {pre(pb)}{pb.total_steps:,} "
                   f"(×{pb.total_steps / pa.total_steps:.2g})")
    if pa.tokens_per_step and pb.tokens_per_step:
        out.append(f"tokens per step ≈ {pa.tokens_per_step:,.0f} → {pb.tokens_per_step:,.0f} "
                   f"(×{pb.tokens_per_step / pa.tokens_per_step:.2g})")
    elif not (pa.mean_tokens or pb.mean_tokens):
        out.append("tokens per step unknown: pass --data or --tokens-per-example for the step and token change")
    if pa.memory and pb.memory:
        same = pa.memory.tokens == pb.memory.tokens
        out.append(f"memory {pa.memory.reserved:.1f} → {pb.memory.reserved:.1f} GiB"
                   + (f" (the micro batch is {pa.memory.tokens:,} tokens either way)" if same else ""))
    if pb.packing:
        why = ("each row now holds several conversations up to sequence_len, so an epoch takes fewer, fuller steps "
               "and each step averages more conversations at the same learning_rate; "
               + ("flash_attention_2 keeps packed conversations apart (own position ids, varlen attention)"
                  if _packing_attn(b) == "flash_attention_2" else
                  f"attn_implementation {_packing_attn(b)} attends across packed conversations: use "
                  "flash_attention_2"))
    else:
        why = ("one conversation per row: boundaries are kept trivially, short examples leave the rest of the row "
               "as padding (compute, not loss), and an epoch takes more, smaller steps")
    return "; ".join(out) + ". " + why[0].upper() + why[1:]


CHANGE_RULES: list[Rule] = [
    Rule("batch-changed-same-lr", "Goyal et al. 2017 (arXiv:1706.02677): linear lr scaling with batch for "
         "SGD; Malladi et al. 2022 (arXiv:2205.10287): square-root scaling for Adam", _eff_batch_same_lr),
    Rule("lora-scale-changed", "Hu et al. 2021, LoRA (arXiv:2106.09685) §4.1: the update ΔWx is scaled by "
         "α/r; PEFT LoraLayer.scaling", _scale_same_lr),
    Rule("sequence-len-shorter", "Axolotl 0.21 schema: excess_length_strategy (default drop) for examples "
         "longer than sequence_len", _seq_shorter),
    Rule("base-model-changed", "Hu et al. 2021 (arXiv:2106.09685): LoRA learns a low-rank delta of one "
         "base's weights", _base_changed),
    Rule("chat-template-changed", "Axolotl docs, dataset formats / conversation: the chat_template must "
         "match the one used at inference", _template_changed),
    Rule("memory-grew", "axpack.plan memory estimate (checked against measured runs, tests/test_plan.py)",
         _memory_grew),
    Rule("packing-changed", "Axolotl docs, multipack (docs/multipack.qmd): packed sequences stay separate "
         "with flash attention's varlen kernels; steps from axpack.plan (Axolotl's multipack estimate)",
         _packing_changed),
]
