"""KTO end to end: labelled records -> ``axpack prep --labels kto`` -> the
shipped configs/smollm2-135m/kto-lora.yaml trains on them (issue 15).

Cost: the rendering test ~10 s (a tokenizer); the training test is one
real Axolotl KTO run of 2 steps on SmolLM2 (about 1.5 min of CPU here,
most of it Axolotl's start-up), with its data prepped by the config's own
``# Data:`` command.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import orjson
import yaml
from conftest import ROOT, run_axpack, write_test_config

CONFIG = ROOT / "configs" / "smollm2-135m" / "kto-lora.yaml"


def _prep_as_documented(tmp_path: Path) -> Path:
    """Run the config's ``# Data:`` command with --out under tmp_path; return kto.jsonl."""
    line = re.search(r"^# Data: axpack (prep .+)$", CONFIG.read_text(encoding="utf-8"), re.MULTILINE).group(1)
    args = shlex.split(line)
    out = tmp_path / "data"
    args[args.index("--out") + 1] = str(out)
    run_axpack(*args, "-q")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["outputs"]["kto"]["kept"] == 80 and summary["totals"]["rejected"] == 0
    assert (out / "sft.jsonl").read_bytes() == b""  # no labelled answer became an SFT target
    return out / "kto.jsonl"


def test_kto_examples_render_as_smollm2_serves_them(tmp_path, demo_model):
    """What is trained is what is served: Axolotl's chatml.argilla_chat
    transform (the config's dataset type) turns each kto.jsonl row into the
    exact text SmolLM2's own chat template gives the same turns, prompt
    (with the generation prompt) and answer (with <|im_end|>)."""
    from axolotl.prompt_strategies.kto.chatml import argilla_chat
    from transformers import AutoTokenizer

    cfg = yaml.safe_load(CONFIG.read_text())
    assert cfg["datasets"][0]["type"] == "chatml.argilla_chat"
    tok = AutoTokenizer.from_pretrained(demo_model)
    rows = [orjson.loads(x) for x in _prep_as_documented(tmp_path).read_bytes().splitlines()]
    assert {r["label"] for r in rows} == {True, False}
    transform = argilla_chat(cfg)
    for row in rows:
        turns = row["completion"]
        sample = transform(json.loads(json.dumps(row)))
        served_prompt = tok.apply_chat_template(turns[:-1], tokenize=False, add_generation_prompt=True)
        # the served prompt with no system turn (prep wrote SmolLM2's default one)
        assert tok.apply_chat_template(turns[1:-1], tokenize=False, add_generation_prompt=True) == served_prompt
        assert sample["prompt"] == served_prompt
        served_all = tok.apply_chat_template(turns, tokenize=False)
        assert served_prompt + sample["completion"] + "\n" == served_all
        assert sample["label"] is row["label"]


def test_kto_config_trains_two_steps(tmp_path, demo_model):
    """The shipped KTO config trains on prep's kto.jsonl: 2 real steps on
    CPU, an adapter is written, and each step logs KTO's metrics (its KL
    estimate and the log-probs of the desirable and/or undesirable answers
    in its batch of 2; TRL logs a side only when the batch holds one)."""
    data = _prep_as_documented(tmp_path)
    out = tmp_path / "run"
    cfg = write_test_config(CONFIG, tmp_path / "kto.yaml", {
        "datasets.0.path": str(data),
        "output_dir": str(out),
        "dataset_prepared_path": str(tmp_path / "prepared"),
        "micro_batch_size": 2,  # the least TRL's KTO accepts: cheaper than the shipped 4
        "saves_per_epoch": None,
        "save_steps": 2,
        "dataloader_num_workers": 0,  # as axpack smoke --cpu: a prefetching worker competes for the 2 cores
        "dataset_num_proc": 1,  # tokenizing 80 rows in 2 forked processes costs more than it saves
    })
    run_axpack("train", cfg, "--max-steps", "2", timeout=1200)
    assert (out / "adapter_model.safetensors").is_file()
    state = json.loads(next(out.glob("checkpoint-*/trainer_state.json")).read_text())
    steps = [h for h in state["log_history"] if "loss" in h]
    assert len(steps) == 2
    assert all("kl" in h and ("logps/chosen" in h or "logps/rejected" in h) for h in steps), steps
    assert all(h["loss"] == h["loss"] and h["grad_norm"] > 0 for h in steps), steps  # finite loss, real gradients
