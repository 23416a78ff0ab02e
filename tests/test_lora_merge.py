"""axpack's streaming LoRA merge against PEFT's merge_and_unload, bit for bit.

Tiny random Llama models (no download) saved in several shards, adapters made
with PEFT and given random lora_B (PEFT initialises B to zero, which would make
every merge trivially equal), then every tensor of both merges compared
bitwise. One case runs on the embedded SmolLM2-135M.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from axpack.errors import AxpackError
from axpack.lora_merge import QLoraSpec, iter_tensors, merge_lora, pattern_key

ROOT = Path(__file__).resolve().parents[1]
LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_llama(path: Path, dtype=torch.float32, vocab: int = 256, tie: bool = False, seed: int = 0) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=tie)
    model = LlamaForCausalLM(cfg).to(dtype)
    # several shards, so the per-shard streaming and the index are exercised
    model.save_pretrained(path, max_shard_size="60KB")
    return path


def make_adapter(base: Path, dest: Path, seed: int = 1, adapter_dtype=None, **lora_kwargs) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype="auto")
    kwargs = {"r": 8, "lora_alpha": 16, "target_modules": LINEAR, "lora_dropout": 0.0}
    kwargs.update(lora_kwargs)
    pm = get_peft_model(model, LoraConfig(**kwargs))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    if adapter_dtype is not None:
        pm = pm.to(adapter_dtype)
    pm.save_pretrained(dest)
    return dest


def peft_merge(base: Path, adapter: Path) -> dict[str, torch.Tensor]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype="auto")
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def assert_bit_identical(ours_dir: Path, ref: dict[str, torch.Tensor], base: Path) -> int:
    """Every stored tensor equal bitwise to PEFT's; returns how many differ from the base."""
    base_t = dict(iter_tensors(base))
    ours = dict(iter_tensors(ours_dir))
    assert set(ours) == set(base_t)
    changed = 0
    for name, t in ours.items():
        r = ref[name]
        assert t.dtype == r.dtype == base_t[name].dtype, name
        assert torch.equal(bits(t), bits(r)), f"{name}: differs from PEFT merge_and_unload"
        changed += not torch.equal(bits(t), bits(base_t[name]))
    return changed


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("bases")
    return {"f32": tiny_llama(root / "f32"), "bf16": tiny_llama(root / "bf16", torch.bfloat16)}


CASES = {
    "lora-f32": ("f32", {}, None),
    "lora-bf16": ("bf16", {}, None),
    "lora-bf16-adapter-bf16": ("bf16", {}, torch.bfloat16),
    "rslora": ("bf16", {"use_rslora": True, "r": 4, "lora_alpha": 7}, None),
    "rank-alpha-patterns": ("f32", {"rank_pattern": {"q_proj": 4, "layers.1.mlp.down_proj": 2},
                                    "alpha_pattern": {"v_proj": 3, r"layers\.0\..*up_proj": 40}}, None),
    "subset-and-modules-to-save": ("f32", {"target_modules": ["q_proj", "v_proj"], "modules_to_save": ["lm_head"]},
                                   None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bit_identical_to_peft(case, bases, tmp_path):
    base_key, kwargs, adapter_dtype = CASES[case]
    base = bases[base_key]
    adapter = make_adapter(base, tmp_path / "adapter", adapter_dtype=adapter_dtype, **kwargs)
    res = merge_lora(base, adapter, tmp_path / "out")
    ref = peft_merge(base, adapter)
    changed = assert_bit_identical(tmp_path / "out", ref, base)
    targets = len(kwargs.get("target_modules", LINEAR)) * 2
    assert len(res.merged) == targets and changed == targets + len(res.replaced)
    assert (tmp_path / "out" / "model.safetensors.index.json").read_bytes() == \
        (base / "model.safetensors.index.json").read_bytes()
    assert len(list((tmp_path / "out").glob("*.safetensors"))) == len(list(base.glob("*.safetensors"))) > 1


def test_patterns_follow_peft_rule():
    from peft.utils.other import get_pattern_key

    pats = ["q_proj", r"layers\.0\..*up_proj", "mlp.down_proj"]
    for key in ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.up_proj", "model.layers.1.mlp.up_proj",
                "model.layers.3.mlp.down_proj", "model.layers.3.self_attn.xq_proj"]:
        assert pattern_key(pats, key) == get_pattern_key(pats, key)


def test_refuses_dora(bases, tmp_path):
    adapter = make_adapter(bases["f32"], tmp_path / "dora", use_dora=True)
    with pytest.raises(AxpackError, match="DoRA"):
        merge_lora(bases["f32"], adapter, tmp_path / "out")


def test_refuses_resized_embeddings(bases, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(bases["f32"])
    model.resize_token_embeddings(300)
    pm = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["embed_tokens", "lm_head"]))
    pm.save_pretrained(tmp_path / "resized")
    with pytest.raises(AxpackError, match="resized embeddings"):
        merge_lora(bases["f32"], tmp_path / "resized", tmp_path / "out")
    # Axolotl also writes the resized config.json beside the adapter: refused before any tensor is read
    model.config.save_pretrained(tmp_path / "resized")
    with pytest.raises(AxpackError, match=r"resized embeddings \(vocab_size 256 -> 300"):
        merge_lora(bases["f32"], tmp_path / "resized", tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def test_refuses_wrong_base(bases, tmp_path):
    other = tiny_llama(tmp_path / "other", vocab=256)
    cfg = json.loads((other / "config.json").read_text())
    adapter = make_adapter(bases["f32"], tmp_path / "a")
    # same architecture, different width -> shapes disagree
    from transformers import LlamaConfig, LlamaForCausalLM

    wide = LlamaForCausalLM(LlamaConfig(**{**{k: cfg[k] for k in ("vocab_size", "num_hidden_layers",
                                                                    "num_attention_heads", "num_key_value_heads")},
                                           "hidden_size": 96, "intermediate_size": 128}))
    wide.save_pretrained(tmp_path / "wide")
    with pytest.raises(AxpackError, match="different base model"):
        merge_lora(tmp_path / "wide", adapter, tmp_path / "out")


def test_nf4_roundtrip_matches_a_real_4bit_load(bases, tmp_path):
    """QLoRA default: the delta lands on exactly the weights a bitsandbytes 4-bit load dequantizes to."""
    bnb = pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    base = bases["bf16"]
    adapter = make_adapter(base, tmp_path / "q", target_modules=["q_proj", "down_proj"])
    spec = QLoraSpec(base="nf4", dtype="bfloat16")
    res = merge_lora(base, adapter, tmp_path / "out", qlora=spec)
    assert "round trip" in res.qlora and res.roundtripped == 7 * 2
    qcfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)
    try:
        q = AutoModelForCausalLM.from_pretrained(base, quantization_config=qcfg, dtype=torch.bfloat16,
                                                 device_map="cpu")
    except Exception as err:  # noqa: BLE001 - report why the reference could not be built
        pytest.skip(f"bitsandbytes 4-bit load unavailable on this machine: {err}")
    from axpack.lora_merge import delta_for, load_adapter, plan_targets

    cfg, tensors = load_adapter(adapter)
    targets, _ = plan_targets(cfg, tensors, adapter)
    ours = dict(iter_tensors(tmp_path / "out"))
    n = 0
    for name, mod in q.named_modules():
        if isinstance(mod, bnb.nn.Linear4bit):
            seen = bnb.functional.dequantize_4bit(mod.weight.data, mod.weight.quant_state)
            key = name + ".weight"
            want = seen if key not in targets else (seen.float() + delta_for(targets[key], tensors)).to(seen.dtype)
            assert torch.equal(bits(ours[key]), bits(want)), key
            n += 1
    assert n == 14
    # pristine: the plain merge into the original weights (differs from the NF4 one)
    res2 = merge_lora(base, adapter, tmp_path / "pristine", qlora=QLoraSpec(base="pristine"))
    assert "pristine" in res2.qlora and res2.roundtripped == 0
    assert_bit_identical(tmp_path / "pristine", peft_merge(base, adapter), base)


def test_smollm2_bit_identical(tmp_path):
    base = ROOT / "models" / "smollm2-135m-instruct"
    if not (base / "config.json").is_file():
        pytest.skip("models/smollm2-135m-instruct missing: run make setup")
    adapter = make_adapter(base, tmp_path / "adapter", r=8, lora_alpha=16)
    res = merge_lora(base, adapter, tmp_path / "out")
    assert len(res.merged) == 30 * 7
    ref = peft_merge(base, adapter)
    ours = dict(iter_tensors(tmp_path / "out"))
    for name, t in ours.items():
        assert torch.equal(bits(t), bits(ref[name])), name


def test_qlora_settings_follow_the_training_config():
    from axpack.merging import qlora_spec

    assert qlora_spec({"adapter": "lora"}) is None
    s = qlora_spec({"adapter": "qlora", "load_in_4bit": True, "bf16": "auto"})
    assert (s.base, s.dtype, s.blocksize, s.double_quant, s.quant_type) == ("nf4", "bfloat16", 64, True, "nf4")
    s = qlora_spec({"adapter": "qlora", "bf16": False, "fp16": False,
                    "bnb_config_kwargs": {"bnb_4bit_use_double_quant": False, "llm_int8_skip_modules": ["o_proj"]}},
                   base="pristine")
    assert (s.base, s.dtype, s.double_quant, s.skip_modules) == ("pristine", "float32", False, ("o_proj",))
    assert "pristine" in s.describe() and "round trip" in QLoraSpec().describe()


def test_qwen35_twin_merge_keeps_the_checkpoint_layout(tmp_path):
    """An adapter named as Qwen3_5ForCausalLM names modules (model.layers.N..., what PEFT
    saves when AutoModelForCausalLM loads the checkpoint) merges into the stored
    model.language_model.* tensors; model.visual.* and mtp.* pass through byte for byte,
    and the merged folder is still Qwen3_5ForConditionalGeneration (QLoRA round trip too)."""
    from axpack import shape_twin
    from safetensors.torch import save_file

    if not (shape_twin.vocab_dir() / "ggml-vocab-qwen35.gguf").is_file():
        pytest.skip("llama.cpp vocab GGUFs missing: run make setup")
    base = shape_twin.build_twin("Qwen/Qwen3.5-9B", log=lambda _m: None)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    g = torch.Generator().manual_seed(3)
    names = ["model.layers.3.self_attn.q_proj", "model.layers.0.linear_attn.in_proj_qkv",
             "model.layers.1.mlp.down_proj"]
    shapes = {k: v.shape for k, v in iter_tensors(base)}
    tensors = {}
    for n in names:
        out_f, in_f = shapes["model.language_model." + n.removeprefix("model.") + ".weight"]
        tensors[f"base_model.model.{n}.lora_A.weight"] = torch.randn(4, in_f, generator=g)
        tensors[f"base_model.model.{n}.lora_B.weight"] = torch.randn(out_f, 4, generator=g)
    save_file(tensors, str(adapter / "adapter_model.safetensors"))
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8,
                                                             "target_modules": ["q_proj"]}))
    for spec in (None, QLoraSpec(dtype="float32")):
        out = tmp_path / f"merged-{spec is not None}"
        res = merge_lora(base, adapter, out, qlora=spec)
        assert sorted(res.merged) == sorted("model.language_model." + n.removeprefix("model.") + ".weight"
                                            for n in names)
        before, after = dict(iter_tensors(base)), dict(iter_tensors(out))
        assert before.keys() == after.keys()
        for k, v in before.items():
            if k.startswith(("mtp.", "model.visual.")):
                assert torch.equal(v, after[k]), k
        for k in res.merged:
            assert not torch.equal(before[k], after[k]), k
        assert json.loads((out / "config.json").read_text())["architectures"] == ["Qwen3_5ForConditionalGeneration"]
