"""axpack export: merge -> f16 GGUF once -> quants, manifest, atomic reruns, serving files.

The end-to-end tests export the shared trained run (conftest ``trained_run``)
to Q4_K_M and Q8_0 in ``runs/test-e2e/export/`` (not ``gguf/``, which the e2e
suite owns); warm reruns cost seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from axpack.errors import AxpackError
from axpack.fsutil import sha256_file
from axpack.gguf_build import build_ggufs, parse_quants
from conftest import AXPACK, ROOT, run_axpack, write_test_config

QUANTS = "q4_k_m,q8_0"


@pytest.fixture(scope="session")
def exported(trained_run) -> Path:
    """runs/test-e2e/export/ holding f16, Q4_K_M, Q8_0 of the trained run's DPO merge."""
    out = trained_run["run_dir"] / "export"
    run_axpack("export", trained_run["dpo_config"], "--quants", QUANTS, "--out", out.relative_to(ROOT))
    return out


# ---------------------------------------------------------------- unit
def test_parse_quants():
    assert parse_quants("Q4_K_M, q8_0,q4_k_m") == ["q4_k_m", "q8_0"]
    with pytest.raises(AxpackError, match="unknown type"):
        parse_quants("q4_k_x")


def test_free_disk_is_checked_before_anything_is_written(tmp_path, monkeypatch, demo_model):
    import shutil

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=10 << 20))
    with pytest.raises(AxpackError, match="GiB free"):
        build_ggufs(demo_model, tmp_path / "out", "x", ["q4_k_m"])
    assert not list((tmp_path / "out").iterdir())


def test_cli_usage_errors():
    proc = run_axpack("export", "configs/smollm2-135m/dpo-lora.yaml", "--quants", "q9", check=False)
    assert proc.returncode == 1 and "q9: unknown type" in proc.stderr
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------- --llama-cpp-dir and input fingerprints
# A tiny random Llama with SmolLM2's tokenizer converts and quantizes in seconds.

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, demo_model) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    folder = tmp_path_factory.mktemp("tiny") / "model"
    LlamaForCausalLM(cfg).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        if (demo_model / name).is_file():
            shutil.copy(demo_model / name, folder / name)
    return folder


def _pinned() -> Path:
    from axpack import env

    lcd = env.llama_cpp_dir()
    if not (lcd / "convert_hf_to_gguf.py").is_file():
        pytest.skip("pinned llama.cpp converter missing: run make setup")
    return lcd


FAKE_QUANTIZE = """#!{python}
# stands in for a user's build/bin/llama-quantize: logs its argv, then calls the same C function
import sys, pathlib, llama_cpp
pathlib.Path(__file__).with_name("calls.log").open("a").write(" ".join(sys.argv[1:]) + "\\n")
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = {ftypes}[sys.argv[3].lower()]
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), params))
"""


def _user_llama_cpp(dest: Path, *, keep_pinned: bool, mark_converter: bool, quantize_tool: bool) -> Path:
    """A copy of the pinned converter as a user's checkout: optionally without its
    PINNED line, with a converter that leaves a marker when it runs, and with a
    build/bin/llama-quantize."""
    import sys

    from axpack.gguf_build import QUANT_TYPES

    shutil.copytree(_pinned(), dest)
    if not keep_pinned:
        (dest / "PINNED").unlink(missing_ok=True)
    if mark_converter:
        script = dest / "convert_hf_to_gguf.py"
        head = "from __future__ import annotations\n"
        text = script.read_text()
        assert head in text
        script.write_text(text.replace(head, head + "import pathlib as _p; "
                                       "_p.Path(__file__).with_name('converter-ran').write_text('yes')\n", 1))
    if quantize_tool:
        tool = dest / "build" / "bin" / "llama-quantize"
        tool.parent.mkdir(parents=True)
        tool.write_text(FAKE_QUANTIZE.format(python=sys.executable, ftypes=repr(QUANT_TYPES)))
        tool.chmod(0o755)
    return dest


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def test_llama_cpp_dir_is_the_converter_and_quantizer_used(tiny_model, tmp_path):
    """--llama-cpp-dir pointing at a copy of the pinned converter: its script runs
    (marker), its build/bin/llama-quantize quantizes, both are recorded by sha256
    in the manifest and in each artifact's settings, and the GGUFs are the bytes
    the pinned converter and in-process quantizer make."""
    lcd = _user_llama_cpp(tmp_path / "my-llama.cpp", keep_pinned=False, mark_converter=True, quantize_tool=True)
    out = tmp_path / "mine"
    proc = run_axpack("gguf", tiny_model, "--out", out, "--name", "tiny", "--quants", "q8_0",
                      "--llama-cpp-dir", lcd)
    assert str(lcd / "convert_hf_to_gguf.py") in proc.stderr
    assert (lcd / "converter-ran").read_text() == "yes"
    (call,) = (lcd / "build" / "bin" / "calls.log").read_text().splitlines()
    assert call.split()[-1] == "Q8_0" and call.split()[0] == str(out / "tiny-f16.gguf")
    m = _manifest(out)
    conv = "convert_hf_to_gguf.py sha256:" + sha256_file(lcd / "convert_hf_to_gguf.py")
    quant = "llama-quantize sha256:" + sha256_file(lcd / "build" / "bin" / "llama-quantize")
    assert m["converter"] == conv and m["quantizer"] == quant
    assert m["artifacts"]["tiny-f16.gguf"]["settings"]["converter"] == conv
    assert m["artifacts"]["tiny-q8_0.gguf"]["settings"]["quantizer"] == quant
    # the same model through the defaults: identical GGUFs, different recorded tools
    ref = tmp_path / "pinned"
    run_axpack("gguf", tiny_model, "--out", ref, "--name", "tiny", "--quants", "q8_0")
    for name in ("tiny-f16.gguf", "tiny-q8_0.gguf"):
        assert sha256_file(out / name) == sha256_file(ref / name), name
    assert _manifest(ref)["converter"] == (_pinned() / "PINNED").read_text().strip() != conv


def test_llama_cpp_dir_without_a_converter_is_one_line(tiny_model, tmp_path):
    """gguf and export name the option and the folder, exit 1, and write nothing
    (export refuses before it merges)."""
    empty = tmp_path / "not-llama.cpp"
    empty.mkdir()
    (empty / "PINNED").write_text("llama-cpp-python==0.3.36 sha256:0\n")  # a PINNED line alone is not a converter
    out = tmp_path / "out"
    want = (f"axpack: error: --llama-cpp-dir {empty}: no convert_hf_to_gguf.py there; point it at a llama.cpp "
            "checkout (or leave it out to use the pinned converter of make setup)")
    proc = run_axpack("gguf", tiny_model, "--out", out, "--name", "tiny", "--llama-cpp-dir", empty, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [want]
    assert not out.exists()
    adapter = tmp_path / "run" / "sft"
    adapter.mkdir(parents=True)
    cfg = write_test_config(ROOT / "configs/smollm2-135m/sft-lora.yaml", tmp_path / "sft.yaml",
                            {"output_dir": str(adapter)})
    proc = run_axpack("export", cfg, "--llama-cpp-dir", empty, "--out", out, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == want and proc.stderr.count("axpack: error:") == 1
    assert not out.exists() and sorted(p.name for p in (tmp_path / "run").iterdir()) == ["sft"]


def test_changed_inputs_rebuild_although_the_checksums_match(tiny_model, tmp_path):
    """An artifact whose file still matches its recorded sha256 is rebuilt when its
    input fingerprint changed: (1) other quant settings (a user's llama-quantize,
    same converter) rebuild the quant and not the intermediate; (2) changed merged
    weights rebuild both."""
    from safetensors.torch import load_file, save_file

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    out = tmp_path / "out"
    run_axpack("gguf", model, "--out", out, "--name", "tiny", "--quants", "q8_0")
    f16, q8 = out / "tiny-f16.gguf", out / "tiny-q8_0.gguf"
    first = _manifest(out)["artifacts"]

    def stamp():
        return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (f16, q8)}

    before = stamp()
    proc = run_axpack("gguf", model, "--out", out, "--name", "tiny", "--quants", "q8_0")
    assert "skipping conversion" in proc.stderr and proc.stderr.count("is current; skipping") == 2
    assert stamp() == before

    # (1) same converter (PINNED kept), another quantizer
    lcd = _user_llama_cpp(tmp_path / "lcd", keep_pinned=True, mark_converter=False, quantize_tool=True)
    for p in (f16, q8):  # what a checksum-only check sees: every file as recorded
        assert sha256_file(p) == first[p.name]["sha256"]
    proc = run_axpack("gguf", model, "--out", out, "--name", "tiny", "--quants", "q8_0", "--llama-cpp-dir", lcd)
    assert "skipping conversion" in proc.stderr and "quantizing tiny-f16.gguf -> tiny-q8_0.gguf" in proc.stderr
    assert len((lcd / "build" / "bin" / "calls.log").read_text().splitlines()) == 1
    after = stamp()
    assert after[f16.name] == before[f16.name] and after[q8.name] != before[q8.name]
    second = _manifest(out)["artifacts"]
    assert second[q8.name]["inputs"] != first[q8.name]["inputs"]
    assert second[q8.name]["settings"]["quantizer"].startswith("llama-quantize sha256:")
    assert second[q8.name]["sha256"] == first[q8.name]["sha256"]  # same bytes: only the fingerprint moved
    assert second[f16.name] == first[f16.name]

    # (2) merged weights changed (same names, shapes and size): everything is rebuilt
    weights = model / "model.safetensors"
    tensors = load_file(weights)
    key = next(k for k in sorted(tensors) if k.endswith("q_proj.weight"))
    tensors[key] = tensors[key] * 2
    save_file(tensors, weights, metadata={"format": "pt"})
    for p in (f16, q8):
        assert sha256_file(p) == second[p.name]["sha256"]
    before = stamp()
    proc = run_axpack("gguf", model, "--out", out, "--name", "tiny", "--quants", "q8_0")
    assert "skipping" not in proc.stdout
    third = _manifest(out)["artifacts"]
    assert third[f16.name]["made_from"]["model.safetensors"] == sha256_file(weights) \
        != second[f16.name]["made_from"]["model.safetensors"]
    assert third[f16.name]["sha256"] != second[f16.name]["sha256"] == first[f16.name]["sha256"]
    assert third[q8.name]["made_from"] == {f16.name: third[f16.name]["sha256"]}
    assert third[q8.name]["sha256"] != second[q8.name]["sha256"]
    for p in (f16, q8):
        assert sha256_file(p) == third[p.name]["sha256"] and stamp()[p.name] != before[p.name]


# ---------------------------------------------------------------- serving
def _tok(template: str | None = None):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(ROOT / "models" / "smollm2-135m-instruct"))
    if template is not None:
        tok.chat_template = template
    return tok


LLAMA3 = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
          "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
          "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
NO_SYSTEM_BLOCK = ("{% for m in messages %}{% if m['role'] == 'system' %}[SYS]{{ m['content'] }}[/SYS]\n"
                   "{% elif m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
                   "{% else %}{{ m['content'] }}</s>{% endif %}{% endfor %}")
CONVS = [
    ([{"role": "user", "content": "Hello!"}], True),
    ([{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"},
      {"role": "assistant", "content": "Hey."}, {"role": "user", "content": "Name?"}], True),
    ([{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1\nline two"}], False),
]


@pytest.mark.parametrize("template", [None, LLAMA3, NO_SYSTEM_BLOCK], ids=["smollm2", "llama3-like", "no-default"])
def test_template_pieces_reproduce_the_jinja_template(template, demo_model):
    from axpack.serving import go_template, render_parts, template_parts

    tok = _tok(template)
    parts = template_parts(tok)
    for msgs, gen in CONVS:
        assert render_parts(parts, msgs, gen) == tok.apply_chat_template(msgs, tokenize=False,
                                                                         add_generation_prompt=gen)
    go = go_template(parts)
    assert go.count("{{ range") >= 1 and parts.user_prefix in go and parts.gen_prompt in go
    if template is None:
        assert parts.default_system.startswith("You are a helpful AI assistant named SmolLM")
        assert parts.asst_suffix == "<|im_end|>\n"
    if template == NO_SYSTEM_BLOCK:
        assert parts.default_system is None


def test_unsplittable_template_gets_no_TEMPLATE_line(tmp_path, demo_model):
    from axpack.serving import modelfile_text, template_parts

    tok = _tok("{% for m in messages %}{{ m['content'] | upper }}{% endfor %}")  # rewrites content
    with pytest.raises(ValueError):
        template_parts(tok)
    text = modelfile_text("x.gguf", tok, None, "cannot cut")
    assert not any(line.startswith("TEMPLATE") for line in text.splitlines()) and "FROM ./x.gguf" in text
    assert "# no TEMPLATE: cannot cut" in text


# ---------------------------------------------------------------- end to end
@pytest.mark.e2e
def test_export_files_and_manifest(exported, trained_run):
    run = trained_run["run_dir"].name
    manifest = json.loads((exported / "manifest.json").read_text())
    arts = manifest["artifacts"]
    assert set(arts) == {f"{run}-f16.gguf", f"{run}-q4_k_m.gguf", f"{run}-q8_0.gguf"}
    merged_sha = sha256_file(trained_run["merged"] / "model.safetensors")
    for name, e in arts.items():
        path = exported / name
        assert e["sha256"] == sha256_file(path) and e["size"] == path.stat().st_size
        assert e["source_config"].endswith("dpo-lora.yaml")
        assert len(e["inputs"]) == 64 and e["made_from"] and e["settings"]
    f16 = arts[f"{run}-f16.gguf"]
    assert f16["made_from"]["model.safetensors"] == merged_sha and f16["settings"]["outtype"] == "f16"
    for q in ("q4_k_m", "q8_0"):
        e = arts[f"{run}-{q}.gguf"]
        assert e["made_from"] == {f"{run}-f16.gguf": f16["sha256"]} and e["settings"]["type"] == q
    assert arts[f"{run}-q4_k_m.gguf"]["size"] < arts[f"{run}-q8_0.gguf"]["size"] < f16["size"]
    assert not list(exported.glob(".*.tmp"))
    # serving files point at the Q4_K_M and carry the training template's stop token
    mf = (exported / "Modelfile").read_text()
    assert f"FROM ./{run}-q4_k_m.gguf" in mf and 'PARAMETER stop "<|im_end|>"' in mf
    assert "<|im_start|>assistant\n" in mf
    sh = exported / "llama-server.sh"
    assert os.access(sh, os.X_OK) and f"llama-server -m {run}-q4_k_m.gguf --jinja" in sh.read_text()


@pytest.mark.e2e
def test_rerun_skips_only_current_artifacts(exported, trained_run):
    run = trained_run["run_dir"].name
    before = {p.name: p.stat().st_mtime_ns for p in exported.glob("*.gguf")}
    proc = run_axpack("export", trained_run["dpo_config"], "--quants", QUANTS, "--out", exported.relative_to(ROOT))
    assert "skipping conversion" in proc.stderr and proc.stderr.count("is current; skipping") == 3
    assert {p.name: p.stat().st_mtime_ns for p in exported.glob("*.gguf")} == before
    # a damaged artifact (checksum no longer matches) is rebuilt, the rest is not
    q8 = exported / f"{run}-q8_0.gguf"
    with open(q8, "r+b") as fh:
        fh.seek(q8.stat().st_size // 2)
        b = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([b[0] ^ 0xFF]))
    run_axpack("export", trained_run["dpo_config"], "--quants", QUANTS, "--out", exported.relative_to(ROOT))
    after = {p.name: p.stat().st_mtime_ns for p in exported.glob("*.gguf")}
    assert after[q8.name] != before[q8.name]
    assert {k: v for k, v in after.items() if k != q8.name} == {k: v for k, v in before.items() if k != q8.name}
    entry = json.loads((exported / "manifest.json").read_text())["artifacts"][q8.name]
    assert entry["sha256"] == sha256_file(q8)


@pytest.mark.e2e
def test_killed_quantize_leaves_nothing_finished_looking_and_rerun_completes(exported, trained_run, tmp_path):
    run = trained_run["run_dir"].name
    out = tmp_path / "gguf"
    out.mkdir()
    # start from the finished intermediate, so the run goes straight to quantizing
    (out / f"{run}-f16.gguf").hardlink_to(exported / f"{run}-f16.gguf")
    man = json.loads((exported / "manifest.json").read_text())
    man["artifacts"] = {k: v for k, v in man["artifacts"].items() if k.endswith("-f16.gguf")}
    (out / "manifest.json").write_text(json.dumps(man))
    cmd = [*AXPACK, "gguf", str(trained_run["merged"]), "--out", str(out), "--name", run, "--quants", "q8_0,q6_k"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    tmp = None
    while time.monotonic() < deadline and proc.poll() is None:
        tmp = next(iter(out.glob(f".{run}-q*.gguf.*.tmp")), None)
        if tmp is not None and tmp.stat().st_size > 0:
            break
        time.sleep(0.01)
    assert tmp is not None and proc.poll() is None, "never caught the quantize in progress"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    manifest = json.loads((out / "manifest.json").read_text())["artifacts"]
    for g in out.glob("*.gguf"):  # every finished-looking file is a manifest entry with its checksum
        assert g.name in manifest and manifest[g.name]["sha256"] == sha256_file(g), g.name
    assert f"{run}-q6_k.gguf" not in manifest
    res = run_axpack("gguf", trained_run["merged"], "--out", out, "--name", run, "--quants", "q8_0,q6_k")
    assert "left by an interrupted run" in res.stderr
    manifest = json.loads((out / "manifest.json").read_text())["artifacts"]
    assert {f"{run}-q8_0.gguf", f"{run}-q6_k.gguf"} <= set(manifest)
    assert not list(out.glob(".*.tmp"))
    for name, e in manifest.items():
        assert e["sha256"] == sha256_file(out / name)


@pytest.mark.e2e
def test_damaged_intermediate_is_reconverted_before_any_quant_is_trusted(exported, trained_run, tmp_path):
    run = trained_run["run_dir"].name
    out = tmp_path / "gguf"
    out.mkdir()
    f16 = out / f"{run}-f16.gguf"
    shutil.copy2(exported / f16.name, f16)
    man = json.loads((exported / "manifest.json").read_text())
    man["artifacts"] = {k: v for k, v in man["artifacts"].items() if k == f16.name}
    (out / "manifest.json").write_text(json.dumps(man))
    good = man["artifacts"][f16.name]["sha256"]
    with open(f16, "r+b") as fh:  # same size, one byte flipped: only the checksum can tell
        fh.seek(f16.stat().st_size - 100)
        b = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([b[0] ^ 0x01]))
    res = run_axpack("gguf", trained_run["merged"], "--out", out, "--name", run, "--quants", "q8_0")
    assert "does not match its recorded checksum; converting again" in res.stderr
    arts = json.loads((out / "manifest.json").read_text())["artifacts"]
    assert sha256_file(f16) == arts[f16.name]["sha256"] == good  # the converter is deterministic
    q8 = out / f"{run}-q8_0.gguf"
    assert arts[q8.name]["sha256"] == sha256_file(q8) == \
        json.loads((exported / "manifest.json").read_text())["artifacts"][q8.name]["sha256"]
    assert not list(out.glob(".*.tmp"))
