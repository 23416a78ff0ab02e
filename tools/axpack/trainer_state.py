"""Engine: read the trainer state HF ``Trainer`` (Axolotl, TRL) saves and summarize a stage.

``trainer_state.json`` is written in ``output_dir`` at the end and in every
``checkpoint-N/``; its ``log_history`` holds one entry per logged step
(``loss``, ``learning_rate``, DPO's ``rewards/*``), one per eval
(``eval_loss``) and a final summary (``train_loss``, ``train_runtime``).
Used by ``axpack report`` (curves and tables) and ``axpack push`` (the model
card's training metrics).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

STAGES = ("sft", "dpo")
STATE_FILE = "trainer_state.json"
DPO_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")
# Eval loss this far (relative) above its best, at the last eval, while train
# loss went down over the same steps -> flagged as overfitting. 2 % is above
# the step-to-step noise of eval loss on a fixed validation set (eval is
# deterministic: same data, no dropout), so a rise this size is a trend.
OVERFIT_RISE = 0.02


def find_trainer_state(stage_dir: Path) -> Path | None:
    """The most advanced ``trainer_state.json`` under ``stage_dir``.

    Looks at ``stage_dir/trainer_state.json`` and ``stage_dir/checkpoint-*/trainer_state.json``
    and returns the one with the largest ``global_step`` (ties: the top-level
    file), or None when there is none or none is readable.
    """
    candidates = [stage_dir / STATE_FILE] + sorted(stage_dir.glob(f"checkpoint-*/{STATE_FILE}"))
    best: tuple[int, int, Path] | None = None
    for i, path in enumerate(candidates):
        if not path.is_file():
            continue
        try:
            step = int(json.loads(path.read_text()).get("global_step") or 0)
        except (OSError, ValueError, TypeError):
            continue
        key = (step, -i if i == 0 else 0, path)
        if best is None or key[:2] > best[:2]:
            best = key
    return best[2] if best else None


def is_finite(x: Any) -> bool:
    """True for a finite int/float (not a bool, NaN or inf): a number worth plotting."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def series(log_history: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    """``[(step, value)]`` for every log entry holding a finite ``key``, by step.

    Training entries hold ``loss``; evaluation entries hold ``eval_loss``; the
    final summary entry holds ``train_loss`` (not ``loss``), so it is not
    mistaken for a step's loss.
    """
    out = [(int(e["step"]), float(e[key])) for e in log_history
           if isinstance(e, dict) and "step" in e and is_finite(e.get(key))]
    return sorted(out, key=lambda p: p[0])


def summarize_stage(state: dict[str, Any]) -> dict[str, Any]:
    """Numbers for one stage from a trainer state dict (HF ``TrainerState`` JSON).

    Returns:
        ``{"steps", "epoch", "train": {...}, "eval": {...} | None, "gap": float | None,
        "overfit": str | None, "dpo": {...} | None}`` where ``train``/``eval`` hold
        ``final``, ``final_step``, ``best``, ``best_step`` and ``points``. ``gap`` is the
        last eval loss minus the mean training loss over the steps since the
        previous eval (one training step's loss is too noisy to compare).
    """
    hist = state.get("log_history") or []
    train = series(hist, "loss")
    evals = series(hist, "eval_loss")
    out: dict[str, Any] = {"steps": int(state.get("global_step") or (train[-1][0] if train else 0)),
                           "epoch": state.get("epoch"), "train": _stats(train), "eval": _stats(evals),
                           "gap": None, "overfit": None, "dpo": None}
    if evals and train:
        last_step = evals[-1][0]
        prev_step = evals[-2][0] if len(evals) > 1 else -1
        window = [v for s, v in train if prev_step < s <= last_step] or [
            min(train, key=lambda p: abs(p[0] - last_step))[1]]
        out["gap"] = evals[-1][1] - sum(window) / len(window)
        best_eval, best_step = out["eval"]["best"], out["eval"]["best_step"]
        train_at_best = [v for s, v in train if s <= best_step]
        if (best_step < last_step and evals[-1][1] > best_eval * (1 + OVERFIT_RISE)
                and train_at_best and train[-1][1] < train_at_best[-1]):
            out["overfit"] = (f"eval loss rose {evals[-1][1] - best_eval:+.4f} "
                              f"({(evals[-1][1] / best_eval - 1) * 100:+.1f} %) after its best at step {best_step} "
                              f"while training loss kept falling: overfitting; use the checkpoint near step "
                              f"{best_step}, fewer epochs, or more data")
    if any(k in e for e in hist if isinstance(e, dict) for k in DPO_KEYS):
        out["dpo"] = {k: _stats(series(hist, k)) for k in DPO_KEYS}
    return out


def _stats(points: list[tuple[int, float]]) -> dict[str, Any] | None:
    if not points:
        return None
    best_step, best = min(points, key=lambda p: (p[1], p[0]))
    return {"final": points[-1][1], "final_step": points[-1][0], "best": best, "best_step": best_step,
            "points": points}


def load_stages(run_dir: Path) -> dict[str, tuple[Path, dict[str, Any]]]:
    """``{stage: (trainer_state path, state dict)}`` for every stage that has one."""
    found = {}
    for stage in STAGES:
        path = find_trainer_state(run_dir / stage)
        if path is not None:
            found[stage] = (path, json.loads(path.read_text()))
    return found
