"""axpack verify: GGUF metadata, logit agreement with the trained model, stops at EOT.

End to end on the shared trained run's export (tests/test_export.py
``exported``): the GGUFs pass against the merged model and fail against the
unmerged base — the proof that the merge happened and the GGUF is the trained
model.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from axpack.verification import THRESHOLDS, check_metadata, compare
from axpack.verify_tables import table_markdown
from conftest import ROOT, run_axpack
from test_export import exported  # noqa: F401 - shared session fixture


# ---------------------------------------------------------------- unit
def test_compare_counts_answer_positions_and_skips_near_ties():
    ref = np.zeros((6, 4), dtype=np.float32)
    ref[:, 0] = 5.0  # decisive everywhere ...
    ref[4, 1] = 4.9  # ... except position 4 (gap 0.1)
    got = ref.copy()
    got[0] = [0, 9, 0, 0]  # a prompt position disagrees: not counted in answer agreement
    got[4] = [0, 9, 0, 0]  # a near-tie answer position disagrees: only in raw_agreement
    got[5] = [5.0, 0, 0, 7.5]  # a decisive answer position disagrees
    c = compare([ref], [got], starts=[3])  # answer positions: 2..5
    assert c["raw_positions"] == 4 and c["positions"] == 3
    assert c["agreement"] == pytest.approx(100 * 2 / 3)
    assert c["raw_agreement"] == pytest.approx(50.0)
    assert c["all_agreement"] == pytest.approx(100 * 3 / 6)
    assert c["max_abs_dlogit"] == pytest.approx(7.5)  # answer positions only (position 0 is prompt)


class _Tok:
    chat_template = "{{ x }}"
    eos_token_id = 2


def test_metadata_checks_name_each_fault():
    good = {"architecture": "llama", "file_type": 15, "chat_template": "{{ x }}", "eos_token_id": 2,
            "n_tokens": 100, "embedding_rows": 128}
    assert check_metadata(good, "q4_k_m", _Tok(), "llama") == []
    bad = {**good, "file_type": 7, "chat_template": "other", "eos_token_id": 0, "n_tokens": 200,
           "architecture": "qwen2"}
    fails = " | ".join(check_metadata(bad, "q4_k_m", _Tok(), "llama"))
    for word in ("architecture qwen2", "file_type 7", "chat template differs", "EOS id 0", "200 tokens > 128"):
        assert word in fails


# ---------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def verified(exported):  # noqa: F811 - fixture imported above
    proc = run_axpack("verify", exported, "--threads", "1")
    assert "all 3 GGUFs pass" in proc.stdout
    return json.loads((exported / "verify.json").read_text())


@pytest.mark.e2e
def test_rerun_with_the_same_inputs_is_not_verified_again(verified, exported):  # noqa: F811 - fixture imported above
    before = (exported / "verify.json").stat().st_mtime_ns
    proc = run_axpack("verify", exported, "--threads", "1")
    assert "is current" in proc.stderr and "reference logits" not in proc.stderr
    assert "all 3 GGUFs pass" in proc.stdout  # the recorded tables are printed again
    assert (exported / "verify.json").stat().st_mtime_ns == before
    assert len(verified["inputs"]) == 64


@pytest.mark.e2e
def test_export_passes_thresholds(verified):
    by_type = {r["type"]: r for r in verified["results"]}
    assert set(by_type) == {"f16", "q4_k_m", "q8_0"} and verified["pass"]
    assert by_type["q8_0"]["agreement"] >= 99.0
    assert by_type["q4_k_m"]["agreement"] >= THRESHOLDS["q4_k_m"]
    assert by_type["f16"]["max_abs_dlogit"] < 1.0
    assert verified["positions"] >= 300
    for r in verified["results"]:
        assert r["tokenizer_match"] and r["chat_template_match"]
        assert r["stopped"] == r["stop_prompts"] == 3
        meta = r["metadata"]
        assert meta["architecture"] == "llama" and meta["eos_token_id"] == 2
        assert meta["n_tokens"] <= meta["embedding_rows"] == 49152
    assert verified["end_of_turn_ids"] == [2]  # <|im_end|> closes SmolLM2's assistant turn


@pytest.mark.e2e
def test_kld_per_quant_and_drift(verified, trained_run, demo_model):
    """Every GGUF carries KLD statistics on the shipped text and on the run's own
    conversations; Q8_0 is closer than Q4_K_M; drift finds the base through the merge
    chain and shows the fine-tune moved its conversations far more than general text."""
    q = verified["quality"]
    assert q["conversations"].endswith("runs/test-e2e/data/sft.jsonl") and q["eval_text"].endswith("eval-text.txt")
    assert q["tokens"]["text"] > 1000 and q["tokens"]["conversations"] == 2048
    by = {r["type"]: r["quality"] for r in verified["results"]}
    for s in ("text", "conversations"):
        assert by["f16"][s]["mean_kld"] < 0.001
        assert by["q8_0"][s]["mean_kld"] < by["q4_k_m"][s]["mean_kld"]
        assert by["q8_0"][s]["top1"] > by["q4_k_m"][s]["top1"]
    d = verified["drift"]
    assert (ROOT / d["base"]).resolve() == demo_model.resolve()
    assert d["conversations"]["mean_kld"] > 10 * d["text"]["mean_kld"]
    assert d["conversations"]["ppl_ref"] < d["conversations"]["ppl"]  # tuned fits its conversations better


@pytest.mark.e2e
def test_base_gguf_fails_every_gate_against_the_merged_model(trained_run, demo_model, tmp_path):
    """The deliberately broken quant: the unmerged base model's Q8_0 checked against the merged
    model fails argmax agreement and every KLD gate (mean, p99, top-1, PPL ratio), in one line;
    a non-default reference writes no verify.json."""
    from axpack.gguf_build import build_ggufs

    out = tmp_path / "base-gguf"
    build_ggufs(demo_model, out, "base", ["q8_0"])
    proc = run_axpack("verify", out, "--reference", trained_run["merged"], "--types", "q8_0", "--threads", "1",
                      "--conversations", trained_run["data_dir"] / "sft.jsonl", "--no-drift", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith("axpack: error: verify: 1 of 1 GGUFs failed against")
    assert "argmax agreement" in err
    for gate in ("mean KLD", "p99 KLD", "same top-1", "PPL ratio"):
        assert f"conversations: {gate}" in err, gate
    assert not (out / "verify.json").exists()  # a non-default reference never writes it


@pytest.mark.e2e
def test_report_folds_in_the_verify_table(verified, trained_run, tmp_path):
    from axpack.report import build_report
    from axpack.trainer_state import find_trainer_state

    run = tmp_path / "run"
    state = find_trainer_state(trained_run["sft_dir"])
    (run / "sft").mkdir(parents=True)
    shutil.copy2(state, run / "sft" / "trainer_state.json")
    (run / "gguf").mkdir()
    (run / "gguf" / "verify.json").write_text(json.dumps(verified))
    md, _ = build_report(run)
    text = md.read_text()
    assert "## GGUF verification" in text
    assert "\n".join(table_markdown(verified)) in text


def test_reference_without_safetensors_is_refused_before_loading(tmp_path):
    """A reference folder holding only pytorch_model.bin (a pickle) is one line, exit 1:
    transformers is never asked to unpickle it."""
    export = tmp_path / "gguf"
    export.mkdir()
    (export / "x-q8_0.gguf").write_bytes(b"GGUF")
    ref = tmp_path / "ref"
    ref.mkdir()
    (ref / "config.json").write_text("{}")
    (ref / "pytorch_model.bin").write_bytes(b"not really a pickle")
    (export / "manifest.json").write_text(json.dumps({"model_dir": str(ref), "artifacts": {
        "x-q8_0.gguf": {"type": "q8_0", "size": 4, "sha256": "0" * 64}}}))
    proc = run_axpack("verify", export, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert "no *.safetensors weights" in line and "pytorch_model.bin" in line and str(ref) in line
    assert not (export / "verify.json").exists()
