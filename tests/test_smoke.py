"""axpack smoke --cpu: every shipped config runs a few real Axolotl steps on
the embedded SmolLM2, with only the documented keys overridden, and reports
the runtime / memory / params / tokens-per-second / loss row.

Data: each system's raw sample in data/<system>/ is prepped by the command
its config documents (tests/test_configs.py: data_commands), except script
windows, which are cut short (--window 6 --context 2) so that examples fit
the CPU smoke's 256-token rows (default 35-turn windows are ~500 tokens and
Axolotl would drop them all).

Cost: each Axolotl launch is ~35 s of import/start-up on the CI box plus
the steps; configs whose CPU-resolved YAML is identical (the 8 GB, A100 and
ZeRO-2 variants differ only in batch, context and DeepSpeed, which --cpu
overrides) share one run, and the test asserts that identity.
"""

from __future__ import annotations

import glob
import json
import math
from pathlib import Path

import pytest
import yaml
from axpack import smoke as smoke_mod
from axpack.config import load_config, resolve
from axpack.train import axolotl_command
from conftest import ROOT, run_axpack
from test_configs import CONFIGS, IDS, data_commands

MAX_STEPS = 2
SCRIPT_SMOKE_ARGS = ["--window", "6", "--context", "2", "--min-completion", "2", "--stride", "2"]
PATH_KEYS = ("output_dir", "dataset_prepared_path")


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


def cpu_resolved(path: Path, data_dir: Path, out: Path) -> dict:
    cfg = load_config(path)
    ovs = smoke_mod.smoke_overrides(cfg, out, MAX_STEPS, cpu=True, data_dir=data_dir)
    return resolve(path, {o.key: o.value for o in ovs} | {"max_steps": MAX_STEPS})


def _identity(cfg: dict) -> str:
    return json.dumps({k: v for k, v in cfg.items() if k not in PATH_KEYS}, sort_keys=True)


@pytest.fixture(scope="module")
def groups(data_dirs, tmp_path_factory) -> dict[Path, Path]:
    """config -> the config whose smoke run covers it (itself, or an earlier
    config with an identical CPU-resolved YAML)."""
    tmp = tmp_path_factory.mktemp("resolved")
    seen: dict[str, Path] = {}
    rep = {}
    for path in CONFIGS:
        key = _identity(cpu_resolved(path, data_dirs[system_of(path)], tmp / path.stem))
        rep[path] = seen.setdefault(key, path)
    return rep


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Smoke rows by config, each config run at most once per session."""
    cache: dict[Path, dict] = {}
    base = tmp_path_factory.mktemp("smoke-runs")

    def get(path: Path, data_dir: Path) -> dict:
        if path not in cache:
            out = base / path.parent.name / path.stem
            cache[path] = smoke_mod.smoke(path, max_steps=MAX_STEPS, cpu=True, out=out, data_dir=data_dir, echo=False)
        return cache[path]

    yield get
    if cache:  # the table users keep by hand, for the test log (pytest -s / -rA)
        print("\n" + smoke_mod.table(list(cache.values())))


@pytest.mark.parametrize("path", CONFIGS, ids=IDS)
def test_cpu_overrides_change_only_what_cannot_run(path, data_dirs, tmp_path):
    shipped = load_config(path)
    cfg = cpu_resolved(path, data_dirs[system_of(path)], tmp_path / "out")
    ovs = {o.key for o in smoke_mod.smoke_overrides(shipped, tmp_path / "out", MAX_STEPS, True,
                                                   data_dir=data_dirs[system_of(path)])}
    top = {k.split(".")[0] for k in ovs}
    for key, value in shipped.items():  # shrink-by-override: the rest is as shipped
        if key not in top:
            assert cfg[key] == value, key
    for key in ("datasets", "test_datasets"):  # dataset entries differ only in their path
        for a, b in zip(shipped.get(key) or [], cfg.get(key) or []):
            assert {k: v for k, v in a.items() if k != "path"} == {k: v for k, v in b.items() if k != "path"}
    assert cfg["base_model"] == "models/smollm2-135m-instruct"
    assert cfg["micro_batch_size"] == (2 if shipped.get("rl") == "kto" else 1)  # TRL's KTO refuses 1
    assert cfg["sequence_len"] == smoke_mod.CPU_SEQUENCE_LEN
    assert not cfg.get("bf16") and not cfg.get("tf32") and cfg["attn_implementation"] == "sdpa"
    assert not cfg.get("gradient_checkpointing") and not cfg.get("deepspeed")
    assert not any(str(p).lower().count("liger") for p in cfg.get("plugins") or [])
    assert not any(k.startswith("liger_") for k in cfg)
    assert cfg["save_steps"] == MAX_STEPS and "saves_per_epoch" not in cfg
    has_eval = bool(cfg.get("test_datasets")) or (cfg.get("val_set_size") or 0) > 0
    assert (cfg.get("eval_steps") == MAX_STEPS) == has_eval and "evals_per_epoch" not in cfg
    if shipped.get("chat_template") == "llama3":  # <|eot_id|> etc. are not SmolLM2 tokens
        assert cfg["chat_template"] == "tokenizer_default"
    elif shipped.get("chat_template"):  # ChatML templates run on SmolLM2 as shipped
        assert cfg["chat_template"] == shipped["chat_template"]
        assert cfg.get("chat_template_kwargs") == shipped.get("chat_template_kwargs")
    if shipped.get("lora_target_modules"):
        assert cfg["lora_target_modules"] == [t for t in shipped["lora_target_modules"] if "linear_attn" not in t]
    for key in ("adapter", "load_in_4bit", "lora_r", "lora_alpha", "rl", "rl_beta", "optimizer", "learning_rate",
                "sample_packing"):
        assert cfg.get(key) == shipped.get(key), key


@pytest.mark.parametrize("path", CONFIGS, ids=IDS)
def test_smoke_cpu_runs(path, groups, runs, data_dirs):
    rep = groups[path]
    row = runs(rep, data_dirs[system_of(rep)])
    if rep != path:  # covered by an identical run; the identity is what makes that true
        assert system_of(rep) == system_of(path)
    assert row["steps"] == MAX_STEPS
    assert math.isfinite(row["final_loss"]) and row["final_loss"] > 0
    assert row["trainable_params"] and row["trainable_params"] > 0
    assert 0 < row["peak_rss_gib"] < 16 and row["wall_s"] > 0 and row["train_runtime_s"] > 0
    assert row["tokens_per_s"] and row["tokens_per_s"] > 0
    resolved = yaml.safe_load(Path(row["resolved"]).read_text())
    assert resolved["max_steps"] == MAX_STEPS, "max_steps is in the YAML Axolotl ran"
    has_eval = bool(resolved.get("test_datasets")) or (resolved.get("val_set_size") or 0) > 0
    assert (row["eval_loss"] is not None) == has_eval
    saved = json.loads((Path(resolved["output_dir"]) / "smoke.json").read_text())
    assert saved["final_loss"] == row["final_loss"]
    line = smoke_mod.table([row]).splitlines()[-1]
    assert rep.name in line and f"{row['final_loss']:.4f}" in line


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
    assert cmd[-3] == "-m" and cmd[-2] in ("axolotl.cli.train", "axpack.cpu_shim") and cmd[-1] == str(tmp_path / "c.yaml")
