"""``axpack plan``: the training math of one config, before any GPU is rented.

``axpack plan CONFIG [--data PREPPED_DIR | --num-examples N]`` prints what
users otherwise work out by hand ("9,007 ÷ 16 ≈ 563 steps/epoch",
"16 × 1024 = 16K tokens/step", "α/r 2.0 → 1.0"): examples, effective batch,
steps per epoch and in total, warmup steps, tokens per step, the LoRA scale
α/r (α/√r for rsLoRA) and lr × scale, trainable parameters, the estimated
peak GPU memory, and wall time and cost on named GPUs. It runs offline from
the model-shape cards in ``axpack/cards/`` and never imports torch.

Layout: an engine and one command
---------------------------------
Every module of this package but :mod:`~axpack.plan.cmd` is engine code
(no click, no printing but the renderers' ``rich`` output), so ``diff`` and
any later caller import them without importing a command:

- :mod:`axpack.plan.data` — examples from ``--data``, ``--num-examples`` or
  the config's datasets; record values through :func:`~axpack.plan.data.iter_records`
  (over :mod:`axpack.records`).
- :mod:`axpack.plan.tokens` — tokens per example: a local tokenizer and chat
  template, or chars/4.
- :mod:`axpack.plan.settings` — what the config's keys amount to (precision,
  attention, LoRA targets, trainable parameters, ZeRO/FSDP stage).
- :mod:`axpack.plan.steps` — :class:`~axpack.plan.steps.StepMath`: steps as
  the pinned Axolotl + transformers run them, warmup.
- :mod:`axpack.plan.memory` — peak GPU memory, term by term.
- :mod:`axpack.plan.flops` — FLOPs per token, MFU, the measured CPU box.
- :mod:`axpack.plan.gpus` — the GPU table (VRAM, TFLOPS, USD/h) and the GPU a
  file name names.
- :mod:`axpack.plan.compute` — :class:`~axpack.plan.compute.Plan`,
  :func:`~axpack.plan.compute.compute_plan` (pure: config dict + shape +
  example count) and :func:`~axpack.plan.compute.plan_config` (loads files).
- :mod:`axpack.plan.rules` — plan's and diff's rule tables, one shape
  (:class:`axpack.rules.Rule`: id, source, test).
- :mod:`axpack.plan.render` — the plan as rows, Markdown and rich tables.
- :mod:`axpack.plan.cmd` — the click command (the only command module).

Number formatting is the foundation module :mod:`axpack.formatting`.
Importing this package loads the engine only; ``axpack.plan.command`` (the
name the CLI asks for) imports :mod:`axpack.plan.cmd` on first access. Each formula's source
sits in the docstring of the function or module that computes it:
``python -m pydoc axpack.plan.steps`` (steps, warmup), ``axpack.plan.memory``
(memory), ``axpack.plan.flops`` (time and cost), ``axpack.plan.compute``
(held-out examples, tokens per step, LoRA scale), ``axpack.plan.data`` and
``axpack.plan.tokens`` (examples and tokens).
"""

from __future__ import annotations

from typing import Any

from .compute import Check, GpuEstimate, Plan, compute_plan, plan_config, steps_prefix
from .data import DataInfo, count_examples, iter_records
from .flops import cpu_flops, flops_per_token
from .gpus import GPUS, REFERENCE_GPU, Gpu, named_gpu
from .memory import Memory, estimate_memory
from .render import gpu_rows, plan_rows, render_markdown, render_terminal
from .rules import CHANGE_RULES, RULES, run_checks
from .settings import targeted_modules, trainable_params
from .steps import StepMath, packing_efficiency, step_math, warmup
from .tokens import TokenCounter, find_tokenizer

__all__ = [
    "CHANGE_RULES", "GPUS", "REFERENCE_GPU", "RULES", "Check", "DataInfo", "Gpu", "GpuEstimate", "Memory", "Plan",
    "StepMath", "TokenCounter", "compute_plan", "count_examples", "cpu_flops", "estimate_memory", "find_tokenizer",
    "flops_per_token", "gpu_rows", "iter_records", "named_gpu", "packing_efficiency", "plan_config", "plan_rows",
    "render_markdown", "render_terminal", "run_checks", "step_math", "steps_prefix", "targeted_modules",
    "trainable_params", "warmup",
]


def __getattr__(name: str) -> Any:
    """``axpack.plan.command`` (the click command the CLI loads), imported on first access."""
    if name == "command":
        from .cmd import command

        return command
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
