"""A plan as rows, as GitHub Markdown (a PR comment) and as rich terminal tables.

Shared by ``axpack plan`` and ``axpack diff`` (a new config's full plan), so
it lives in the engine, not in either command.
"""

from __future__ import annotations

from ..formatting import (
    fmt_gib,
    fmt_hours,
    fmt_int,
    fmt_lr,
    fmt_num,
    fmt_params,
    fmt_usd,
    md_cell,
    md_table,
    rich_table,
)
from .compute import Plan, steps_prefix
from .memory import CUDA_CONTEXT_GIB, RESERVED_FACTOR

Row = tuple[str, str, str, str]


def _data_rows(p: Plan, add) -> None:
    stage = p.stage.upper() + (f" ({p.rl})" if p.rl else "")
    add("data", "stage", stage, "from the config's rl key")
    ex = fmt_int(p.examples) if p.examples is not None else "unknown"
    add("data", "examples" if p.stage == "sft" else "pairs", ex, p.examples_source)
    if p.val_examples:
        add("data", "held out (val_set_size)", fmt_int(p.val_examples), f"{fmt_int(p.train_examples)} train")
    if p.mean_tokens:
        add("data", "tokens per example" if p.stage == "sft" else "tokens per pair",
            f"≈ {p.mean_tokens:,.0f}", p.tokens_source)


def _step_rows(p: Plan, add) -> None:
    add("steps", "effective batch", fmt_int(p.eff_batch), f"micro {p.micro} × GA {p.ga} × {p.world} GPU")
    approx = steps_prefix(p)
    spe = approx + fmt_int(p.steps_per_epoch) if p.steps_per_epoch is not None else "unknown"
    add("steps", "steps per epoch", spe, p.steps_how_epoch)
    tot = approx + fmt_int(p.total_steps) if p.total_steps is not None else "unknown"
    add("steps", "total steps", tot, p.steps_how_total)
    if p.steps_note:
        add("steps", "note", "", p.steps_note)
    add("steps", "warmup steps", fmt_num(p.warmup_steps) if p.warmup_steps is not None else "unknown", p.warmup_how)
    tok_how = f"{p.eff_batch} × {fmt_int(p.seq_len)} sequence_len" + (
        " × 2 (chosen + rejected)" if p.rows_per_example == 2 else "")
    add("steps", "tokens per step (max)", fmt_int(p.tokens_per_step_max), tok_how)
    if p.tokens_per_step is not None:
        add("steps", "tokens per step (≈)", fmt_int(p.tokens_per_step),
            "packed rows × efficiency" if p.packing else "effective batch × mean tokens (padding not counted)")
    if p.total_tokens:
        add("steps", "tokens in total", ("≤ " if p.steps_bound else "≈ ") + fmt_params(p.total_tokens),
            "total steps × tokens per step")


def _adapter_rows(p: Plan, add) -> None:
    if p.adapter:
        add("adapter", "adapter", f"{p.adapter} r {p.lora_r}, α {fmt_num(p.lora_alpha)}", "")
        add("adapter", "α/√r (rsLoRA)" if p.rslora else "α/r", fmt_num(p.lora_scale),
            f"{fmt_num(p.lora_alpha)} ÷ {'√' if p.rslora else ''}{p.lora_r}")
        add("adapter", "lr × scale", fmt_lr(p.lr_scaled), f"{fmt_lr(p.lr)} × {fmt_num(p.lora_scale)}")
    else:
        add("adapter", "adapter", "none (full fine-tune)", "")
        add("adapter", "learning rate", fmt_lr(p.lr), "")
    if p.trainable_params is not None and p.total_params:
        pct = 100 * p.trainable_params / p.total_params
        add("adapter", "trainable params", fmt_params(p.trainable_params),
            f"{pct:.2g}% of {fmt_params(p.total_params)}")
    add("model", "base model", p.model or "unknown", p.model_origin or "no card: pass --card ID (axpack/cards/)")
    for note in p.model_notes:
        add("model", "note", "", note)


def _memory_rows(p: Plan, add) -> None:
    m = p.memory
    if m is not None:
        add("memory", "weights", fmt_gib(m.weights), m.how.get("weights", ""))
        add("memory", "adapter + optimizer", fmt_gib(m.adapter), m.how.get("adapter", ""))
        add("memory", "stored activations", fmt_gib(m.stored), m.how.get("activations", ""))
        if m.logits >= m.transient:
            add("memory", "logits at the loss", fmt_gib(m.logits), m.how.get("logits", ""))
        else:
            add("memory", "layer recompute", fmt_gib(m.transient), m.how.get("recompute", ""))
        add("memory", "peak allocated", fmt_gib(m.peak_alloc), f"T = {fmt_int(m.tokens)} tokens per micro-batch")
        add("memory", "expected nvidia-smi", fmt_gib(m.reserved),
            f"weights + (peak − weights) × {RESERVED_FACTOR} + {CUDA_CONTEXT_GIB} GiB")
    if p.named_gpu:
        g = next((g for g in p.gpus if g.key == p.named_gpu), None)
        if g is not None and m is not None:
            verdict = {"yes": "fits", "tight": "fits, tight (> 90 %)", "no": "does not fit"}[g.fits]
            add("memory", "named for", f"{g.name}: {verdict}",
                f"{fmt_gib(m.reserved)} of {g.vram_gib:.0f} GiB (the GPU in the config's file name)")


def plan_rows(p: Plan) -> list[Row]:
    """The plan as ``(section, label, value, how)`` rows, shared by both renderers."""
    rows: list[Row] = []

    def add(sec: str, label: str, value: str, how: str = "") -> None:
        rows.append((sec, label, value, how))

    for part in (_data_rows, _step_rows, _adapter_rows, _memory_rows):
        part(p, add)
    return rows


def gpu_rows(p: Plan) -> list[tuple[str, str, str, str, str]]:
    """One row per GPU (the one the config is named for first, marked "named for")."""
    le = "≤ " if p.steps_bound else ""
    gpus = sorted(p.gpus, key=lambda g: g.key != p.named_gpu)
    return [(g.name + (" (named for)" if g.key == p.named_gpu else ""), f"{g.vram_gib:.0f} GiB", g.fits,
             le + fmt_hours(g.hours) if g.hours is not None else "unknown",
             le + fmt_usd(g.usd) if g.usd is not None else "—") for g in gpus]


def render_markdown(p: Plan, title: bool = True) -> str:
    """The plan as GitHub-flavoured Markdown (a PR comment)."""
    out = []
    if title:
        out.append(f"### Training plan: `{p.config}`\n")
    out += md_table(["", "value", "how"], ["---", "---:", "---"],
                    ([label, value, md_cell(how)] for _, label, value, how in plan_rows(p)))
    if p.gpus:
        out.append("")
        out += md_table(["GPU", "VRAM", "fits", "time", "cost"], ["---", "---:", "---", "---:", "---:"], gpu_rows(p))
    if p.checks:
        out.append("")
        for c in p.checks:
            out.append(f"- **{c.rule}**: {md_cell(c.message)} _(source: {md_cell(c.source)})_")
    return "\n".join(out) + "\n"


def render_terminal(p: Plan) -> None:
    """Print the plan as rich tables to stdout."""
    from rich.console import Console
    from rich.markup import escape as esc

    console = Console()
    table = rich_table([("section", {"style": "dim"}), ("", {}), ("value", {"justify": "right", "style": "bold"}),
                        ("how", {"style": "dim"})], title=esc(f"training plan: {p.config}"), show_lines=False)
    last = None
    for sec, label, value, how in plan_rows(p):
        table.add_row(sec if sec != last else "", esc(label), esc(value), esc(how))
        last = sec
    console.print(table)
    if p.gpus:
        gt = rich_table([(col, {"justify": just}) for col, just in (("GPU", "left"), ("VRAM", "right"),
                         ("fits", "left"), ("time", "right"), ("cost", "right"))],
                        title="per GPU (estimates, ±50% on time)")
        for row in gpu_rows(p):
            style = {"yes": "green", "tight": "yellow", "no": "red"}.get(row[2], "")
            gt.add_row(esc(row[0]), row[1], f"[{style}]{row[2]}[/]" if style else row[2], esc(row[3]), esc(row[4]))
        console.print(gt)
    for c in p.checks:
        console.print(f"[yellow]warning[/] {c.rule}: {esc(c.message)}\n  [dim]source: {esc(c.source)}[/]")
