"""Two ranks equal one: the proof that ``eff. batch = micro × GA × world size``.

A real two-process data-parallel run on CPU (``axpack train --nproc 2``:
``axolotl preprocess`` once, then ``torchrun --standalone --nproc-per-node 2
-m axpack.cpu_shim``, gloo) against a one-process run with twice the gradient
accumulation, on SmolLM2-135M and 16 generated conversations, same data order:

- 2 ranks × micro 2 × GA 1  (each step: batch 2k on rank 0, 2k+1 on rank 1)
- 1 rank  × micro 2 × GA 2  (each step: batches 2k and 2k+1, accumulated)

Same data order: no packing, ``curriculum_sampling: true`` (Axolotl's
SequentialSampler; accelerate hands rank r the batches r, r + 2, ...), one
prepared dataset for both runs, LoRA dropout 0, same seed and schedule.

Both must log the same per-step loss and end with the same adapter. Every
reply has the same number of trainable tokens (see :func:`_equal_token_data`):
Axolotl 0.21 sets ``average_tokens_across_devices=False``
(core/builders/base.py), so a rank's loss is the mean over its own trainable
tokens and DDP averages the ranks, while gradient accumulation divides the
summed loss by all trainable tokens of the step; the two weightings agree
only when the micro batches hold equally many trainable tokens. Measured on
the ragged demo data instead: per-step loss |Δ| up to 0.047 and adapter
‖Δ‖/‖A‖ = 2.3 % after 3 steps, i.e. eff. batch = micro × GA × world counts
rows, and tokens weigh differently across ranks than across GA steps.

Tolerance: measured Δ = 0 here (loss, grad norm and every adapter tensor bit
for bit). With two ranks that is what fp32 allows: DDP computes (g₀ + g₁) / 2
and GA computes g₀ / 2 + g₁ / 2, and halving is exact. Not guaranteed
elsewhere: the one-rank run uses all cores and each rank one, and a CPU's
matmul kernels may block their sums by thread count (oneDNN/AMX), so the
test allows |Δ loss| ≤ 1e-5 and adapter max |Δ| ≤ 1e-5, ‖Δ‖/‖A‖ ≤ 1e-5;
an equivalence failure moves them by far more (ragged tokens above: 2e-2;
ranks that each train the whole data set, which accelerate does on CPU
without ``ACCELERATE_USE_CPU``: a different step-1 loss and half the epoch).

Cost: two Axolotl launches (the two-rank one is preprocess + 2 ranks), 176 s
of CPU in all (user + sys); measured 5.3 min of wall time on the 2-core box
at load average 10 (five sessions training at once), so ≈ 2-3 min alone; the
shim check adds ~25 s (one Axolotl import).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, run_axpack

STEPS = 3
MICRO = 2
LOSS_TOL = 1e-5
WEIGHT_TOL = 1e-5


def _config(dest: Path, data: Path, prepared: Path, out: Path, ga: int) -> Path:
    cfg = yaml.safe_load((ROOT / "configs/smollm2-135m/sft-lora.yaml").read_text())
    cfg["datasets"][0]["path"] = str(data)
    cfg.update({
        "dataset_prepared_path": str(prepared),
        "output_dir": str(out),
        "sample_packing": False,          # one example per row: the order is the file's
        "curriculum_sampling": True,      # SequentialSampler instead of a seeded RandomSampler
        "sequence_len": 256,
        "micro_batch_size": MICRO,
        "gradient_accumulation_steps": ga,
        "max_steps": STEPS,
        "logging_steps": 1,
        "save_steps": STEPS,
        "save_total_limit": 1,
        "dataloader_num_workers": 0,
        "dataset_num_proc": 1,
    })
    cfg.pop("saves_per_epoch", None)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dest


def _losses(out: Path) -> list[float]:
    state = json.loads((out / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    return [float(e["loss"]) for e in state["log_history"] if "loss" in e]


def _adapter(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / "adapter_model.safetensors"))


# Single-token words (SmolLM2's BPE, checked in the fixture): every reply is
# "Answer:" + REPLY_WORDS of them, so every example has the same number of
# trainable tokens while the (untrained) questions vary in length.
WORDS = [" river", " stone", " apple", " cloud", " green", " table", " music", " light", " north", " paper",
         " water", " happy"]
REPLY_WORDS = 12
EXAMPLES = 16  # ≥ 2 ranks × micro 2 × 3 steps


def _equal_token_data(path: Path, model_dir: Path) -> int:
    """Write EXAMPLES chat records whose assistant replies all tokenize to the same
    length; return that length."""
    import random

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    rng = random.Random(17)
    rows, lengths = [], set()
    for i in range(EXAMPLES):
        question = "Tell me" + " more" * (i % 5) + f" about item {i}."
        reply = "Answer:" + "".join(rng.choice(WORDS) for _ in range(REPLY_WORDS))
        lengths.add(len(tok(reply, add_special_tokens=False)["input_ids"]))
        rows.append({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]})
    assert len(lengths) == 1, f"replies tokenize to different lengths {lengths}: pick other WORDS"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return lengths.pop()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, demo_model) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("scale")
    data, prepared = root / "data" / "sft.jsonl", root / "prepared"
    _equal_token_data(data, demo_model)
    two = _config(root / "two.yaml", data, prepared, root / "two", ga=1)
    one = _config(root / "one.yaml", data, prepared, root / "one", ga=2)
    # --no-validate: test_configs validates the shipped config this one derives from
    proc = run_axpack("train", two, "--nproc", "2", "--no-validate", timeout=900)
    run_axpack("train", one, "--no-validate", timeout=600)
    return {"two": root / "two", "one": root / "one", "log": proc.stdout + proc.stderr}


def test_two_ranks_really_ran_data_parallel(runs):
    """The data was tokenized once before the ranks, and the ranks split it: the
    two-rank run's epoch after STEPS steps equals the one-rank GA 2 run's (each
    step consumes 2 × MICRO rows of EXAMPLES). Ranks that each trained the
    whole data set would report half of it."""
    log = runs["log"]
    assert "axolotl.cli.preprocess" in log and "--nproc-per-node 2" in log and "axpack.cpu_shim" in log
    two = json.loads((runs["two"] / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    one = json.loads((runs["one"] / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    assert two["global_step"] == one["global_step"] == STEPS
    assert two["epoch"] == one["epoch"] == STEPS * 2 * MICRO / EXAMPLES


def test_per_step_loss_agrees(runs):
    two, one = _losses(runs["two"]), _losses(runs["one"])
    assert len(two) == len(one) == STEPS
    diffs = [abs(a - b) for a, b in zip(two, one, strict=True)]
    assert max(diffs) <= LOSS_TOL, f"2 ranks {two} vs 1 rank GA 2 {one}"


def test_final_adapters_agree(runs):
    import torch

    a, b = _adapter(runs["two"]), _adapter(runs["one"])
    assert a.keys() == b.keys() and len(a) > 0
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    num = math.sqrt(sum(float(((a[k] - b[k]).double() ** 2).sum()) for k in a))
    den = math.sqrt(sum(float((b[k].double() ** 2).sum()) for k in b))
    assert worst <= WEIGHT_TOL and num / den <= WEIGHT_TOL, f"max |Δ| {worst:.3g}, ‖Δ‖/‖A‖ {num / den:.3g}"
    # the adapter moved: a test that compares two untrained adapters proves nothing
    init_b = [k for k in b if "lora_B" in k]
    assert init_b and any(torch.count_nonzero(b[k]) for k in init_b)


# ---- the CPU shim, without training (~10 s: imports Axolotl in a subprocess) ----


def test_cpu_shim_replaces_exactly_the_probes_axolotl_calls():
    """In a fresh CPU process: the installed Axolotl still binds the two probes
    and normalize_config where the shim patches them, the probe raises without
    a driver before the shim (the reason it exists) and answers True after, and
    the wrapped normalize_config turns only the integer device_map into CPU."""
    import subprocess
    import sys

    code = r"""
import os, json
os.environ.update(WORLD_SIZE="2", LOCAL_RANK="1")
import torch
assert not torch.cuda.is_available()
from axolotl.utils import environment, trainer
before = None
try:
    environment.check_cuda_p2p_support()
except RuntimeError as err:
    before = str(err)
from axpack import cpu_shim
done = cpu_shim.neutralise_probes()
from axolotl.utils.dict import DictDefault
cfg = DictDefault({"device_map": {"": 1}})
wrapped = cpu_shim._cpu_device_map(lambda c: None)
wrapped(cfg)
kept = DictDefault({"device_map": "auto"})
wrapped(kept)
import axolotl.cli.config as cli_config
print(json.dumps({"before": before, "done": done, "after": trainer.check_cuda_p2p_ib_support(),
                  "cli_wrapped": hasattr(cli_config.normalize_config, "__wrapped__"),
                  "dm": cfg["device_map"], "kept": kept["device_map"]}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["before"] and "NVIDIA driver" in out["before"]
    assert set(out["done"]) >= {"axolotl.utils.environment.check_cuda_p2p_support",
                                "axolotl.utils.trainer.check_cuda_p2p_ib_support",
                                "axolotl.utils.config.normalize_config"}
    assert out["after"] is True and out["cli_wrapped"] and out["dm"] == {"": "cpu"} and out["kept"] == "auto"


def test_cpu_shim_refuses_to_patch_a_gpu_process(monkeypatch):
    from axpack import cpu_shim

    monkeypatch.setattr(cpu_shim, "has_gpu", lambda: True)
    with pytest.raises(RuntimeError, match="CUDA device is visible"):
        cpu_shim.neutralise_probes()
