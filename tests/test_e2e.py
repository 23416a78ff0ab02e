"""End to end on CPU: the shared trained run -> GGUF Q4_K_M -> probe answers.

Costs ~4-6 min cold on 2 cores (SFT 3 steps, DPO 2 steps, two merges, one
conversion, one quantization, probe of 3 models); seconds when warm.
"""

from __future__ import annotations

import json

import pytest
from conftest import run_axpack
from safetensors import safe_open

pytestmark = pytest.mark.e2e


def _tensor(folder, name):
    with safe_open(str(folder / "model.safetensors"), "pt") as fh:
        return fh.get_tensor(name)


def test_training_left_adapters_and_merges(trained_run, demo_model):
    for stage in ("sft_dir", "dpo_dir"):
        assert (trained_run[stage] / "adapter_model.safetensors").is_file()
        assert (trained_run[stage] / "axpack-done.json").is_file()
    # Each merge really folded a delta in: the q_proj of layer 0 changed at
    # every step of Plan C (base -> sft-merged -> merged).
    name = "model.layers.0.self_attn.q_proj.weight"
    base, sft, final = (_tensor(p, name) for p in (demo_model, trained_run["sft_merged"], trained_run["merged"]))
    assert (sft - base).abs().max() > 0
    assert (final - sft).abs().max() > 0
    # The merged folder carries the tokenizer the model was trained with.
    assert (trained_run["merged"] / "tokenizer.json").is_file()


def test_rerun_of_finished_steps_is_skipped(trained_run):
    proc = run_axpack("train", trained_run["sft_config"], "--stage", "sft")
    assert "skipping" in proc.stdout
    proc = run_axpack("merge", trained_run["sft_config"])
    assert "skipping" in proc.stdout


@pytest.fixture(scope="session")
def e2e_gguf(trained_run):
    run = trained_run["run_dir"]
    out = run / "gguf"
    run_axpack("gguf", trained_run["merged"], "--out", out, "--name", run.name, "--quants", "q4_k_m")
    return out


def test_gguf_manifest_matches_files(e2e_gguf):
    from axpack.fsutil import sha256_file

    manifest = json.loads((e2e_gguf / "manifest.json").read_text())["artifacts"]
    assert set(manifest) == {"test-e2e-f16.gguf", "test-e2e-q4_k_m.gguf"}
    for name, entry in manifest.items():
        path = e2e_gguf / name
        assert entry["sha256"] == sha256_file(path)
        assert entry["size"] == path.stat().st_size
    # Q4_K_M is much smaller than the f16 intermediate.
    assert manifest["test-e2e-q4_k_m.gguf"]["size"] < 0.6 * manifest["test-e2e-f16.gguf"]["size"]
    assert not list(e2e_gguf.glob("*.tmp")), "no temp files left behind"


def test_probe_answers_and_stops_at_end_of_turn(trained_run, e2e_gguf, demo_model):
    run = trained_run["run_dir"]
    run_axpack("probe", run, "--base", demo_model, "--persona", "Juniper", "--max-new-tokens", "48")
    doc = json.loads((run / "probe.json").read_text())
    assert doc["persona_name"] == "Juniper"
    assert len(doc["answers"]) == doc["checks"]["answers"] >= 5
    for a in doc["answers"]:
        assert a["base"].strip() and a["merged"].strip() and a["gguf"]["q4_k_m"].strip()
    # The GGUF's own chat template + EOS must end answers at <|im_end|>, not at the limit.
    assert doc["checks"]["gguf_stopped_at_eot"]["q4_k_m"] >= len(doc["answers"]) - 1
    # General knowledge survives a few steps of training.
    france = next(a for a in doc["answers"] if "France" in a["question"])
    assert "Paris" in france["gguf"]["q4_k_m"]
