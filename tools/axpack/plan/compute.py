"""The plan of one config: :func:`compute_plan` (pure) and :func:`plan_config` (loads files).

It puts together the pieces of this package: examples (:mod:`.data`), steps
(:mod:`.steps`), memory (:mod:`.memory`), FLOPs and time (:mod:`.flops`) on
the GPUs of :mod:`.gpus`, and the rules of :mod:`.rules`. The formulas
computed here:

Held out
    ``val_set_size`` holds out ``ceil(f × N)`` (a fraction) or ``int(v)`` (a
    count) examples, as ``datasets.Dataset.train_test_split`` does for
    Axolotl 0.21 (axolotl/utils/data/shared.py
    ``create_train_validation_split``). With ``test_datasets`` (validation in
    its own file, ``val_set_size: 0``) nothing is held out: N is the
    training examples (the script recipe's 9,007 train windows beside 1,021
    validation windows -> 563 steps).

Tokens per step
    ``B × sequence_len`` (× 2 for DPO: chosen and rejected) is the upper
    bound, reached when rows are packed full; with a mean from the data,
    ``B × min(mean per row, sequence_len)`` unpacked, or packed rows ×
    efficiency (capped by an epoch's tokens spread over its steps).

LoRA scale
    PEFT scales the update by ``lora_alpha / r``, or ``lora_alpha / √r``
    with ``peft_use_rslora`` (Kalajdzievski 2023, arXiv:2312.03732);
    ``lr × scale`` is the step size the adapter effectively sees.

Wall time and cost
    hours = FLOPs / (GPUs × FLOP/s × MFU) / 3600 (:mod:`.flops`); cost =
    hours × USD/h × GPUs (:mod:`.gpus`, ``--price`` overrides).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..cards import ModelShape, resolve_shape
from ..config import load_config, stage_of
from ..formatting import fmt_gib, fmt_hours, fmt_int, fmt_lr, fmt_num, fmt_params
from .data import DataInfo, count_examples
from .flops import cpu_flops, flops_per_token, mfu
from .gpus import CPU_RAM_GIB, GPUS, REFERENCE_GPU, Gpu, named_gpu
from .memory import Memory, estimate_memory
from .rules import run_checks
from .settings import num, trainable_params
from .steps import StepMath, packing_efficiency, step_math, warmup


@dataclass
class GpuEstimate:
    """One device's verdict: fits (``"yes"``, ``"tight"`` > 90 %, ``"no"``), hours and USD (None: unknown)."""

    key: str
    name: str
    vram_gib: float
    fits: str  # "yes", "tight", "no"
    hours: float | None
    usd: float | None
    bound: bool = False  # time and cost are upper bounds


@dataclass
class Check:
    """A rule that fired on a plan: its id, the message, and the source behind the rule."""

    rule: str
    message: str
    source: str


@dataclass
class Plan:
    """Everything ``axpack plan`` derives from one config (JSON-able via :meth:`to_dict`)."""

    config: str
    stage: str
    rl: str | None
    model: str | None
    model_origin: str
    model_notes: list[str]
    examples: int | None
    examples_source: str
    val_examples: int
    train_examples: int | None
    micro: int
    ga: int
    world: int
    eff_batch: int
    epochs: float
    max_steps: int | None
    steps_per_epoch: int | None
    total_steps: int | None
    steps_exact: bool
    steps_bound: bool
    steps_how_epoch: str
    steps_how_total: str
    trainer_steps: int | None
    steps_note: str
    warmup_steps: float | None
    warmup_how: str
    seq_len: int
    packing: bool
    rows_per_example: int
    tokens_per_step_max: int
    mean_tokens: float | None
    tokens_source: str
    tokens_per_step: float | None
    total_tokens: float | None
    adapter: str | None
    lora_r: int | None
    lora_alpha: float | None
    rslora: bool
    lora_scale: float | None
    lr: float | None
    lr_scaled: float | None
    trainable_params: int | None
    total_params: int | None
    memory: Memory | None
    gpus: list[GpuEstimate]
    flops: float | None
    checks: list[Check] = field(default_factory=list)
    named_gpu: str | None = None  # key in GPUS of the GPU the config's file name names

    def to_dict(self) -> dict[str, Any]:
        """The plan as plain JSON-able data (``--format json``)."""
        return asdict(self)

    def derived(self) -> dict[str, tuple[str, Any, str]]:
        """Values ``diff`` compares: key -> (label, raw value, display)."""
        ref = next((g for g in self.gpus if g.key == REFERENCE_GPU), None)
        mem = self.memory
        pre = steps_prefix(self)
        steps = pre + fmt_int(self.total_steps) if self.total_steps is not None else "unknown"
        spe = pre + fmt_int(self.steps_per_epoch) if self.steps_per_epoch is not None else "unknown"
        return {
            "stage": ("stage", self.stage, self.stage.upper() + (f" ({self.rl})" if self.rl else "")),
            "examples": ("examples", self.train_examples, fmt_int(self.train_examples)),
            "eff_batch": ("effective batch", self.eff_batch,
                          f"{self.eff_batch} ({self.micro} × {self.ga} GA × {self.world})"),
            "steps_per_epoch": ("steps per epoch", self.steps_per_epoch, spe),
            "total_steps": ("total steps", self.total_steps, steps),
            "warmup_steps": ("warmup steps", self.warmup_steps, fmt_num(self.warmup_steps)),
            "tokens_per_step": ("tokens per step (max)", self.tokens_per_step_max, fmt_int(self.tokens_per_step_max)),
            "tokens_per_step_est": ("tokens per step (≈)", self.tokens_per_step,
                                    ("≈ " + fmt_int(self.tokens_per_step)) if self.tokens_per_step else "unknown"),
            "lora_scale": ("α/√r" if self.rslora else "α/r", self.lora_scale, fmt_num(self.lora_scale)),
            "lr": ("learning rate", self.lr, fmt_lr(self.lr)),
            "lr_scaled": ("lr × scale", self.lr_scaled, fmt_lr(self.lr_scaled)),
            "trainable": ("trainable params", self.trainable_params, fmt_params(self.trainable_params)),
            "memory": ("peak memory (nvidia-smi)", mem.reserved if mem else None,
                       fmt_gib(mem.reserved) if mem else "unknown"),
            "time": (f"time on {GPUS[REFERENCE_GPU].name}", ref.hours if ref else None,
                     (pre if self.steps_bound else "") + fmt_hours(ref.hours) if ref else "unknown"),
        }


def steps_prefix(p: Plan) -> str:
    """``"≤ "`` for an upper bound, ``""`` for an exact count, ``"≈ "`` for an estimate."""
    return "≤ " if p.steps_bound else ("" if p.steps_exact else "≈ ")


@dataclass
class _Tokens:
    rows: int  # sequences per example: 2 for DPO (chosen + rejected)
    tmax: int  # tokens per step when every row is full
    row_tok: float  # tokens per row (the attention span for FLOPs)
    tps: float | None  # tokens per step estimated from the data
    total: float | None  # tokens over the run


def _held_out(cfg: dict[str, Any], n: int | None) -> tuple[int, int | None]:
    """(held-out examples, training examples) under ``val_set_size`` (module doc, "Held out")."""
    if n is None:
        return 0, None
    val = 0
    v = float(num(cfg, "val_set_size", 0.0) or 0.0)
    if v and not cfg.get("test_datasets"):
        val = int(v) if v >= 1 else math.ceil(v * n)
    return val, max(0, n - val)


def _tokens(cfg: dict[str, Any], stage: str, eff: int, seq: int, packing: bool, data: DataInfo,
            n_train: int | None, sm: StepMath) -> _Tokens:
    """Tokens per step and in total (module doc, "Tokens per step")."""
    rows = 2 if stage == "dpo" else 1
    tmax = eff * seq * rows
    if packing:
        row_tok = seq * float(num(cfg, "sample_packing_eff_est", 0) or packing_efficiency(data.mean_tokens, seq))
        tps = eff * row_tok
        if n_train and data.mean_tokens and sm.steps_per_epoch:
            # data too small to fill every step's rows: an epoch's tokens spread over its steps
            tps = min(tps, n_train * data.mean_tokens / sm.steps_per_epoch)
    elif data.mean_tokens:
        row_tok = min(data.mean_tokens / rows, seq)
        tps = eff * rows * row_tok
    else:
        row_tok, tps = float(seq), None
    total = (tps if tps is not None else tmax) * sm.total_steps if sm.total_steps else None
    return _Tokens(rows, tmax, row_tok, tps, total)


def _lora(cfg: dict[str, Any]) -> dict[str, Any]:
    """Adapter, r, α, rsLoRA, scale, lr and lr × scale (module doc, "LoRA scale")."""
    adapter = cfg.get("adapter") or None
    r = alpha = scale = None
    rs = bool(cfg.get("peft_use_rslora"))
    if adapter:
        r = int(num(cfg, "lora_r", 8))
        alpha = float(num(cfg, "lora_alpha", 8))
        scale = alpha / math.sqrt(r) if rs else alpha / r
    lr = num(cfg, "learning_rate")
    lr = float(lr) if lr is not None else None
    lr_scaled = lr * scale if (lr is not None and scale is not None) else None
    return {"adapter": adapter, "lora_r": r, "lora_alpha": alpha, "rslora": rs, "lora_scale": scale, "lr": lr,
            "lr_scaled": lr_scaled}


def _model_notes(cfg: dict[str, Any], shape: ModelShape) -> list[str]:
    """What the plan says about a hybrid, multimodal or MTP checkpoint."""
    notes = []
    if shape.hybrid and shape.linear_attention:
        notes.append(
            f"hybrid: {shape.n_linear} Gated DeltaNet (linear-attention) + {shape.n_full} full-attention "
            "layers; attention FLOPs and KV terms count the full-attention layers only")
    if shape.vision:
        loaded = bool(cfg.get("processor_type"))
        notes.append(
            f"multimodal checkpoint: {shape.vision.get('layers')}-layer vision tower "
            f"({fmt_params(shape.vision_params()) if shape.vision_params() else 'size n/a'})"
            + (" counted (processor_type set)" if loaded else
               " not loaded by Axolotl's text-only causal-LM path, not counted"))
    if shape.mtp_params:
        notes.append(f"MTP head ({fmt_params(shape.mtp_params)}) not loaded for training")
    return notes


def _devices(cfg: dict[str, Any], mem: Memory, flops: float | None, world: int, small_model: bool,
             prices: dict[str, float], bound: bool) -> list[GpuEstimate]:
    """Fit, hours and USD per GPU (plus the measured CPU box for models under 1B parameters)."""
    devices = list(GPUS.values())
    if small_model:
        devices.append(Gpu("CPU", "CPU (2 cores, measured)", CPU_RAM_GIB, cpu_flops() / 1e12, None, 1.0))
    out = []
    for g in devices:
        need = mem.reserved if g.key != "CPU" else mem.peak_alloc
        fits = "yes" if need <= 0.9 * g.vram_gib else ("tight" if need <= g.vram_gib else "no")
        hours = usd = None
        if flops:
            rate = g.tflops * 1e12 * (g.mfu_fixed if g.mfu_fixed else mfu(cfg)) * world
            hours = flops / rate / 3600
            price = prices.get(g.key, g.usd_per_hour)
            usd = hours * price * world if price is not None else None
        out.append(GpuEstimate(g.key, g.name, g.vram_gib, fits, hours, usd, bound))
    return out


def compute_plan(
    cfg: dict[str, Any],
    *,
    config_path: str = "",
    shape: ModelShape | None = None,
    data: DataInfo | None = None,
    world_size: int = 1,
    prices: dict[str, float] | None = None,
) -> Plan:
    """The training plan of a resolved Axolotl config dict (pure: no I/O).

    Args:
        cfg: the config as loaded (keys as in the YAML).
        config_path: shown in the output only (and its file name may name a GPU).
        shape: the base model's shape; ``None`` skips params, memory and time.
        data: examples and mean tokens; ``None`` means unknown.
        world_size: GPUs (DDP/DeepSpeed ranks); multiplies the effective batch.
        prices: USD/h overrides by GPU key.

    Returns:
        A :class:`Plan`. Never raises on a merely unusual config: what cannot
        be computed is ``None`` and rendered as "unknown" (a numeric key that
        holds a non-number string raises AxpackError).
    """
    data = data or DataInfo(None, "unknown")
    stage = stage_of(cfg)
    micro = int(num(cfg, "micro_batch_size", 1))
    ga = cfg.get("gradient_accumulation_steps")
    if ga is None and cfg.get("batch_size"):
        ga = int(num(cfg, "batch_size")) // micro
    ga = int(ga or 1)
    world = max(1, int(world_size))
    eff = micro * ga * world
    epochs = float(num(cfg, "num_epochs", 1.0))
    max_steps = int(cfg["max_steps"]) if cfg.get("max_steps") else None
    seq = int(num(cfg, "sequence_len", 512))
    packing = bool(cfg.get("sample_packing")) and stage == "sft"
    val, n_train = _held_out(cfg, data.examples)
    sm = step_math(stage, n_train, micro, ga, world, epochs, max_steps, packing, seq,
                   data.mean_tokens, num(cfg, "sample_packing_eff_est"))
    calc = sm.calc_steps if sm.calc_steps is not None else sm.total_steps
    w, w_how = warmup(cfg, min(calc, max_steps) if (calc is not None and max_steps) else (calc or max_steps))
    tok = _tokens(cfg, stage, eff, seq, packing, data, n_train, sm)
    notes: list[str] = []
    mem = flops = p_t = p_all = None
    gpus: list[GpuEstimate] = []
    if shape is not None:
        p_t, p_all = trainable_params(cfg, shape), shape.text_params()
        notes = _model_notes(cfg, shape)
        mem = estimate_memory(cfg, shape, world)
        flops = tok.total * flops_per_token(cfg, shape, tok.row_tok) if tok.total else None
        gpus = _devices(cfg, mem, flops, world, p_all < 1e9, prices or {}, sm.bound)
    plan = Plan(
        config=config_path, stage=stage, rl=str(cfg.get("rl")) if cfg.get("rl") else None,
        model=shape.id if shape else None, model_origin=shape.origin if shape else "",
        model_notes=notes, examples=data.examples, examples_source=data.source, val_examples=val,
        train_examples=n_train, micro=micro, ga=ga, world=world, eff_batch=eff, epochs=epochs, max_steps=max_steps,
        steps_per_epoch=sm.steps_per_epoch, total_steps=sm.total_steps, steps_exact=sm.exact, steps_bound=sm.bound,
        steps_how_epoch=sm.how_epoch, steps_how_total=sm.how_total, trainer_steps=sm.trainer_steps,
        steps_note=sm.note, warmup_steps=w, warmup_how=w_how, seq_len=seq, packing=packing,
        rows_per_example=tok.rows, tokens_per_step_max=tok.tmax, mean_tokens=data.mean_tokens,
        tokens_source=data.tokens_source, tokens_per_step=tok.tps, total_tokens=tok.total, **_lora(cfg),
        trainable_params=p_t, total_params=p_all, memory=mem, gpus=gpus, flops=flops,
    )
    plan.named_gpu = named_gpu(config_path)
    plan.checks = run_checks(plan, cfg)
    return plan


def plan_config(
    config: str | Path,
    *,
    data_dir: str | Path | None = None,
    num_examples: int | None = None,
    tokens_per_example: float | None = None,
    world_size: int = 1,
    card: str | None = None,
    prices: dict[str, float] | None = None,
    cfg: dict[str, Any] | None = None,
    tokenize: bool = True,
    tokenizer_dir: str | Path | None = None,
) -> Plan:
    """Load ``config`` (or use ``cfg``), find its model card and data, and plan it.

    Raises:
        AxpackError: unreadable config, unknown ``card``, bad ``data_dir``.
    """
    if cfg is None:
        cfg = load_config(config)
    shape = resolve_shape(cfg, config, card)
    data = count_examples(cfg, data_dir, num_examples, tokens_per_example, shape, tokenize, tokenizer_dir)
    return compute_plan(cfg, config_path=str(config), shape=shape, data=data, world_size=world_size, prices=prices)
