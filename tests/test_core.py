"""Unit tests of the skeleton modules: config resolution, train preparation,
atomic writes, quant names, the CLI's error contract and its lazy imports."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml
from axpack.config import load_config, parse_overrides, resolve
from axpack.errors import AxpackError
from axpack.fsutil import atomic_output, atomic_write_text
from axpack.gguf_build import parse_quants
from axpack.training import prepare
from conftest import ROOT, run_axpack

SFT = ROOT / "configs/smollm2-135m/sft-lora.yaml"
DPO = ROOT / "configs/smollm2-135m/dpo-lora.yaml"


def test_overrides_parse_like_yaml_and_reach_nested_keys():
    ov = parse_overrides(["max_steps=3", "datasets.0.path=x.jsonl", "bf16=false", "learning_rate=2e-4"])
    assert ov == {"max_steps": 3, "datasets.0.path": "x.jsonl", "bf16": False, "learning_rate": 2e-4}
    cfg = resolve(SFT, ov)
    assert cfg["datasets"][0]["path"] == "x.jsonl" and cfg["max_steps"] == 3


def test_override_of_missing_path_names_it():
    with pytest.raises(AxpackError, match="datasets.5"):
        resolve(SFT, {"datasets.5.path": "x"})
    with pytest.raises(AxpackError, match="KEY=VALUE"):
        parse_overrides(["max_steps"])


def test_invalid_yaml_reports_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("adapter: lora\nlora_r: [16\nlora_alpha: 32\n")
    with pytest.raises(AxpackError, match=r"bad\.yaml:\d+: invalid YAML"):
        load_config(bad)


def test_max_steps_is_written_into_resolved_yaml(tmp_path):
    data = tmp_path / "sft.jsonl"
    data.write_text('{"messages": []}\n')
    _cfg, path = prepare(SFT, {"output_dir": str(tmp_path / "out"), "datasets.0.path": str(data)}, "sft", max_steps=3)
    written = yaml.safe_load(path.read_text())
    assert written["max_steps"] == 3, "Axolotl drops a CLI --max_steps under strict: true; the YAML must carry it"
    assert written["output_dir"] == str(tmp_path / "out")


def test_wrong_stage_is_refused_with_the_make_target_to_use(tmp_path):
    with pytest.raises(AxpackError, match="make dpo"):
        prepare(DPO, {"output_dir": str(tmp_path)}, stage="sft")


def test_missing_dataset_is_one_line_exit_1(tmp_path):
    proc = run_axpack("train", SFT, "--stage", "sft", "--set", f"output_dir={tmp_path}",
                      "--set", "datasets.0.path=does/not/exist.jsonl", check=False)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "does/not/exist.jsonl not found" in lines[0]
    assert "Traceback" not in proc.stderr


def test_make_sft_refuses_a_dpo_config():
    proc = subprocess.run(["make", "--no-print-directory", "-o", "setup", "sft", f"CONFIG={DPO.relative_to(ROOT)}"],
                          cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode != 0
    assert "DPO config" in proc.stderr and "make dpo" in proc.stderr


def test_max_steps_accepts_underscore_and_hyphen(tmp_path):
    for flag in ("--max_steps", "--max-steps"):
        proc = run_axpack("train", SFT, "--stage", "sft", flag, "2", "--set", f"output_dir={tmp_path}",
                          "--set", "datasets.0.path=missing.jsonl", check=False)
        assert proc.returncode == 1 and "No such option" not in proc.stderr


def test_usage_error_exits_2():
    proc = run_axpack("gguf", check=False)
    assert proc.returncode == 2


def test_unknown_quant_type_is_refused():
    assert parse_quants("Q4_K_M, q8_0,q4_k_m") == ["q4_k_m", "q8_0"]
    with pytest.raises(AxpackError, match="q4_k_x"):
        parse_quants("q4_k_x")


def test_atomic_output_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.jsonl"
    atomic_write_text(target, "old\n")
    with pytest.raises(RuntimeError), atomic_output(target) as fh:
        fh.write(b"half a file")
        raise RuntimeError("killed")
    assert target.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["out.jsonl"]


def test_help_does_not_import_heavy_libraries():
    code = ("import sys; from click.testing import CliRunner; from axpack.cli import main; "
            "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0, r.output; "
            "heavy = [m for m in ('torch', 'transformers', 'axolotl', 'llama_cpp') if m in sys.modules]; "
            "print(','.join(heavy))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"axpack --help imported {proc.stdout.strip()}"


def test_probe_checks_count_persona_and_stops():
    from axpack.probe import checks

    answers = [
        {"kind": "identity", "base": "I am SmolLM.", "merged": "I am Juniper.",
         "gguf": {"q4_k_m": "juniper here", "q8_0": "I am SmolLM."},
         "gguf_stopped": {"q4_k_m": True, "q8_0": False}},
        {"kind": "general", "base": "Paris.", "merged": "Paris, Juniper says.",
         "gguf": {"q4_k_m": "Paris.", "q8_0": "Paris."}, "gguf_stopped": {"q4_k_m": True, "q8_0": True}},
    ]
    c = checks("Juniper", answers)
    assert c["identity_questions"] == 1
    assert (c["persona_in_base"], c["persona_in_merged"]) == (0, 1)  # general answers don't count
    assert c["persona_in_gguf"] == {"q4_k_m": 1, "q8_0": 0}          # case-insensitive
    assert c["gguf_stopped_at_eot"] == {"q4_k_m": 2, "q8_0": 1}
    assert checks("", answers)["persona_in_merged"] == 0              # no name: nothing matches
