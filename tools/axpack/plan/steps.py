"""Steps as the pinned Axolotl 0.21 + transformers 5.20.1 run them, and warmup.

Effective batch: ``micro_batch_size × gradient_accumulation_steps ×
world_size`` (Axolotl ``normalize_config``: ``batch_size = micro × GA``,
times the world size under DDP/DeepSpeed).

Total steps: Axolotl 0.21 computes ``total_num_steps`` itself and passes it
to the Trainer as ``max_steps`` (axolotl/core/builders/base.py: ``max_steps
= cfg.max_steps or total_num_steps``), so transformers' own epoch arithmetic
never decides the step count (:func:`step_math` has each case and its source).

transformers 5.20.1's Trainer, left to itself, rounds per epoch: ``epochs ×
ceil(ceil(N / (micro × world)) / GA)`` (transformers/trainer.py
``set_initial_training_values``). The two agree for one epoch (nested
ceilings: ``⌈⌈N/m⌉/g⌉ = ⌈N/(m·g)⌉``; 9,007 at 4 × 4 → 563) and whenever the
epochs' remainders do not add up to a step (1,886 × 3 at 16 × 2: 3 × 59 =
177 = ⌈176.8⌉); they differ when they do (180 pairs × 2 at 4 × 2: Axolotl
runs ⌈45.0⌉ = 45, the Trainer alone would run 2 × 23 = 46; the run stops at
45, skipping the last one-micro-batch update of the last epoch). plan shows
both when they differ; tests/test_plan.py checks both against the pinned code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..formatting import fmt_int, fmt_num

PACKING_EFF_DEFAULT = 0.95


@dataclass
class StepMath:
    """The step counts of one run and the arithmetic behind them.

    ``steps_per_epoch`` / ``total_steps`` are None when unknown;
    ``calc_steps`` is the data-derived total before ``max_steps``; ``exact``
    is False for packing estimates; ``bound`` is True when only an upper
    bound is known (packing without token counts); ``how_epoch`` /
    ``how_total`` spell the arithmetic; ``trainer_steps`` is transformers'
    own per-epoch rounding (None if not applicable); ``note`` explains a
    disagreement or a ``max_steps`` override.
    """

    steps_per_epoch: int | None = None
    total_steps: int | None = None
    exact: bool = True
    bound: bool = False
    how_epoch: str = ""
    how_total: str = ""
    trainer_steps: int | None = None
    note: str = ""
    calc_steps: int | None = None


def packing_efficiency(mean_tokens: float | None, seq_len: int) -> float:
    """Expected multipack fill of a ``seq_len`` row: ``1 − 0.13 × mean/seq_len``.

    Fitted to Axolotl 0.21's ``MultipackBatchSampler`` on uniform length
    mixes (mean/seq_len 0.16 → 0.98 … 0.61 → 0.91; tests/test_plan.py checks
    the resulting steps against ``calculate_total_num_steps``). Clamped to
    0.5–0.99; 0.95 when the mean is unknown.
    """
    if not mean_tokens:
        return PACKING_EFF_DEFAULT
    return min(0.99, max(0.5, 1 - 0.13 * min(1.0, mean_tokens / seq_len)))


def _packed(sm: StepMath, n: int | None, bs: int, epochs: float, seq_len: int, mean_tokens: float | None,
            eff: float) -> None:
    """SFT with ``sample_packing``: the multipack sampler packs examples into rows of
    ``sequence_len`` tokens; steps per epoch ``floor(rows / B)`` with ``rows ≈ ceil(tokens /
    (sequence_len × efficiency))``, total ``floor(steps_per_epoch × epochs)`` (Axolotl 0.21
    axolotl/utils/trainer.py ``calculate_total_num_steps``, multipack branch)."""
    ep = fmt_num(epochs)
    sm.exact = n is None
    if n is not None and mean_tokens:
        rows = math.ceil(n * mean_tokens / (seq_len * eff))
        sm.steps_per_epoch = max(1, rows // bs)
        sm.how_epoch = (f"packed: ⌈{fmt_int(n)} × {mean_tokens:,.0f} tok ÷ ({fmt_int(seq_len)} × {eff:g})⌉"
                        f" = {fmt_int(rows)} rows; ⌊{fmt_int(rows)} ÷ {bs}⌋")
        sm.how_total = f"⌊{fmt_int(sm.steps_per_epoch)} × {ep} epochs⌋ (Axolotl multipack estimate)"
    elif n is not None:
        # tokens unknown: a packed row holds at least one example, so at most n rows
        sm.steps_per_epoch = max(1, n // bs)
        sm.bound = True
        sm.how_epoch = (f"packed: at most ⌊{fmt_int(n)} ÷ {bs}⌋ (one example per row); pass --data "
                        "or --tokens-per-example for the estimate")
        sm.how_total = f"at most ⌊{fmt_int(sm.steps_per_epoch)} × {ep} epochs⌋"
    else:
        sm.how_epoch = (f"packed: ⌊tokens ÷ ({fmt_int(seq_len)} × {eff:g}) ÷ {bs}⌋ "
                        "(tokens unknown: pass --data or --tokens-per-example)")
        sm.how_total = f"steps per epoch × {ep} epochs"
        return
    sm.total_steps = math.floor(sm.steps_per_epoch * epochs)


def _unpacked(sm: StepMath, n: int | None, micro: int, ga: int, world: int, epochs: float) -> None:
    """SFT without packing and every preference (``rl``) stage: ``ceil(N × epochs / B)``,
    rounding once over the whole run (axolotl/utils/trainer.py ``calculate_total_num_steps``;
    axolotl/common/datasets.py ``load_preference_datasets``); the Trainer's own rounding beside it."""
    bs = micro * ga * world
    ep = fmt_num(epochs)
    if n is None:
        sm.how_epoch = f"⌈N ÷ {bs}⌉ (N unknown)"
        sm.how_total = f"⌈N × {ep} ÷ {bs}⌉ (N unknown)"
        return
    total = math.ceil(n * epochs / bs)
    len_dl = math.ceil(n / (micro * world))
    trainer = math.ceil(epochs * math.ceil(len_dl / ga))
    sm.steps_per_epoch, sm.total_steps, sm.trainer_steps = math.ceil(n / bs), total, trainer
    sm.how_epoch = f"⌈{fmt_int(n)} ÷ {bs}⌉"
    sm.how_total = f"⌈{fmt_int(n)} × {ep} ÷ {bs}⌉ (Axolotl, rounded once over the run)"
    if trainer != total:
        sm.note = (
            f"Axolotl 0.21 passes max_steps = ⌈{fmt_int(n)} × {ep} ÷ {bs}⌉ = {total} to the Trainer and the "
            f"run stops there; transformers 5.20.1 on its own rounds per epoch: {ep} × "
            f"⌈⌈{fmt_int(n)} ÷ {micro * world}⌉ ÷ {ga}⌉ = {trainer}"
        )


def step_math(
    stage: str, n: int | None, micro: int, ga: int, world: int, epochs: float, max_steps: int | None,
    packing: bool, seq_len: int, mean_tokens: float | None, eff_est: float | None,
) -> StepMath:
    """Steps as Axolotl 0.21 + transformers 5.20.1 run them (the module doc and the helpers cite the code).

    Args:
        stage: ``"sft"`` or ``"dpo"`` (packing applies to SFT only).
        n: training examples (pairs for DPO), None when unknown.
        micro, ga, world: micro batch, gradient accumulation, GPUs.
        epochs: ``num_epochs`` (may be fractional).
        max_steps: Axolotl's ``max_steps``: when set, exactly that many steps.
        packing: ``sample_packing``.
        seq_len: ``sequence_len`` in tokens.
        mean_tokens: mean tokens per example, None when unknown.
        eff_est: ``sample_packing_eff_est``; else :func:`packing_efficiency`.

    Returns:
        A :class:`StepMath`.
    """
    sm = StepMath()
    if packing and stage == "sft":
        eff = eff_est or packing_efficiency(mean_tokens, seq_len)
        _packed(sm, n, micro * ga * world, epochs, seq_len, mean_tokens, eff)
    else:
        _unpacked(sm, n, micro, ga, world, epochs)
    sm.calc_steps = sm.total_steps
    if max_steps:
        if sm.total_steps is not None:
            sm.note = (sm.note + "; " if sm.note else "") + (
                f"max_steps {max_steps} replaces the {fmt_int(sm.total_steps)} steps of {fmt_num(epochs)} epochs")
        sm.total_steps = int(max_steps)
        sm.exact = True
        sm.bound = False
        sm.how_total = "max_steps"
    return sm


def warmup(cfg: dict[str, Any], total: int | None) -> tuple[float | None, str]:
    """Axolotl 0.21's warmup steps and the arithmetic.

    Axolotl 0.21 (core/builders/base.py ``_configure_warmup_and_logging``):
    ``warmup_steps`` if set, else ``int(warmup_ratio × total)``, else
    ``min(int(0.03 × total), 100)``; a result of 1 becomes 2. ``(None, how)``
    when the total is unknown.
    """
    ws, wr = cfg.get("warmup_steps"), cfg.get("warmup_ratio")
    if ws is not None:
        w, how = float(ws), "warmup_steps"
    elif wr is not None:
        if total is None:
            return None, f"int({fmt_num(float(wr))} × total steps)"
        w, how = float(int(float(wr) * total)), f"int({fmt_num(float(wr))} × {fmt_int(total)})"
    elif total is not None:
        w, how = float(min(int(0.03 * total), 100)), f"min(int(0.03 × {fmt_int(total)}), 100) (Axolotl default)"
    else:
        return None, "min(int(0.03 × total), 100) (Axolotl default)"
    if w == 1:
        w, how = 2.0, how + " = 1 → 2 (Axolotl)"
    return w, how
