"""Importance matrix: the sums are the model's own activations, the file is llama.cpp's
format, quantize uses it, the manifest records it and reruns reuse it.

A one-layer random Llama (hidden 256, so Q4_K_M quantizes its matrices as k-quants
instead of falling back) keeps the module to seconds; the demo conversations
calibrate it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from axpack import imatrix as im
from axpack import quant_quality as qq
from axpack.errors import AxpackError
from axpack.fsutil import sha256_file
from axpack.gguf_build import build_ggufs
from conftest import ROOT, run_axpack

DATA = ROOT / "data" / "demo" / "sft.jsonl"


@pytest.fixture(scope="module")
def model(tmp_path_factory, demo_model) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=256, intermediate_size=512, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    folder = tmp_path_factory.mktemp("imx") / "model"
    LlamaForCausalLM(cfg).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        if (demo_model / name).is_file():
            shutil.copy(demo_model / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def built(model, tmp_path_factory) -> dict:
    from axpack import env

    if not (env.llama_cpp_dir() / "convert_hf_to_gguf.py").is_file():
        pytest.skip("pinned llama.cpp converter missing: run make setup")
    out = tmp_path_factory.mktemp("imx-out")
    paths = build_ggufs(model, out, "t", ["q4_k_m", "q8_0"], imatrix=DATA, imatrix_tokens=2048)
    return {"out": out, "paths": paths, "manifest": json.loads((out / "manifest.json").read_text())}


def _windows(model: Path, tokens: int) -> list[list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model))
    ws = qq.build_sequences(tok, "", qq.read_conversations(DATA), chunk=im.CHUNK, conv_tokens=tokens)
    return [w for w in ws["conversations"] if len(w) >= im.MIN_WINDOW]


def test_sums_are_the_squared_inputs_of_each_matmul(built, model):
    """blk.0.attn_q/k/v see the attention norm's output, ffn_gate/up the FFN norm's,
    attn_output the attention's, ffn_down the gated product; recomputed here by hand."""
    import torch
    from transformers import AutoModelForCausalLM

    imx = im.read(built["out"] / "t-imatrix.gguf")
    windows = _windows(model, 2048)
    m = AutoModelForCausalLM.from_pretrained(str(model), dtype=torch.float32, use_safetensors=True).eval()
    layer = m.model.layers[0]
    seen: dict[str, list] = {"attn_in": [], "ffn_in": [], "down_in": [], "o_in": []}
    layer.self_attn.o_proj.register_forward_pre_hook(lambda _m, a: seen["o_in"].append(a[0]))
    layer.mlp.down_proj.register_forward_pre_hook(lambda _m, a: seen["down_in"].append(a[0]))
    with torch.no_grad():
        for ids in windows:
            out = m(torch.tensor([ids]), output_hidden_states=True)
            h = out.hidden_states[0]
            seen["attn_in"].append(layer.input_layernorm(h))
    # the FFN input is post_attention_layernorm(h + attn): recompute from the recorded o_proj input
    with torch.no_grad():
        for ids, o_in, h in zip(windows, seen["o_in"], seen["attn_in"]):
            attn = torch.nn.functional.linear(o_in, layer.self_attn.o_proj.weight)  # not via the hooked module
            resid = m.model.embed_tokens(torch.tensor([ids])) + attn
            seen["ffn_in"].append(layer.post_attention_layernorm(resid))

    def sq(xs):
        return sum((x.reshape(-1, x.shape[-1]).double() ** 2).sum(0) for x in xs).numpy()

    n = sum(len(w) for w in windows)
    want = {"attn_q": sq(seen["attn_in"]), "attn_k": sq(seen["attn_in"]), "attn_v": sq(seen["attn_in"]),
            "attn_output": sq(seen["o_in"]), "ffn_gate": sq(seen["ffn_in"]), "ffn_up": sq(seen["ffn_in"]),
            "ffn_down": sq(seen["down_in"])}
    assert set(imx.sums) == {f"blk.0.{k}.weight" for k in want}
    for k, v in want.items():
        name = f"blk.0.{k}.weight"
        assert imx.counts[name] == n
        np.testing.assert_allclose(imx.sums[name], v, rtol=2e-4, err_msg=name)
    assert imx.chunk_count == len(windows) and imx.chunk_size == im.CHUNK and imx.datasets == ["sft.jsonl"]


def test_file_is_llama_cpp_imatrix_gguf(built):
    from gguf import GGUFReader

    r = GGUFReader(str(built["out"] / "t-imatrix.gguf"))
    assert r.fields["general.type"].contents() == "imatrix"
    assert {"imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size"} <= set(r.fields)
    t = {x.name: x for x in r.tensors}
    assert t["blk.0.ffn_down.weight.in_sum2"].tensor_type.name == "F32"
    assert list(t["blk.0.ffn_down.weight.in_sum2"].shape) == [512, 1]  # ne = [n_in, n_mat]
    assert list(t["blk.0.ffn_down.weight.counts"].shape) == [1, 1]


def test_quants_record_and_use_it(built):
    from gguf import GGUFReader

    man = built["manifest"]
    rec = man["imatrix"]
    path = built["out"] / rec["file"]
    assert rec["sha256"] == sha256_file(path)
    assert rec["calibration"]["data_sha256"] == sha256_file(DATA) and rec["calibration"]["token_budget"] == 2048
    assert rec["coverage"] == {"mapped": 7, "dropped_size": 0, "unmapped": 0, "tensors": 7}
    q4, q8 = man["artifacts"]["t-q4_k_m.gguf"], man["artifacts"]["t-q8_0.gguf"]
    assert q4["settings"]["imatrix"] == rec["sha256"] and "imatrix" not in q8["settings"]
    meta = GGUFReader(str(built["paths"]["q4_k_m"])).fields
    assert meta["quantize.imatrix.entries_count"].contents() == 7
    assert meta["quantize.imatrix.file"].contents() == "t-imatrix.gguf"
    assert "quantize.imatrix.file" not in GGUFReader(str(built["paths"]["q8_0"])).fields


def test_imatrix_changes_the_quant_and_rerun_reuses_it(built, model, tmp_path, caplog):
    plain = build_ggufs(model, tmp_path / "plain", "t", ["q4_k_m"])["q4_k_m"]
    assert sha256_file(plain) != built["manifest"]["artifacts"]["t-q4_k_m.gguf"]["sha256"]
    before = {p.name: p.stat().st_mtime_ns for p in built["out"].glob("*.gguf")}
    with caplog.at_level("INFO", logger="axpack"):
        build_ggufs(model, built["out"], "t", ["q4_k_m", "q8_0"], imatrix=DATA, imatrix_tokens=2048)
    assert "is current; reusing the importance matrix" in caplog.text
    assert {p.name: p.stat().st_mtime_ns for p in built["out"].glob("*.gguf")} == before
    # a different budget is a different imatrix: recomputed, and the quant with it
    build_ggufs(model, built["out"], "t", ["q4_k_m"], imatrix=DATA, imatrix_tokens=1024)
    man = json.loads((built["out"] / "manifest.json").read_text())
    assert man["imatrix"]["calibration"]["token_budget"] == 1024
    assert man["artifacts"]["t-q4_k_m.gguf"]["settings"]["imatrix"] == man["imatrix"]["sha256"]
    assert man["imatrix"]["sha256"] != built["manifest"]["imatrix"]["sha256"]


def test_a_given_imatrix_file_is_used_as_is(built, model, tmp_path):
    given = tmp_path / "mine.imatrix.gguf"
    shutil.copy(built["out"] / "t-imatrix.gguf", given)
    out = tmp_path / "o"
    build_ggufs(model, out, "t", ["q4_k_m"], imatrix=given)
    man = json.loads((out / "manifest.json").read_text())
    assert man["imatrix"] == {"file": str(given), "sha256": sha256_file(given), "given": True}
    assert not (out / "t-imatrix.gguf").exists()


def test_round_trip_and_importance(tmp_path):
    sums = {"blk.0.attn_q.weight": np.array([4.0, 9.0]), "blk.0.ffn_down.weight": np.array([1.0, 0.0, 2.0])}
    src = im.Imatrix(sums, {"blk.0.attn_q.weight": 2, "blk.0.ffn_down.weight": 0}, ["x.jsonl"], 3, 512)
    im.write(src, tmp_path / "i.gguf")
    got = im.read(tmp_path / "i.gguf")
    assert got.counts == src.counts and got.datasets == ["x.jsonl"] and got.chunk_count == 3
    imp = got.importance()
    np.testing.assert_array_equal(imp["blk.0.attn_q.weight"], [2.0, 4.5])
    np.testing.assert_array_equal(imp["blk.0.ffn_down.weight"], [1.0, 1.0, 1.0])  # no tokens: weight 1 (quantize.cpp)


def test_bad_imatrix_inputs_are_one_line_before_any_work(built, model, tmp_path):
    with pytest.raises(AxpackError, match="general.type is not 'imatrix'"):
        im.read(built["paths"]["f16"])
    (tmp_path / "x.dat").write_bytes(b"\x01\x00\x00\x00junk")
    with pytest.raises(AxpackError, match="legacy .dat"):
        im.read(tmp_path / "x.dat")
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"prompt": "no messages here"}\n')
    for arg, msg in ((tmp_path / "missing.jsonl", "no such file"), (empty, "no 'messages' conversations"),
                     (built["paths"]["f16"], "general.type is not 'imatrix'")):
        out = tmp_path / "o"
        proc = run_axpack("gguf", str(model), "--out", str(out), "--name", "t", "--imatrix", str(arg), check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and msg in proc.stderr, proc.stderr
        assert not list(out.glob("*.gguf"))  # refused before the conversion
