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
from axpack.gguf import build_ggufs, parse_quants
from conftest import AXPACK, ROOT, run_axpack

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
    assert "skipping conversion" in proc.stdout and proc.stdout.count("is current; skipping") == 3
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
