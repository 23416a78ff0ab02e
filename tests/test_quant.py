"""Quant quality statistics (axpack.quant_quality) and their gates, report table and drift section.

Unit tests only (about 5 s, most of it loading SmolLM2's tokenizer); the end-to-end
KLD measurement runs in tests/test_verify.py on the shared trained run.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from axpack import quant_quality as qq
from axpack.report import drift_section, quant_table
from axpack.verification import QUALITY_GATES, original_base, quality_failures


def test_identical_and_shifted_logits_have_zero_divergence():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(7, 50)).astype(np.float32) * 3
    y = rng.integers(0, 50, size=7)
    for got in (ref.copy(), ref + 4.0):  # softmax ignores a constant per row
        st = qq.token_stats(ref, got, y)
        s = qq.summarize(st)
        assert s["mean_kld"] == pytest.approx(0.0, abs=1e-6) and s["top1"] == 100.0
        assert s["ppl_ratio"] == pytest.approx(1.0, abs=1e-5) and s["rms_dp"] == pytest.approx(0.0, abs=1e-4)


def test_kld_ppl_and_dp_match_the_formulas():
    # two tokens: reference p = (0.8, 0.2), quant q = (0.4, 0.6); target token 0
    ref = np.log(np.array([[0.8, 0.2]], dtype=np.float32))
    got = np.log(np.array([[0.4, 0.6]], dtype=np.float32))
    st = qq.token_stats(ref, got, [0])
    want = 0.8 * np.log(0.8 / 0.4) + 0.2 * np.log(0.2 / 0.6)
    assert st["kld"][0] == pytest.approx(want, rel=1e-5)
    assert st["same_top1"][0] == 0.0
    s = qq.summarize(st)
    assert s["ppl_ratio"] == pytest.approx(0.8 / 0.4, rel=1e-5)  # exp(-log .4) / exp(-log .8)
    assert s["rms_dp"] == pytest.approx(100 * 0.4, rel=1e-4)
    # extra (padded) vocab columns of the quant are ignored
    padded = np.concatenate([got, np.full((1, 3), 50.0, dtype=np.float32)], axis=1)
    assert qq.token_stats(ref, padded, [0])["kld"][0] == pytest.approx(want, rel=1e-5)


def test_p99_and_windows_are_concatenated(tmp_path):
    rng = np.random.default_rng(1)
    windows = [list(rng.integers(0, 20, size=n)) for n in (5, 9)]
    files = []
    for i, w in enumerate(windows):
        f = tmp_path / f"ref-{i}.npy"
        np.save(f, rng.normal(size=(len(w), 20)).astype(np.float32))
        files.append(str(f))
    noisy = {}

    def logits_of(ids):  # the "quant": the reference plus noise
        ref = np.load(files[[list(w) for w in windows].index(list(ids))])
        noisy[len(ids)] = ref + rng.normal(scale=0.3, size=ref.shape).astype(np.float32)
        return noisy[len(ids)]

    st = qq.score_windows(logits_of, windows, files)
    assert len(st["kld"]) == 4 + 8  # every position but each window's last
    s = qq.summarize(st)
    assert s["p99_kld"] == pytest.approx(float(np.percentile(st["kld"], 99)))
    assert 0 < s["mean_kld"] < s["p99_kld"]
    assert qq.unpack(qq.pack(st))["dp"].tolist() == st["dp"].tolist()


@pytest.fixture(scope="module")
def tok(demo_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(demo_model))


def _covers(tok, text, windows):
    bos = tok.bos_token_id
    flat = [t for w in windows for t in (w[1:] if bos is not None and w and w[0] == bos else w)]
    return flat == list(tok(text, add_special_tokens=False)["input_ids"])


def test_windows_cover_the_shipped_text_once(tok):
    text = qq.EVAL_TEXT.read_text()
    convs = qq.read_conversations(qq.EVAL_TEXT.parents[3] / "data" / "demo" / "sft.jsonl")
    seqs = qq.build_sequences(tok, text, convs, chunk=256, conv_tokens=300)
    assert len(seqs["text"]) >= 4 and all(2 <= len(w) <= 256 for w in seqs["text"])
    assert _covers(tok, text, seqs["text"])
    used = sum(len(w) - 1 for w in seqs["conversations"])
    assert 250 <= used <= 300  # the token budget (scored positions)
    first = tok.apply_chat_template(convs[0], tokenize=False)
    assert tok.decode(seqs["conversations"][0]) == first  # rendered by the chat template
    assert qq.fingerprint(seqs) != qq.fingerprint(qq.build_sequences(tok, text, convs[1:], 256, 300))


def test_tiny_shakespeare_as_eval_text(tok, shared_data):
    text = (shared_data / "tinyshakespeare" / "input.txt").read_text()[:20000]
    seqs = qq.build_sequences(tok, text, None)
    assert "conversations" not in seqs and _covers(tok, text, seqs["text"])
    assert all(len(w) <= qq.CHUNK for w in seqs["text"])


def test_quality_gates_name_each_miss():
    good = {"tokens": 100, "mean_kld": 0.01, "p99_kld": 0.05, "top1": 95.0, "ppl_ratio": 1.01, "rms_dp": 1.0}
    assert quality_failures({"text": good}, QUALITY_GATES["q8_0"]) == []
    bad = {**good, "mean_kld": 0.5, "p99_kld": 3.0, "top1": 60.0, "ppl_ratio": 1.5}
    fails = quality_failures({"text": good, "conversations": bad}, QUALITY_GATES["q8_0"])
    assert [f.split(":")[0] for f in fails] == ["conversations"] * 4
    for word in ("mean KLD 0.5000 > 0.014", "p99 KLD 3.000 > 0.1", "same top-1 60.0 % < 92 %",
                 "PPL ratio 1.500 > 1.04"):
        assert any(word in f for f in fails), word
    assert quality_failures({"text": bad}, QUALITY_GATES.get("q3_k_m")) == []  # no gate: reported only
    for t, g in QUALITY_GATES.items():  # stricter types get stricter gates
        assert g["mean_kld"] <= QUALITY_GATES["q4_k_m"]["mean_kld"], t


def test_original_base_follows_the_merge_chain(tmp_path):
    base, sft, dpo = (tmp_path / n for n in ("base", "sft-merged", "merged"))
    for d in (base, sft, dpo):
        d.mkdir()
        (d / "config.json").write_text("{}")
    (sft / "axpack-merge.json").write_text(json.dumps({"base_dir": str(base)}))
    (dpo / "axpack-merge.json").write_text(json.dumps({"base_dir": str(sft)}))
    assert original_base(dpo) == base and original_base(sft) == base
    assert original_base(base) is None  # not a merge: nothing to compare against
    (sft / "axpack-merge.json").write_text(json.dumps({"base_dir": str(tmp_path / "gone")}))
    assert original_base(dpo) is None


def _q(kld, top1, ppl):
    return {"tokens": 500, "mean_kld": kld, "p99_kld": kld * 5, "top1": top1, "ppl_ratio": ppl, "ppl_ref": 20.0,
            "ppl": 20.0 * ppl, "rms_dp": 1.0}


def test_report_quant_table_and_drift():
    doc = {"results": [
        {"type": "q8_0", "size": 145 << 20, "pass": True, "failures": [],
         "quality": {"text": _q(0.0042, 95.5, 1.007), "conversations": _q(0.0071, 96.0, 1.02)}},
        {"type": "q4_k_m", "size": 100 << 20, "pass": False, "failures": ["text: mean KLD 0.3000 > 0.19"],
         "quality": {"text": _q(0.3, 70.0, 1.3), "conversations": _q(0.1, 88.0, 1.1)}}],
        "drift": {"base": "models/x", "reference": "runs/r/merged", "text": _q(0.08, 90.0, 1.0),
                  "conversations": _q(1.2, 60.0, 1.0)}}
    lines = quant_table(doc)
    assert "| q8_0 | 145.0 | 0.0042 / 0.0071 | 95.5 / 96.0 | 1.007 / 1.020 | pass |" in lines
    assert any(x.startswith("| q4_k_m | 100.0 | 0.3000 / 0.1000 |") and "FAIL: text: mean KLD" in x for x in lines)
    probe = {"persona_name": "Juniper", "checks": {"identity_questions": 5, "persona_in_base": 0,
                                                   "persona_in_merged": 5, "persona_in_gguf": {"q4_k_m": 4}}}
    text = "\n".join(drift_section(doc, probe))
    assert "| text | 500 | 0.0800 |" in text and "| conversations | 500 | 1.2000 |" in text
    assert "base 0/5, tuned 5/5, q4_k_m 4/5" in text
    assert quant_table({"results": [{"type": "q8_0", "size": 1}]}) == []  # a verify.json from before KLD
    from axpack.verify_tables import quality_markdown

    doc["quality"] = {"reference": "the HF model r", "eval_text": "/x/eval-text.txt", "eval_text_sha256": "ab" * 32,
                      "conversations": "runs/r/data/sft.jsonl", "window": 512}
    for r in doc["results"]:
        r["file"], r["quality_gates"] = f"r-{r['type']}.gguf", QUALITY_GATES[r["type"]]
        r["quality"] = dict(sorted(r["quality"].items()))  # as verify.json stores it: keys sorted
    rows = [x for x in quality_markdown(doc) if x.startswith("| r-")]
    assert [x.split(" | ")[2] for x in rows] == ["text", "conversations"] * 2  # text first, whatever the JSON order
    assert rows[0].startswith("| r-q8_0.gguf | q8_0 | text | 500 | 0.0042 | 0.021 | 95.5 % | 1.007 |")
    assert drift_section(None, None) == []
