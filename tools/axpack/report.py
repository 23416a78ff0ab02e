"""Training report: loss curves (PNG) and a Markdown summary of one run.

``axpack report RUN_DIR`` reads the trainer state Axolotl (HF ``Trainer``)
wrote for each stage — ``RUN_DIR/sft`` and ``RUN_DIR/dpo``, either
``trainer_state.json`` in the folder itself or in its ``checkpoint-N``
sub-folders (the one with the largest ``global_step`` wins: it carries the
whole ``log_history``) — and writes:

- ``RUN_DIR/loss.png``: one row per stage; training loss and eval loss against
  the optimizer step, and for DPO the reward margin and reward accuracy.
- ``RUN_DIR/report.md``: per stage the final and best training loss (and the
  step), final and best eval loss (and the step), the train–eval gap and a
  warning when eval loss has risen from its best while training loss fell
  (the classic sign of early overfitting); for DPO the last chosen/rejected
  rewards, margin and accuracy. When ``RUN_DIR/probe.json`` exists (written
  by ``axpack probe``) its question | base | tuned table is folded in; when
  ``RUN_DIR/gguf/verify.json`` exists (``axpack verify``), the quant table
  (type, size, mean KLD, same top-1, PPL ratio, pass), the verify tables and
  the drift from the base model (KLD on general text and on the run's
  conversations) beside the probe's persona hit-rate.

Both files are written atomically and are byte-identical on a rerun over the
same inputs (the PNG carries no timestamp or version metadata).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from .errors import AxpackError
from .fsutil import atomic_output, atomic_write_text
from .trainer_state import DPO_KEYS, is_finite, load_stages, summarize_stage


def plot(summaries: dict[str, dict[str, Any]], dest: Path) -> None:
    """Draw the loss (and DPO reward) curves to ``dest`` as PNG, atomically (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(summaries)
    ncols = 2 if any(s["dpo"] for s in summaries.values()) else 1
    fig, axes = plt.subplots(len(rows), ncols, figsize=(6.5 * ncols, 3.4 * len(rows)), squeeze=False)
    for r, stage in enumerate(rows):
        s = summaries[stage]
        ax = axes[r][0]
        for key, label, style in (("train", "training loss", "-"), ("eval", "eval loss", "o-")):
            if s[key]:
                xs, ys = zip(*s[key]["points"])
                ax.plot(xs, ys, style, label=label, markersize=4)
        if s["eval"]:
            ax.axvline(s["eval"]["best_step"], color="grey", linestyle=":", linewidth=1,
                       label=f"best eval (step {s['eval']['best_step']})")
        ax.set_title(f"{stage.upper()} loss")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        if ncols == 2:
            ax2 = axes[r][1]
            if s["dpo"]:
                for key, label in (("rewards/margins", "reward margin (chosen − rejected)"),
                                   ("rewards/chosen", "reward chosen"), ("rewards/rejected", "reward rejected")):
                    if s["dpo"][key]:
                        xs, ys = zip(*s["dpo"][key]["points"])
                        ax2.plot(xs, ys, label=label)
                ax2.set_ylabel("reward (β·log-ratio)")
                if s["dpo"]["rewards/accuracies"]:
                    ax3 = ax2.twinx()
                    xs, ys = zip(*s["dpo"]["rewards/accuracies"]["points"])
                    ax3.plot(xs, ys, ":", color="black", label="reward accuracy")
                    ax3.set_ylim(-0.05, 1.05)
                    ax3.set_ylabel("accuracy")
                    ax3.legend(fontsize=8, loc="lower right")
                ax2.set_title(f"{stage.upper()} rewards")
                ax2.set_xlabel("optimizer step")
                ax2.grid(alpha=0.3)
                ax2.legend(fontsize=8, loc="upper left")
            else:
                ax2.axis("off")
    fig.tight_layout()
    with atomic_output(dest) as fh:
        # metadata None: no Software/version line, so reruns are byte-identical
        fig.savefig(fh, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)


def _f(x: float | None, digits: int = 4) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _cell(text: Any) -> str:
    """A Markdown table cell: pipes escaped, newlines as <br>."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\r", "").replace("\n", "<br>").strip()


def stage_markdown(stage: str, path: Path, s: dict[str, Any], run_dir: Path) -> list[str]:
    """Markdown lines for one stage's summary."""
    epoch = _f(s["epoch"], 2) if is_finite(s["epoch"]) else "–"
    lines = [f"## {stage.upper()}", "",
             f"Trainer state: `{path.relative_to(run_dir)}` — {s['steps']} optimizer steps, epoch {epoch}.", ""]
    lines += ["| | final | at step | best | at step |", "|---|---:|---:|---:|---:|"]
    for key, label in (("train", "training loss"), ("eval", "eval loss")):
        st = s[key]
        if st:
            lines.append(f"| {label} | {_f(st['final'])} | {st['final_step']} | {_f(st['best'])} | {st['best_step']} |")
    if s["dpo"]:
        for key in DPO_KEYS:
            st = s["dpo"][key]
            if st:
                lines.append(f"| {key} | {_f(st['final'])} | {st['final_step']} | – | – |")
    lines.append("")
    if not s["train"]:
        lines.append("No training loss was logged (set logging_steps).")
    if s["eval"] is None:
        lines.append("No eval loss was logged (val_set_size: 0 or no test_datasets), so overfitting "
                     "cannot be seen here; hold out a validation split to see it.")
    else:
        lines.append(f"Train–eval gap at the last eval (eval loss − mean training loss since the "
                     f"eval before): **{s['gap']:+.4f}**.")
        lines.append("")
        lines.append(f"**Warning:** {s['overfit']}." if s["overfit"] else
                     "Eval loss did not rise from its best while training loss fell: no sign of overfitting.")
    lines.append("")
    return lines


def probe_markdown(doc: dict[str, Any], quant: str = "q4_k_m") -> list[str]:
    """The probe table (question | base | tuned QUANT) and its checks as Markdown lines.

    ``quant`` falls back to the first GGUF type present when the run has no
    ``q4_k_m`` (then to the merged HF model's answers).
    """
    answers = doc.get("answers") or []
    types = sorted({t for a in answers for t in (a.get("gguf") or {})})
    use = quant if quant in types else (types[0] if types else None)
    label = f"tuned {use.upper()}" if use else "tuned (merged HF)"
    lines = ["## Probe", "",
             f"Persona: **{_cell(doc.get('persona_name', ''))}**. Greedy answers, no system prompt (`axpack probe`).",
             "",
             f"| question | base | {label} |", "|---|---|---|"]
    for a in answers:
        tuned = (a.get("gguf") or {}).get(use, "") if use else a.get("merged", "")
        if use and (a.get("gguf_stopped") or {}).get(use) is False:
            tuned += " *(did not stop at end-of-turn)*"
        lines.append(f"| {_cell(a.get('question', ''))} | {_cell(a.get('base', ''))} | {_cell(tuned)} |")
    c = doc.get("checks") or {}
    if c:
        n = c.get("identity_questions", 0)
        lines += ["", f"Persona named in identity answers: base {c.get('persona_in_base', '–')}/{n}, "
                  f"merged {c.get('persona_in_merged', '–')}/{n}"
                  + "".join(f", {t} {v}/{n}" for t, v in sorted((c.get("persona_in_gguf") or {}).items())) + ".",
                  "GGUF answers ended at end-of-turn: "
                  + (", ".join(f"{t} {v}/{c.get('answers', '–')}"
                               for t, v in sorted((c.get("gguf_stopped_at_eot") or {}).items())) or "–") + "."]
    lines.append("")
    return lines


def quant_table(doc: dict[str, Any]) -> list[str]:
    """The quant summary of a verify document: type, size, mean KLD, same top-1, PPL ratio, pass.

    Each number is ``general text / the run's conversations`` (``verify.json``
    ``results[].quality``); [] when the verify.json predates the KLD measurement.
    """
    results = [r for r in doc.get("results") or [] if r.get("quality")]
    if not results:
        return []
    sets = [n for n in ("text", "conversations") if any((r["quality"].get(n) or {}).get("tokens") for r in results)]

    def both(r: dict[str, Any], key: str, fmt: str) -> str:
        return " / ".join(format(r["quality"][n][key], fmt) if (r["quality"].get(n) or {}).get("tokens") else "–"
                          for n in sets)

    lines = ["## Quants", "",
             (f"Measured against the merged model by `axpack verify` (numbers: {' / '.join(sets)}; "
             "KLD in nats per token)."), "",
             "| type | size (MiB) | mean KLD | same top-1 (%) | PPL ratio | pass |", "|---|---:|---:|---:|---:|---|"]
    for r in results:
        lines.append(f"| {r['type']} | {r['size'] / 2**20:.1f} | {both(r, 'mean_kld', '.4f')} | "
                     f"{both(r, 'top1', '.1f')} | {both(r, 'ppl_ratio', '.3f')} | "
                     + ("pass" if r.get("pass") else "FAIL: " + _cell("; ".join(r.get("failures") or [])[:300]))
                     + " |")
    lines.append("")
    return lines


def drift_section(verify_doc: dict[str, Any] | None, probe_doc: dict[str, Any] | None) -> list[str]:
    """"Learned the persona, did not forget English" as numbers: drift KLD (verify.json) + probe hit-rate."""
    from .verify_tables import drift_markdown

    lines = drift_markdown(verify_doc) if verify_doc else []
    c = (probe_doc or {}).get("checks") or {}
    if not lines and not c:
        return []
    out = ["## Drift from the base model", ""]
    if lines:
        out += [*lines, ""]
    else:
        out += ["No drift measurement in gguf/verify.json (run `axpack verify`, drift is on by default).", ""]
    if c:
        n = c.get("identity_questions", 0)
        out += [f"Persona hit-rate (identity answers naming **{_cell((probe_doc or {}).get('persona_name', ''))}**, "
                f"`axpack probe`): base {c.get('persona_in_base', '–')}/{n}, "
                f"tuned {c.get('persona_in_merged', '–')}/{n}"
                + "".join(f", {t} {v}/{n}" for t, v in sorted((c.get("persona_in_gguf") or {}).items())) + ".", ""]
    return out


def verify_markdown(doc: dict[str, Any]) -> list[str]:
    """The quant tables of ``gguf/verify.json`` (written by ``axpack verify``) as Markdown lines."""
    try:
        from .verify_tables import quality_markdown, table_markdown
    except ImportError:  # pragma: no cover - verify not installed
        return []
    q = quality_markdown(doc)
    return [*quant_table(doc), "## GGUF verification", "", *table_markdown(doc), "", *([*q, ""] if q else [])]


def build_report(run_dir: str | Path) -> tuple[Path, Path | None]:
    """Write ``RUN_DIR/report.md`` and ``RUN_DIR/loss.png``.

    Returns:
        (report.md path, loss.png path or None when no stage logged a loss).

    Raises:
        AxpackError: ``RUN_DIR`` missing, or it holds no trainer state at all
            (train first), or a probe.json / trainer_state.json is not valid JSON.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise AxpackError(f"{run_dir}: no such run folder; pass runs/<run> (e.g. runs/demo)")
    try:
        stages = load_stages(run_dir)
    except ValueError as err:
        raise AxpackError(f"{run_dir}: a trainer_state.json is not valid JSON ({err}); retrain or remove it") from None
    if not stages:
        raise AxpackError(f"{run_dir}: no trainer_state.json under sft/ or dpo/ (or their checkpoint-N/); "
                          "train first (make sft / make dpo)")
    summaries = {stage: summarize_stage(state) for stage, (_, state) in stages.items()}
    png = run_dir / "loss.png"
    has_curve = any(s["train"] or s["eval"] for s in summaries.values())
    if has_curve:
        plot(summaries, png)

    lines = [f"# Training report: {run_dir.name}", ""]
    if has_curve:
        lines += ["![loss curves](loss.png)", ""]
    for stage, (path, _) in stages.items():
        lines += stage_markdown(stage, path, summaries[stage], run_dir)
    verify_json = run_dir / "gguf" / "verify.json"
    vdoc = None
    if verify_json.is_file():
        try:
            vdoc = json.loads(verify_json.read_text())
            lines += verify_markdown(vdoc)
        except (ValueError, KeyError, TypeError):
            vdoc = None
            lines += ["## GGUF verification", "", f"`{verify_json}` is unreadable; rerun axpack verify.", ""]
    probe_json = run_dir / "probe.json"
    doc = None
    if probe_json.is_file():
        try:
            doc = json.loads(probe_json.read_text())
        except ValueError as err:
            raise AxpackError(f"{probe_json}: not valid JSON ({err}); rerun make probe") from None
        lines += probe_markdown(doc)
    try:
        lines += drift_section(vdoc, doc)
    except (KeyError, TypeError):
        lines += ["## Drift from the base model", "", (f"`{verify_json}` has an unreadable drift entry; "
                  "rerun axpack verify."), ""]
    md = run_dir / "report.md"
    atomic_write_text(md, "\n".join(lines).rstrip("\n") + "\n")
    return md, (png if has_curve else None)


@click.command("report")
@click.argument("run_dir", type=click.Path(file_okay=False))
def command(run_dir):
    """Write RUN_DIR/report.md and RUN_DIR/loss.png from the trainer state (+ probe.json)."""
    md, png = build_report(run_dir)
    click.echo(f"axpack: report -> {md}" + (f", {png}" if png else ""))
