"""Shape twins: every base model of the shipped configs has a tiny replica of
its own architecture, checkpoint layout, tokenizer and chat template, and every
shipped config runs its whole chain on it (axpack twin --chain: train -> merge
-> DPO on the merged SFT twin -> GGUF f16 + q8_0 -> verify -> label audit ->
serving parity). This replaces the SmolLM2-swap smoke.

Cost (2 busy cores): building the 5 twins ~1-3 min the first time (reused from
models/twins/ afterwards, fingerprinted); the chains ~1.5 min per config that
trains (10 of the 12 configs; the 8 GB/A100/ZeRO-2 variants share one run);
see the README's per-suite table. Tokenizer vectors: seconds.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from axpack import shape_twin
from axpack.cards import load_cards
from conftest import ROOT, run_axpack
from test_configs import CONFIGS, IDS

TWIN_CARDS = sorted(s.id for s in load_cards().values() if s.twin)
VOCABS = {"ggml-vocab-qwen35.gguf": "qwen3.5-9b", "ggml-vocab-qwen2.gguf": "qwen2.5-7b-instruct",
          "ggml-vocab-llama-bpe.gguf": "llama-3.2-3b-instruct"}
# llama.cpp's qwen35 vectors include NFD text ('é' as e + U+0301). The twin's tokenizer.json
# (what the converter puts into the GGUF, no normalizer, as the real Qwen3.5 file per these
# vectors) passes them; transformers 5.20.1 loads any qwen3_5 tokenizer as Qwen3_5Tokenizer,
# which hard-codes an NFC normalizer (tokenization_qwen3_5.py), so training sees precomposed
# text there: a real train/serve difference on NFD input, measured here, not a twin defect.
NFD_VECTORS = {"ggml-vocab-qwen35.gguf": 3}


def _header(path: Path) -> dict:
    with path.open("rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        return json.loads(fh.read(n))


def _vocab_dir() -> Path:
    d = shape_twin.vocab_dir()
    if not (d / "ggml-vocab-qwen35.gguf").is_file():
        pytest.skip(f"{d}: llama.cpp vocab GGUFs missing: run make setup (scripts/fetch-llama-cpp.sh)")
    return d


@pytest.fixture(scope="session")
def twins() -> dict[str, Path]:
    """card id -> twin folder (built once, then reused by fingerprint)."""
    _vocab_dir()
    out = {}
    for card in TWIN_CARDS:
        run_axpack("twin", card)
        out[card] = shape_twin.twins_root() / shape_twin.slug(card)
    return out


@pytest.mark.parametrize("card", TWIN_CARDS)
def test_twin_has_the_real_layout(card, twins):
    shape = load_cards()[card.lower()]
    d = twins[card]
    conf = json.loads((d / "config.json").read_text())
    text = conf.get("text_config") or conf
    assert conf["architectures"] == [shape.architecture]
    assert text["vocab_size"] == shape.vocab
    assert bool(conf.get("tie_word_embeddings", text.get("tie_word_embeddings"))) == shape.tied_embeddings
    if text["model_type"] != "qwen2":  # llama.cpp's qwen2 needs hidden = heads x head_dim (shape_twin.twin_config)
        assert text["head_dim"] == shape.head_dim
        assert text["num_attention_heads"] // text["num_key_value_heads"] == shape.heads // shape.kv_heads
    keys = set(_header(d / "model.safetensors")) - {"__metadata__"}
    assert ("lm_head.weight" in keys) == (not shape.tied_embeddings)
    rope = text.get("rope_parameters") or {}
    for k, v in ((shape.twin or {}).get("rope") or {}).items():
        assert rope.get(k) == v, k
    if shape.architecture == "Qwen3_5ForConditionalGeneration":
        assert {k.split(".")[0] + "." + k.split(".")[1] for k in keys if k.startswith("model.")} == \
            {"model.language_model", "model.visual"}
        assert any(k.startswith("mtp.layers.0.self_attn.q_proj") for k in keys)
        assert text["mtp_num_hidden_layers"] == 1
        assert text["layer_types"] == ["linear_attention"] * 3 + ["full_attention"]
        assert rope["mrope_section"] == [11, 11, 10] and rope["partial_rotary_factor"] == 0.25
        q = next(v for k, v in _header(d / "model.safetensors").items()
                 if k.endswith("layers.3.self_attn.q_proj.weight"))
        assert q["shape"][0] == 2 * text["num_attention_heads"] * 256, "attn_output_gate doubles q_proj"
    prefix = "model.language_model." if "language_model" in str(keys) else "model."
    assert (f"{prefix}layers.0.self_attn.q_proj.bias" in keys) == shape.attention_bias
    if shape.qk_norm:
        assert f"{prefix}layers.0.self_attn.q_norm.weight" in keys


@pytest.mark.parametrize("vocab", sorted(VOCABS))
def test_twin_tokenizer_passes_llama_cpp_vectors(vocab, twins):
    """The twin's tokenizer.json passes every test vector llama.cpp ships for its vocabulary;
    transformers' loaded tokenizer (what Axolotl trains with) too, except the NFD vectors."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    vd = _vocab_dir()
    twin = next(p for c, p in twins.items() if shape_twin.slug(c) == VOCABS[vocab])
    inp = (vd / f"{vocab}.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    out = (vd / f"{vocab}.out").read_text(encoding="utf-8").splitlines()
    assert len(out) >= 40
    raw = Tokenizer.from_file(str(twin / "tokenizer.json"))
    tok = AutoTokenizer.from_pretrained(str(twin))
    bad_raw = [s for s, o in zip(inp, out)
               if raw.encode(s, add_special_tokens=False).ids != [int(x) for x in o.split()]]
    bad_hf = [s for s, o in zip(inp, out) if tok.encode(s, add_special_tokens=False) != [int(x) for x in o.split()]]
    assert bad_raw == []
    assert len(bad_hf) == NFD_VECTORS.get(vocab, 0)
    import unicodedata

    assert all(unicodedata.normalize("NFC", s) != s for s in bad_hf), "only NFD inputs may differ"


def test_llama_twin_has_3_1_special_tokens_and_no_extra_row(twins):
    tok_dir = twins["meta-llama/Llama-3.2-3B-Instruct"]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    assert len(tok) == 128256, "transformers' GGUF conversion adds <|endoftext|> at 128256; the twin drops it"
    ids = tok.convert_tokens_to_ids(["<|eot_id|>", "<|eom_id|>", "<|python_tag|>", "<|finetune_right_pad_id|>"])
    assert ids == [128009, 128008, 128010, 128004]
    assert tok.eos_token == "<|eot_id|>" and tok.bos_token == "<|begin_of_text|>" and tok.pad_token is None


# make test runs one chain per distinct base/stage/method (make twins runs all 12):
# the rest differ from one of these only in batch/launcher/adapter lines (the 8 GB/A100/ZeRO-2
# variants resolve to one CPU YAML: test_variants_share_one_cpu_run), or are the demo's own
# SmolLM2 configs, which tests/test_e2e.py trains, merges and converts (conftest.trained_run)
IN_MAKE_TEST = ("qwen3.5-9b/sft-qlora.yaml", "qwen3.5-9b/dpo-qlora.yaml", "llama-3.2-3b/sft-qlora-script.yaml",
                "qwen2.5-7b/sft-qlora-v1.yaml", "qwen2.5-7b/dpo-qlora-planc.yaml", "llama-3.1-8b/sft-lora-style.yaml")
SAME_AS_V1 = "the same twin and method as sft-qlora-v1 (make twins runs it)"
SAME_AS_PERSONA = "the same twin and method as the persona SFT chain (make twins runs it)"
COVERED_BY = {"qwen2.5-7b/sft-qlora-8gb.yaml": SAME_AS_V1,
              "qwen2.5-7b/sft-qlora-8gb-packed.yaml": SAME_AS_V1,
              "qwen2.5-7b/sft-qlora-a100.yaml": "the 8 GB config's CPU run (test_variants_share_one_cpu_run)",
              "qwen2.5-7b/sft-qlora-a100-packed.yaml": SAME_AS_V1,
              "qwen2.5-7b/sft-qlora-zero2.yaml": "the 8 GB config's CPU run (test_variants_share_one_cpu_run)",
              "qwen2.5-7b/sft-qlora-v1-packed.yaml": SAME_AS_V1,
              "qwen2.5-7b/sft-qlora-v1-fsdp2.yaml": SAME_AS_V1 + "; FSDP2 itself cannot run on CPU",
              "qwen3.5-9b/sft-qlora-deltanet.yaml": SAME_AS_PERSONA,
              "qwen3.5-9b/sft-qlora-fsdp2.yaml": SAME_AS_PERSONA + "; FSDP2 itself cannot run on CPU",
              "llama-3.1-8b/sft-qlora-style.yaml": "sft-lora-style's twin, 4-bit base as the other QLoRA chains",
              "smollm2-135m/sft-lora.yaml": "tests/test_e2e.py (the real SmolLM2, whole chain)",
              "smollm2-135m/dpo-lora.yaml": "tests/test_e2e.py (the real SmolLM2, whole chain)",
              "smollm2-135m/kto-lora.yaml": "tests/test_prep_kto.py (real KTO steps on SmolLM2)"}


def test_every_config_is_chained_in_make_test_or_covered():
    ids = set(IDS)
    assert set(IN_MAKE_TEST) | set(COVERED_BY) == ids and not set(IN_MAKE_TEST) & set(COVERED_BY)


def test_variants_share_one_cpu_run(tmp_path):
    """The 8 GB / A100 / ZeRO-2 configs differ only in what --cpu overrides: one CPU YAML."""
    from axpack import smoke_run as smoke
    from axpack.config import load_config, resolve

    seen = set()
    for name in ("sft-qlora-8gb", "sft-qlora-a100", "sft-qlora-zero2"):
        path = ROOT / "configs" / "qwen2.5-7b" / f"{name}.yaml"
        cfg = load_config(path)
        model, why = smoke.cpu_model(cfg, path, build=False)
        ovs = smoke.smoke_overrides(cfg, tmp_path, 2, True, data_dir=tmp_path, model_dir=model, model_reason=why) \
            if (model / "tokenizer.json").is_file() else pytest.skip("the Qwen2.5 twin is not built yet")
        res = resolve(path, {o.key: o.value for o in ovs})
        seen.add(json.dumps({k: v for k, v in res.items() if k not in ("output_dir", "dataset_prepared_path")},
                            sort_keys=True, default=str))
    assert len(seen) == 1


@pytest.fixture(scope="session")
def chains(twins, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("twins")
    proc = run_axpack("twin", "--chain", *[f"configs/{c}" for c in IN_MAKE_TEST], "--out", out, check=False)
    summary = json.loads((out / "summary.json").read_text())
    return {"summary": summary, "proc": proc, "out": out}


@pytest.mark.e2e
@pytest.mark.parametrize("path", CONFIGS, ids=IDS)
def test_every_config_runs_its_chain_on_its_twin(path, request):
    name = str(path.relative_to(ROOT / "configs"))
    if name in COVERED_BY:
        pytest.skip(f"make twins runs it; in make test it is covered by {COVERED_BY[name]}")
    chains = request.getfixturevalue("chains")
    row = chains["summary"][str(path.relative_to(ROOT))]
    steps = ("train", "merge", "gguf", "verify", "labels", "serving_parity")
    assert {s: row[s] for s in steps} == dict.fromkeys(steps, "ok")
