"""axpack launch: the multi-node launch files and their preflight checks.

Golden files (``tests/golden/launch/*.txt``) are the ``--dry-run`` output of
the shipped FSDP2 config for each scheduler; after an intended change,
regenerate with ``AXPACK_UPDATE_GOLDEN=1`` and review the diff. Beyond the
text, each written script is run with stand-ins for ``torchrun`` / ``srun`` /
``scontrol`` / ``axolotl`` that record their argv, the accelerate config is
loaded by accelerate's own config class, and every preflight check has an
example that fails it (exit 1, one line naming the key or option).

Cost: ~20 s here (no training: the CLI in-process, one subprocess for the one-line errors and one
that stops `axpack train --nproc 2` before Axolotl; the one-node torchrun form is run for real by
tests/test_scale.py).
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
from pathlib import Path

import pytest
import yaml
from axpack.cli import main
from axpack.distributed import CPU_SHIM_MODULE, torchrun_argv
from axpack.training import axolotl_command
from click.testing import CliRunner
from conftest import ROOT, run_axpack

CONFIG = "configs/qwen2.5-7b/sft-qlora-v1-fsdp2.yaml"
GOLDEN = ROOT / "tests" / "golden" / "launch"
MULTI = ["--nodes", "2", "--gpus-per-node", "4", "--env", "NCCL_SOCKET_IFNAME=eth0", "--eff-batch", "16"]
CASES = {
    "torchrun-1x2": ["--gpus-per-node", "2", "--scheduler", "torchrun"],
    "torchrun-2x4": [*MULTI, "--scheduler", "torchrun"],
    "accelerate-2x4": [*MULTI, "--scheduler", "accelerate"],
    "slurm-2x4": [*MULTI, "--scheduler", "slurm", "--partition", "gpu", "--time", "12:00:00"],
    "ray-2x4": [*MULTI, "--scheduler", "ray", "--set", "output_dir=/mnt/shared/runs/plan-c/sft",
                "--shared-dir", "/mnt/shared"],
}


def launch(*args: str, cwd: Path = ROOT):
    """In-process ``axpack launch`` (no torch import: a few ms per call)."""
    old = Path.cwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(main, ["launch", *map(str, args)], catch_exceptions=False)
    finally:
        os.chdir(old)


@pytest.mark.parametrize("name", sorted(CASES))
def test_dry_run_is_the_golden_file(name):
    res = launch(CONFIG, *CASES[name], "--dry-run")
    assert res.exit_code == 0, res.output
    golden = GOLDEN / f"{name}.txt"
    if os.environ.get("AXPACK_UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(res.stdout, encoding="utf-8")
    assert res.stdout == golden.read_text(encoding="utf-8"), \
        "launch output changed: review, then AXPACK_UPDATE_GOLDEN=1"


def test_dry_run_writes_nothing(tmp_path):
    res = launch(CONFIG, *CASES["torchrun-2x4"], "--dry-run", "--out", tmp_path / "l")
    assert res.exit_code == 0 and not (tmp_path / "l").exists()


def _fake(bin_dir: Path, name: str, body: str = 'printf "%s\\n" "$0" "$@" > "$ARGV_OUT"') -> None:
    p = bin_dir / name
    p.write_text(f"#!/usr/bin/env bash\n{body}\n")
    p.chmod(p.stat().st_mode | stat.S_IEXEC)


def _run_script(script: Path, tmp_path: Path, extra_env: dict[str, str]) -> list[str]:
    """Run a rendered script with recording stand-ins first on PATH; its argv."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("torchrun", "srun", "axolotl"):
        _fake(bin_dir, name)
    _fake(bin_dir, "scontrol", 'printf "gpu-a01\\ngpu-a02\\n"')
    argv_out = tmp_path / "argv.txt"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "ARGV_OUT": str(argv_out), **extra_env}
    proc = subprocess.run(["bash", str(script)], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return argv_out.read_text().splitlines()


def test_written_files_run_as_rendered(tmp_path):
    """torchrun.sh / sbatch.sh / ray.sh call their launcher with the documented
    argv (stand-ins record it); config.yaml is the config plus the changes."""
    out = tmp_path / "tr"
    res = launch(CONFIG, *CASES["torchrun-2x4"], "--out", out)
    assert res.exit_code == 0, res.output
    script = out / "torchrun.sh"
    assert os.access(script, os.X_OK)
    argv = _run_script(script, tmp_path, {"MASTER_ADDR": "10.0.0.4"})
    assert Path(argv[0]).name == "torchrun"
    assert argv[1:] == torchrun_argv(out / "config.yaml", 4, 2, "10.0.0.4:29500", "axpack-sft-qlora-v1-fsdp2")[1:]
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    shipped = yaml.safe_load((ROOT / CONFIG).read_text())
    assert cfg["gradient_accumulation_steps"] == 1  # --eff-batch 16 = micro 2 × GA 1 × 8 ranks
    assert {k: v for k, v in cfg.items() if k != "gradient_accumulation_steps"} == \
        {k: v for k, v in shipped.items() if k != "gradient_accumulation_steps"}
    # without MASTER_ADDR the multi-node script stops before starting anything
    proc = subprocess.run(["bash", str(script)], cwd=ROOT, env={"PATH": "/usr/bin:/bin"}, capture_output=True,
                          text=True, check=False)
    assert proc.returncode != 0 and "MASTER_ADDR" in proc.stderr

    out = tmp_path / "sl"
    assert launch(CONFIG, *CASES["slurm-2x4"], "--out", out).exit_code == 0
    argv = _run_script(out / "sbatch.sh", tmp_path, {"SLURM_JOB_NODELIST": "gpu-a[01-02]", "SLURM_NNODES": "2",
                                                     "SLURM_JOB_ID": "4242"})
    assert Path(argv[0]).name == "srun" and argv[1] == "--kill-on-bad-exit=1"
    assert argv[2:] == torchrun_argv(out / "config.yaml", 4, 2, "gpu-a01:29500", "4242")
    text = (out / "sbatch.sh").read_text()
    assert "#SBATCH --nodes=2" in text and "#SBATCH --gpus-per-node=4" in text and "#SBATCH --partition=gpu" in text

    out = tmp_path / "ray"
    res = launch(CONFIG, *CASES["ray-2x4"][:-4], "--scheduler", "ray", "--set",
                 f"output_dir={tmp_path}/shared/sft", "--shared-dir", tmp_path / "shared", "--out", out)
    assert res.exit_code == 0, res.output
    argv = _run_script(out / "ray.sh", tmp_path, {})
    assert argv[1:] == ["train", str(out / "config.yaml"), "--use-ray"]
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert (cfg["use_ray"], cfg["ray_num_workers"], cfg["resources_per_worker"]) == (True, 8, {"GPU": 1})


def test_accelerate_config_loads_in_accelerate(tmp_path):
    from accelerate.commands.config.config_args import ClusterConfig

    out = tmp_path / "acc"
    assert launch(CONFIG, *CASES["accelerate-2x4"], "--out", out).exit_code == 0
    conf = ClusterConfig.from_yaml_file(out / "accelerate.yaml")
    assert (conf.num_machines, conf.num_processes, conf.machine_rank) == (2, 8, 0)
    assert str(conf.distributed_type).endswith("MULTI_GPU") and conf.mixed_precision == "bf16"


def test_one_node_script_is_the_line_axpack_train_runs(tmp_path):
    """torchrun.sh for one node == `axpack train --nproc 2` on a GPU box (the CPU
    form differs only in the rank module, axpack.cpu_shim)."""
    res = launch(CONFIG, *CASES["torchrun-1x2"], "--out", tmp_path)
    assert res.exit_code == 0
    last = (tmp_path / "torchrun.sh").read_text().splitlines()[-1]
    script_argv = shlex.split(last)[1:]  # after exec
    train_argv = axolotl_command(tmp_path / "config.yaml", nproc=2)
    assert Path(train_argv[0]).name == "torchrun"
    module = train_argv.index("-m") + 1
    assert train_argv[module] in ("axolotl.cli.train", CPU_SHIM_MODULE)
    train_argv[module] = "axolotl.cli.train"
    assert script_argv[1:] == train_argv[1:]


# ---- preflight: one failing example per check -----------------------------------


def test_preflight_batch_world_size_does_not_divide():
    res = launch(CONFIG, "--nodes", "1", "--gpus-per-node", "3", "--eff-batch", "16", "--dry-run")
    assert res.exit_code == 1 and res.stdout == ""
    want = (f"axpack: error: {CONFIG}: --eff-batch: 16 is not micro_batch_size 2 × a whole GA × world size 3 "
            "(1 node(s) × 3 GPU(s)) = multiples of 6; use --eff-batch 18, or a world size in [1, 2, 4, 8] "
            "(divisors of 16 / micro 2)")
    assert res.stderr.strip().splitlines() == [want]


def test_preflight_batch_fixed_deepspeed_sizes(tmp_path):
    ds = tmp_path / "zero2-fixed.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 2}, "train_batch_size": 16,
                              "gradient_accumulation_steps": "auto", "train_micro_batch_size_per_gpu": "auto"}))
    res = launch(CONFIG, "--gpus-per-node", "4", "--set", f"deepspeed={ds}", "--dry-run")
    assert res.exit_code == 1
    assert f"{ds}: train_batch_size: fixed at 16 but this launch runs 32 (micro 2 × GA 4 × world 4)" \
        in res.stderr and 'set "train_batch_size": "auto"' in res.stderr
    # the same file passes when the launch keeps 16
    assert launch(CONFIG, "--gpus-per-node", "4", "--set", f"deepspeed={ds}", "--eff-batch", "16",
                  "--dry-run").exit_code == 0


def test_preflight_nccl_interface_missing_for_multi_node():
    res = launch(CONFIG, "--nodes", "2", "--gpus-per-node", "4", "--scheduler", "slurm", "--dry-run")
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"axpack: error: {CONFIG}: NCCL_SOCKET_IFNAME: not set for a "
                                                   "2-node run")
    assert "--env NCCL_SOCKET_IFNAME=" in lines[0]
    # one node needs no interface
    assert launch(CONFIG, "--gpus-per-node", "4", "--dry-run").exit_code == 0


def test_preflight_ray_output_dir_not_on_shared_storage(tmp_path):
    base = [CONFIG, "--nodes", "2", "--gpus-per-node", "4", "--env", "NCCL_SOCKET_IFNAME=eth0", "--scheduler", "ray",
            "--dry-run"]
    res = launch(*base)  # the shipped relative runs/plan-c/sft
    assert res.exit_code == 1 and "output_dir: runs/plan-c/sft is relative" in res.stderr
    local = tmp_path / "node-local" / "sft"
    res = launch(*base, "--set", f"output_dir={local}")
    assert res.exit_code == 1 and f"output_dir: {local} is not under a --shared-dir" in res.stderr
    assert launch(*base, "--set", f"output_dir={local}", "--shared-dir", tmp_path).exit_code == 0
    # one Ray node writes where it runs: no shared storage needed
    assert launch(CONFIG, "--gpus-per-node", "4", "--scheduler", "ray", "--dry-run").exit_code == 0


def test_cli_errors_are_one_line_without_traceback(tmp_path):
    proc = run_axpack("launch", CONFIG, "--nodes", "2", "--gpus-per-node", "4", "--env", "NCCL_SOCKET_IFNAME",
                      "--dry-run", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "axpack: error: --env NCCL_SOCKET_IFNAME: expected NAME=VALUE, e.g. --env " \
                                  "NCCL_SOCKET_IFNAME=eth0"
    proc = run_axpack("launch", tmp_path / "missing.yaml", "--gpus-per-node", "2", check=False)
    assert proc.returncode in (1, 2) and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) <= 3


def test_train_refuses_sharded_configs_on_cpu_ranks(tmp_path, demo_model):
    """FSDP2/DeepSpeed on CPU ranks would be plain DDP in disguise: one line, exit 1,
    before Axolotl starts (no GPU on this box; skipped where there is one)."""
    from axpack.distributed import gpu_count

    if gpu_count():
        pytest.skip("this machine has a CUDA GPU: the ranks would be GPU ranks")
    data = tmp_path / "sft.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n')
    cfg = yaml.safe_load((ROOT / "configs/smollm2-135m/sft-lora.yaml").read_text())
    cfg["datasets"][0]["path"] = str(data)
    cfg.update(output_dir=str(tmp_path / "out"), fsdp_version=2, fsdp_config={"reshard_after_forward": True})
    path = tmp_path / "sft-lora-fsdp2.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = run_axpack("train", path, "--nproc", "2", "--no-validate", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{path}: fsdp_version: FSDP/DeepSpeed shard only across GPUs" in proc.stderr
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()
