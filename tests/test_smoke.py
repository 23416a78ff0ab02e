"""axpack smoke --cpu: every shipped config is overridden onto the shape twin
of its base model (axpack twin) with only the documented keys changed. The
real runs (train, merge, GGUF, verify, labels, serving parity) are
tests/test_twins.py's chains, which replaced the SmolLM2-swap runs here.

Data: each system's raw sample in data/<system>/ is prepped by the command
its config documents (tests/test_configs.py: data_commands), except script
windows, which are cut short (--window 6 --context 2) so that examples fit
the CPU smoke's 256-token rows (default 35-turn windows are ~500 tokens and
Axolotl would drop them all).

Cost: seconds (prep of the samples; the twins are built once and reused).
"""

from __future__ import annotations

import glob
from pathlib import Path

import pytest
import yaml
from axpack import smoke_run as smoke_mod
from axpack.config import load_config, resolve
from axpack.training import axolotl_command
from conftest import ROOT, run_axpack
from test_configs import CONFIGS, IDS, data_commands

MAX_STEPS = 2
SCRIPT_SMOKE_ARGS = ["--window", "6", "--context", "2", "--min-completion", "2", "--stride", "2"]


def system_of(path: Path) -> str:
    return yaml.safe_load(path.read_text())["output_dir"].split("/")[1]


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory, demo_model) -> dict[str, Path]:
    """system -> folder with its prepped sft.jsonl / dpo.jsonl / sft.val.jsonl."""
    root = tmp_path_factory.mktemp("smoke-data")
    out = {}
    for system, args in data_commands().items():
        expanded = []
        for a in args:
            matches = sorted(glob.glob(str(ROOT / a))) if "*" in a else []
            expanded += matches or [a]
        i = expanded.index("--out")
        expanded[i + 1] = str(root / system)
        if expanded[0] == "script":
            expanded += SCRIPT_SMOKE_ARGS
        run_axpack(*expanded)
        out[system] = root / system
    return out


def cpu_overrides(path: Path, data_dir: Path, out: Path) -> list:
    cfg = load_config(path)
    model_dir, reason = smoke_mod.cpu_model(cfg, path)  # builds the twin once (fingerprinted)
    return smoke_mod.smoke_overrides(cfg, out, MAX_STEPS, cpu=True, data_dir=data_dir, model_dir=model_dir,
                                     model_reason=reason)


def cpu_resolved(path: Path, data_dir: Path, out: Path) -> dict:
    ovs = cpu_overrides(path, data_dir, out)
    return resolve(path, {o.key: o.value for o in ovs} | {"max_steps": MAX_STEPS})


@pytest.mark.parametrize("path", CONFIGS, ids=IDS)
def test_cpu_overrides_change_only_what_cannot_run(path, data_dirs, tmp_path):
    shipped = load_config(path)
    cfg = cpu_resolved(path, data_dirs[system_of(path)], tmp_path / "out")
    ovs = {o.key for o in cpu_overrides(path, data_dirs[system_of(path)], tmp_path / "out")}
    top = {k.split(".")[0] for k in ovs}
    for key, value in shipped.items():  # shrink-by-override: the rest is as shipped
        if key not in top:
            assert cfg[key] == value, key
    for key in ("datasets", "test_datasets"):  # dataset entries differ only in their path
        for a, b in zip(shipped.get(key) or [], cfg.get(key) or []):
            assert {k: v for k, v in a.items() if k != "path"} == {k: v for k, v in b.items() if k != "path"}
    model_dir, _ = smoke_mod.cpu_model(shipped, path, build=False)
    assert cfg["base_model"] == smoke_mod._rel(model_dir)
    if "smollm2" not in path.parent.name:  # every other base trains on its own shape twin
        assert (model_dir / "axpack-twin.json").is_file() and "twins" in cfg["base_model"]
    assert cfg["micro_batch_size"] == (2 if shipped.get("rl") == "kto" else 1)  # TRL's KTO refuses 1
    assert cfg["sequence_len"] == smoke_mod.CPU_SEQUENCE_LEN
    assert not cfg.get("bf16") and not cfg.get("tf32") and cfg["attn_implementation"] == "sdpa"
    assert not cfg.get("gradient_checkpointing") and not cfg.get("deepspeed")
    assert not any(str(p).lower().count("liger") for p in cfg.get("plugins") or [])
    assert not any(k.startswith("liger_") for k in cfg)
    assert cfg["save_steps"] == MAX_STEPS and "saves_per_epoch" not in cfg
    has_eval = bool(cfg.get("test_datasets")) or (cfg.get("val_set_size") or 0) > 0
    assert (cfg.get("eval_steps") == MAX_STEPS) == has_eval and "evals_per_epoch" not in cfg
    # the twin has the real tokens and modules: template, kwargs, targets stay as shipped
    assert cfg.get("chat_template") == shipped.get("chat_template")
    assert cfg.get("chat_template_kwargs") == shipped.get("chat_template_kwargs")
    assert cfg.get("lora_target_modules") == shipped.get("lora_target_modules")
    assert cfg.get("eot_tokens") == shipped.get("eot_tokens")
    for key in ("adapter", "load_in_4bit", "lora_r", "lora_alpha", "rl", "rl_beta", "optimizer", "learning_rate",
                "sample_packing"):
        assert cfg.get(key) == shipped.get(key), key


def test_smoke_cli_prints_overrides_and_refuses_bad_steps(tmp_path):
    proc = run_axpack("smoke", "configs/qwen3.5-9b/sft-qlora.yaml", "--cpu", "--max-steps", "0",
                      "--out", tmp_path, check=False)
    assert proc.returncode == 1 and "max-steps" in proc.stderr and "Traceback" not in proc.stderr


def test_nproc_goes_through_axolotls_launcher(tmp_path):
    """make sft/smoke NPROC=N: torchrun with N processes, Axolotl's `--launcher
    torchrun` line (DeepSpeed/FSDP settings come from the YAML). On a box
    without GPUs the ranks start axpack.cpu_shim (gloo); tests/test_scale.py
    runs 2 ranks for real."""
    cmd = axolotl_command(tmp_path / "c.yaml", nproc=2)
    assert cmd[0].endswith("torchrun") and cmd[1:6] == ["--standalone", "--nnodes", "1", "--nproc-per-node", "2"]
    assert cmd[-3] == "-m" and cmd[-2] in ("axolotl.cli.train", "axpack.cpu_shim")
    assert cmd[-1] == str(tmp_path / "c.yaml")
