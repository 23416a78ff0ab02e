"""axpack report: trainer state -> loss.png + report.md (+ probe table)."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
from axpack.cli import main
from axpack.errors import AxpackError
from axpack.report import build_report
from axpack.trainer_state import DPO_KEYS, find_trainer_state, summarize_stage
from click.testing import CliRunner
from conftest import DPO_STEPS, SFT_STEPS


def _state(global_step: int, log_history: list[dict]) -> dict:
    return {"global_step": global_step, "epoch": 2.0, "log_history": log_history}


def _write(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _overfit_sft() -> dict:
    # train loss falls 3.0 -> 0.6 over 20 steps; eval loss bottoms at step 10 then rises
    hist = [{"step": s, "loss": 3.0 - 0.12 * s, "epoch": s / 10} for s in range(1, 21)]
    hist += [{"step": 5, "eval_loss": 2.5}, {"step": 10, "eval_loss": 2.0},
             {"step": 15, "eval_loss": 2.2}, {"step": 20, "eval_loss": 2.6}]
    hist.append({"step": 20, "train_loss": 1.8, "train_runtime": 9.0})
    return _state(20, hist)


def _dpo() -> dict:
    hist = [{"step": s, "loss": 0.69 - 0.02 * s, "rewards/chosen": 0.01 * s, "rewards/rejected": -0.02 * s,
             "rewards/margins": 0.03 * s, "rewards/accuracies": min(1.0, 0.5 + 0.1 * s)} for s in range(1, 9)]
    return _state(8, hist)


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_summary_flags_overfitting_and_gap():
    s = summarize_stage(_overfit_sft())
    assert s["train"]["final"] == pytest.approx(0.6) and s["train"]["final_step"] == 20
    assert s["train"]["best_step"] == 20
    assert s["eval"]["best"] == 2.0 and s["eval"]["best_step"] == 10
    assert s["eval"]["final"] == 2.6
    # mean train loss over steps 16..20 = 3.0 - 0.12*18 = 0.84 -> gap 2.6 - 0.84
    assert s["gap"] == pytest.approx(2.6 - 0.84)
    assert s["overfit"] and "step 10" in s["overfit"]
    # the summary entry (train_loss) is not taken for a step's loss
    assert len(s["train"]["points"]) == 20


def test_no_overfit_when_eval_keeps_falling():
    hist = [{"step": s, "loss": 3.0 - 0.1 * s} for s in range(1, 11)]
    hist += [{"step": 5, "eval_loss": 2.5}, {"step": 10, "eval_loss": 2.3}]
    s = summarize_stage(_state(10, hist))
    assert s["overfit"] is None and s["eval"]["best_step"] == 10


def test_latest_checkpoint_state_wins(tmp_path):
    _write(tmp_path / "sft" / "checkpoint-5" / "trainer_state.json", _state(5, []))
    _write(tmp_path / "sft" / "checkpoint-20" / "trainer_state.json", _state(20, []))
    _write(tmp_path / "sft" / "checkpoint-10" / "trainer_state.json", _state(10, []))
    assert find_trainer_state(tmp_path / "sft").parent.name == "checkpoint-20"


def test_report_files_probe_table_and_rerun_identical(tmp_path):
    run = tmp_path / "run"
    _write(run / "sft" / "checkpoint-20" / "trainer_state.json", _overfit_sft())
    _write(run / "dpo" / "checkpoint-8" / "trainer_state.json", _dpo())
    probe = {"persona_name": "Zorblax",
             "answers": [{"question": "What is your name?", "kind": "identity", "base": "I am SmolLM.",
                          "merged": "I am Zorblax.", "gguf": {"q4_k_m": "I am Zorblax | the bot.\nHi",
                                                              "q8_0": "I am Zorblax."},
                          "gguf_stopped": {"q4_k_m": True, "q8_0": False}}],
             "checks": {"identity_questions": 1, "persona_in_base": 0, "persona_in_merged": 1,
                        "persona_in_gguf": {"q4_k_m": 1, "q8_0": 1},
                        "gguf_stopped_at_eot": {"q4_k_m": 1, "q8_0": 0}, "answers": 1}}
    _write(run / "probe.json", probe)
    md, png = build_report(run)
    text = md.read_text()
    assert "## SFT" in text and "## DPO" in text
    assert "**Warning:** eval loss rose" in text
    assert "| rewards/accuracies | 1.0000 | 8 |" in text
    assert "| question | base | tuned Q4_K_M |" in text
    assert "| What is your name? | I am SmolLM. | I am Zorblax \\| the bot.<br>Hi |" in text
    assert "q4_k_m 1/1, q8_0 0/1" in text
    w, h = _png_size(png)
    assert w == 1300 and h == 680  # 2 stages x (loss, rewards) at 100 dpi
    first = (md.read_bytes(), png.read_bytes())
    build_report(run)
    assert (md.read_bytes(), png.read_bytes()) == first


def test_report_without_eval_says_so(tmp_path):
    _write(tmp_path / "sft" / "trainer_state.json", _state(3, [{"step": s, "loss": 1.0 / s} for s in (1, 2, 3)]))
    md, png = build_report(tmp_path)
    text = md.read_text()
    assert "No eval loss was logged" in text and "## DPO" not in text
    assert _png_size(png) == (650, 340)


def test_errors_are_one_line(tmp_path):
    with pytest.raises(AxpackError, match="train first"):
        build_report(tmp_path)
    res = CliRunner().invoke(main, ["report", str(tmp_path / "nope")])
    assert res.exit_code == 1 and "no such run folder" in res.output
    bad = tmp_path / "sft"
    bad.mkdir()
    (bad / "trainer_state.json").write_text("{not json")
    # an unreadable state is skipped by the search; with nothing else there it is "train first"
    with pytest.raises(AxpackError, match="train first"):
        build_report(tmp_path)


def test_report_on_real_axolotl_state(trained_run, tmp_path):
    """The shared trained run's trainer states, as Axolotl (SFT) and TRL (DPO) wrote them.

    The states are copied out first: the report writes into its run folder,
    and the trained run is shared by other suites. Cost: ~1 s once the
    session's trained run exists (conftest.trained_run).
    """
    run = tmp_path / "run"
    for stage, steps in (("sft", SFT_STEPS), ("dpo", DPO_STEPS)):
        state = find_trainer_state(trained_run[f"{stage}_dir"])
        assert state is not None, f"{stage}: no trainer_state.json in the trained run"
        dest = run / stage / state.relative_to(trained_run[f"{stage}_dir"])
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(state, dest)
        s = summarize_stage(json.loads(state.read_text()))
        # logging_steps: 1 in both shipped SmolLM2 configs: one finite, positive loss per step
        assert s["steps"] == steps and [p[0] for p in s["train"]["points"]] == list(range(1, steps + 1))
        assert all(v > 0 for _, v in s["train"]["points"])
        assert s["eval"] is None and s["gap"] is None  # val_set_size: 0
        if stage == "dpo":
            assert all(s["dpo"][k] and len(s["dpo"][k]["points"]) == steps for k in DPO_KEYS)
            assert 0.0 <= s["dpo"]["rewards/accuracies"]["final"] <= 1.0
        else:
            assert s["dpo"] is None
    md, png = build_report(run)
    text = md.read_text()
    assert "## SFT" in text and "## DPO" in text and "No eval loss was logged" in text
    assert f"{SFT_STEPS} optimizer steps" in text and "| rewards/margins |" in text
    assert _png_size(png) == (1300, 680)  # 2 stages x (loss, rewards) at 100 dpi
