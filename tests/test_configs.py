"""The config pack: every configs/**/*.yaml passes axpack validate (Axolotl's
schema + axpack's checks) with its data prepped by the command its own header
documents, and follows the pack's layout (same ### sections, same key order,
listed in configs/README.md, DeepSpeed JSON parses).
"""

from __future__ import annotations

import glob
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml
from axpack.validation import validate_config
from conftest import ROOT, run_axpack

CONFIGS = sorted(Path(p) for p in glob.glob(str(ROOT / "configs" / "**" / "*.yaml"), recursive=True))
IDS = [str(p.relative_to(ROOT / "configs")) for p in CONFIGS]

SECTIONS = ["model", "adapter", "data", "training", "precision", "eval & save", "output"]
# Every key a shipped config may use, in the pack's order (ARCHITECTURE.md "Config files").
ORDER = {
    "model": ["base_model", "tokenizer_config", "chat_template", "chat_template_kwargs", "trust_remote_code"],
    "adapter": ["adapter", "load_in_4bit", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules",
                "lora_target_linear"],
    "data": ["datasets", "test_datasets", "dataset_prepared_path", "val_set_size", "sequence_len",
             "sample_packing", "remove_unused_columns"],
    "training": ["rl", "rl_beta", "dpo_loss_type", "num_epochs", "max_steps", "micro_batch_size",
                 "gradient_accumulation_steps", "learning_rate", "lr_scheduler", "warmup_ratio", "warmup_steps",
                 "optimizer", "weight_decay", "max_grad_norm", "seed"],
    "precision": ["bf16", "fp16", "tf32", "attn_implementation", "gradient_checkpointing", "deepspeed", "fsdp_version",
                  "fsdp_config", "plugins",
                  "liger_rope", "liger_rms_norm", "liger_rms_norm_gated", "liger_glu_activation",
                  "liger_fused_linear_cross_entropy", "lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel"],
    "eval & save": ["eval_batch_size", "logging_steps", "eval_steps", "evals_per_epoch", "save_steps",
                    "saves_per_epoch", "save_total_limit", "save_safetensors"],
    "output": ["output_dir", "use_tensorboard", "hub_model_id"],
}
DATA_LINE = re.compile(r"^# Data: (axpack (?:prep|script) .+)$", re.MULTILINE)


def data_commands() -> dict[str, list[str]]:
    """system -> the axpack command a config header documents ("# Data: ...").
    The demo's is the Makefile's `make prep RUN=demo`."""
    cmds: dict[str, list[str]] = {}
    for path in CONFIGS:
        for m in DATA_LINE.finditer(path.read_text(encoding="utf-8")):
            args = shlex.split(m.group(1))[1:]
            out = args[args.index("--out") + 1]
            system = re.match(r"runs/([^/]+)/data$", out).group(1)
            assert cmds.get(system, args) == args, f"two different data commands for {system}"
            cmds[system] = args
    cmds.setdefault("demo", ["prep", "data/demo/*.jsonl", "--out", "runs/demo/data", "--system", "strip"])
    return cmds


@pytest.fixture(scope="module")
def data_root(tmp_path_factory, demo_model) -> Path:
    """A repo-like root where every system's data was made by its documented
    command, and each Plan C base (runs/<run>/sft-merged, made by axpack merge)
    is stood in for by the embedded SmolLM2 folder."""
    root = tmp_path_factory.mktemp("pack-root")
    for name in ("models", "configs"):
        (root / name).symlink_to(ROOT / name, target_is_directory=True)
    for args in data_commands().values():
        expanded = []
        for a in args:
            matches = sorted(glob.glob(str(ROOT / a))) if "*" in a else []
            expanded += matches or [a]
        i = expanded.index("--out")
        expanded[i + 1] = str(root / expanded[i + 1])
        run_axpack(*expanded)
    for path in CONFIGS:
        base = yaml.safe_load(path.read_text())["base_model"]
        if base.startswith("runs/") and not (root / base).exists():
            (root / base).parent.mkdir(parents=True, exist_ok=True)
            (root / base).symlink_to(demo_model, target_is_directory=True)
    return root


def test_the_pack_is_all_there():
    names = set(IDS)
    for want in ("qwen3.5-9b/sft-qlora.yaml", "qwen3.5-9b/dpo-qlora.yaml", "llama-3.2-3b/sft-qlora-script.yaml",
                 "qwen2.5-7b/sft-qlora-8gb.yaml", "qwen2.5-7b/sft-qlora-a100.yaml", "qwen2.5-7b/sft-qlora-v1.yaml",
                 "qwen2.5-7b/dpo-qlora-planc.yaml", "qwen2.5-7b/sft-qlora-zero2.yaml",
                 "llama-3.1-8b/sft-lora-style.yaml", "llama-3.1-8b/sft-qlora-style.yaml"):
        assert want in names
    for ds in ("zero2.json", "zero3.json"):
        stage = json.loads((ROOT / "configs/deepspeed" / ds).read_text())["zero_optimization"]["stage"]
        assert stage == int(ds[4])


@pytest.mark.parametrize("path", CONFIGS, ids=IDS)
def test_config_passes_validate_with_its_data(path, data_root):
    problems = validate_config(path, check_data=True, root=data_root)
    assert problems == [], "\n".join(map(str, problems))


def test_every_config_passes_validate_without_data():
    """`make validate NO_DATA=1` from the repo root, through the CLI."""
    proc = run_axpack("validate", "--no-data", *CONFIGS, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert proc.stdout.count(": ok") == len(CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=IDS)
def test_sections_and_key_order(path):
    text = path.read_text(encoding="utf-8")
    heads = re.findall(r"(?m)^### (.+?)\s*$", text)
    assert heads == SECTIONS, f"sections {heads}"
    section = None
    last: dict[str, int] = {}
    for line in text.splitlines():
        m = re.match(r"^### (.+?)\s*$", line)
        if m:
            section = m.group(1)
            continue
        m = re.match(r"^([A-Za-z_][\w]*):", line)
        if not m:
            continue
        key = m.group(1)
        assert section is not None, f"{key} before ### model"
        assert key in ORDER[section], f"{key} is not a ### {section} key (or add it to ORDER in this test)"
        pos = ORDER[section].index(key)
        assert pos >= last.get(section, -1), f"{key} out of order in ### {section}"
        last[section] = pos


@pytest.mark.parametrize("path", CONFIGS, ids=IDS)
def test_no_machine_paths_and_runs_layout(path):
    cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"(/home/|/root/|/Users/|/tmp/|C:\\\\)", text)
    run = re.match(r"^runs/([^/]+)/", cfg["output_dir"]).group(1)
    for ds in (cfg.get("datasets") or []) + (cfg.get("test_datasets") or []):
        assert ds["path"].startswith(f"runs/{run}/data/"), "datasets point at axpack prep's output"


def test_readme_table_lists_every_config():
    readme = (ROOT / "configs" / "README.md").read_text(encoding="utf-8")
    rows = [ln for ln in readme.splitlines() if ln.startswith("| ")]
    for rel in IDS:
        assert any(f"`{rel}`" in r for r in rows), f"configs/README.md has no row for {rel}"


def test_make_sample_data_runs_every_config_header_command():
    """`make sample-data` (every config then finds its data; plan/diff count real
    examples) runs exactly the "# Data:" commands of the shipped configs."""
    import subprocess

    proc = subprocess.run(["make", "-n", "--no-print-directory", "sample-data"], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    made = sorted(shlex.split(ln)[1:] for ln in proc.stdout.splitlines() if ln.startswith(".venv/bin/axpack "))
    assert made == sorted(data_commands().values())


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_make_train_targets_pass_max_steps_through(stage):
    """`make sft CONFIG=... MAX_STEPS=3`, as users type it, reaches `axpack train --max_steps 3`
    (which writes max_steps into the YAML Axolotl runs); without MAX_STEPS no flag is passed."""
    import subprocess

    cfg = {"sft": "configs/qwen3.5-9b/sft-qlora.yaml", "dpo": "configs/qwen3.5-9b/dpo-qlora.yaml"}[stage]

    def train_line(*extra: str) -> list[str]:
        proc = subprocess.run(["make", "-n", "--no-print-directory", stage, f"CONFIG={cfg}", *extra], cwd=ROOT,
                              capture_output=True, text=True, check=True)
        (line,) = [ln for ln in proc.stdout.splitlines() if " train " in ln]
        return shlex.split(line)

    with_steps = train_line("MAX_STEPS=3")
    assert with_steps[with_steps.index("--max_steps") + 1] == "3"
    assert "--max_steps" not in train_line()
