"""Faults (issue #7, part 3): preemption (SIGKILL) and a full disk.

Each kill test starts the real ``axpack`` command in its own process group,
waits until its temp output is being written, kills the whole group with
SIGKILL (a preempted machine: children die too), then checks that nothing
under a final name passes for finished, and that a rerun completes with
output byte-identical to an uninterrupted run.

Model-sized steps reuse the shared ``trained_run`` (copied into tmp_path
where the step writes next to its input); the only training is the resume
test: a 3-step SmolLM2 run killed after its first checkpoint and finished
with ``make sft CONFIG=... RESUME=1``. A token is planted in the environment
of that run and checked against its logs and outputs (issue #7, part 4).
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from axpack import gguf_build as gguf
from axpack import runs
from axpack.errors import AxpackError
from conftest import AXPACK, ROOT, run_axpack

TOKEN = "hf_PLANTEDtok3nDoNotLeak0123456789abcdef"
KILL_TIMEOUT = 900  # s to wait for the moment to kill (a cold Axolotl start on shared CI cores is slow)
OUTPUT_NAMES = ("sft.jsonl", "dpo.jsonl", "rejects.jsonl", "duplicates.jsonl", "summary.json")


# --------------------------------------------------------------------------- helpers


def start(*args, log: Path, env: dict | None = None) -> subprocess.Popen:
    """The real CLI (or any argv when args[0] is a list) in a new process group, output to ``log``."""
    argv = [str(a) for a in (args[0] if isinstance(args[0], list) else [*AXPACK, *args])]
    fh = open(log, "wb")  # noqa: SIM115 - the child owns it; closed with the process
    return subprocess.Popen(argv, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)


def kill_when(proc: subprocess.Popen, ready, what: str, timeout: float = KILL_TIMEOUT) -> None:
    """Poll ``ready()`` every 20 ms; when true, SIGKILL the process group.

    Fails when the command exits first (nothing was interrupted) or never gets there.
    """
    t0 = time.monotonic()
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the command exited ({proc.returncode}) before {what}: nothing was interrupted")
        if time.monotonic() - t0 > timeout:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def _size(pattern_dir: Path, pattern: str) -> int:
    return max((p.stat().st_size for p in pattern_dir.glob(pattern) if p.is_file()), default=0)


def visible(folder: Path) -> dict[str, bytes]:
    """Every non-hidden file (a hidden ``.NAME.*.tmp`` is, by its name, unfinished)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")}


# --------------------------------------------------------------------------- prep


def _big_raw(path: Path, n: int, tag: str) -> Path:
    """``n`` records (SFT and DPO, a malformed line every 997th, a duplicate
    every 499th): ~120 bytes each, so prep runs long enough to be killed."""
    lines = []
    for i in range(n):
        if i % 997 == 996:
            lines.append('{"messages": [')
        elif i % 499 == 498:
            lines.append(lines[-1])
        elif i % 3 == 0:
            lines.append(json.dumps({"prompt": f"{tag} prompt {i}", "chosen": f"good {i}", "rejected": f"bad {i}"}))
        else:
            lines.append(json.dumps({"messages": [{"role": "user", "content": f"{tag} question {i}"},
                                                  {"role": "assistant", "content": f"answer {i}"}]}))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_prep_killed_mid_write_leaves_nothing_finished(tmp_path):
    raw = _big_raw(tmp_path / "big.jsonl", 600_000, "big")
    small = _big_raw(tmp_path / "small.jsonl", 2_000, "small")

    # 1. fresh folder, killed while writing: no output under a final name
    out = tmp_path / "out"
    proc = start("prep", raw, "--out", out, "-q", log=tmp_path / "kill1.log")
    kill_when(proc, lambda: out.is_dir() and _size(out, ".sft.jsonl.*.tmp") > (1 << 20), "prep writes sft.jsonl")
    assert visible(out) == {}, f"finished-looking files after the kill: {sorted(visible(out))}"

    # 2. a folder holding a finished run, killed while rewriting it: the old set, intact
    old = tmp_path / "old"
    run_axpack("prep", small, "--out", old, "-q")
    before = visible(old)
    proc = start("prep", raw, "--out", old, "-q", log=tmp_path / "kill2.log")
    kill_when(proc, lambda: _size(old, ".sft.jsonl.*.tmp") > (1 << 20), "prep rewrites sft.jsonl")
    assert visible(old) == before, "a killed rerun changed the finished outputs"

    # 3. the rerun completes, byte-identical to an uninterrupted run
    run_axpack("prep", raw, "--out", out, "-q")
    ref = tmp_path / "ref"
    run_axpack("prep", raw, "--out", ref, "-q")
    assert visible(out) == visible(ref)
    assert set(visible(out)) == set(OUTPUT_NAMES)
    totals = json.loads((out / "summary.json").read_text())["totals"]
    assert totals["read"] == 600_000 == totals["kept"] + totals["duplicates"] + totals["rejected"]
    # what the kill left is hidden and named as unfinished (never a .jsonl/.json name)
    assert all(p.name.startswith(".") and p.name.endswith(".tmp") for p in out.iterdir() if p.name not in OUTPUT_NAMES)


# --------------------------------------------------------------------------- merge


def _copy_stage(src: Path, dest: Path) -> None:
    """An adapter folder without its checkpoints (as merge reads it)."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("checkpoint-*"))


def _merge_config(trained_run: dict, run: Path) -> Path:
    """The trained SFT config, with output_dir moved to a copy under ``run``."""
    _copy_stage(trained_run["sft_dir"], run / "sft")
    cfg = yaml.safe_load(trained_run["sft_config"].read_text())
    cfg["output_dir"] = str(run / "sft")
    path = run / "sft-lora.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


COMPARED = ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
            "generation_config.json")


@pytest.fixture(scope="module")
def killed_merge(trained_run, tmp_path_factory):
    """A merge killed while writing model.safetensors, then rerun."""
    run = tmp_path_factory.mktemp("merge") / "run"
    config = _merge_config(trained_run, run)
    proc = start("merge", config, log=run.parent / "kill.log")
    kill_when(proc, lambda: _size(run, ".sft-merged.*.tmp/model.safetensors") > (16 << 20),
              "merge writes model.safetensors")
    after_kill = sorted(p.name for p in run.iterdir())
    stale = sorted(p.name for p in run.glob(".sft-merged.*.tmp"))
    rerun = run_axpack("merge", config)
    return {"run": run, "after_kill": after_kill, "stale": stale, "rerun": rerun, "config": config}


def test_merge_killed_leaves_nothing_finished_and_rerun_is_identical(killed_merge, trained_run):
    run = killed_merge["run"]
    assert "sft-merged" not in killed_merge["after_kill"], "a killed merge left a folder under the final name"
    assert killed_merge["stale"], "the kill did not happen while the temp folder was being written"
    merged = run / "sft-merged"
    assert (merged / "axpack-merge.json").is_file()
    for name in COMPARED:
        if (trained_run["sft_merged"] / name).is_file():
            assert (merged / name).read_bytes() == (trained_run["sft_merged"] / name).read_bytes(), name


def test_merge_rerun_removes_the_killed_temp_folder(killed_merge):
    assert not list(killed_merge["run"].glob(".sft-merged.*.tmp")), "GBs of a killed merge left on disk"
    assert "left by an interrupted merge" in killed_merge["rerun"].stderr


def test_merge_refuses_an_unfinished_training(trained_run, tmp_path):
    """A retrain that was killed (train removed axpack-done.json when it
    started) leaves the previous adapter in output_dir: merge must not
    present it as the result of this config."""
    run = tmp_path / "run"
    config = _merge_config(trained_run, run)
    (run / "sft" / runs.DONE_FILE).unlink()
    proc = run_axpack("merge", config, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "training has not finished" in line and "RESUME=1" in line
    assert not (run / "sft-merged").exists()


# --------------------------------------------------------------------------- convert + quantize

# shell metacharacters in the output path: the converter and quantizer get argument lists
ODD = "out dir; touch PWNED $(touch PWNED2) `touch PWNED3`"


@pytest.fixture(scope="module")
def killed_gguf(trained_run, tmp_path_factory):
    """Two independent GGUF exports of the trained model: X killed during the
    conversion, Y killed during quantization; both rerun to completion."""
    base = tmp_path_factory.mktemp("gguf")
    name = "test-e2e"
    res = {}
    for key, pattern, what in (("x", f".{name}-f16.gguf.*.tmp", "the f16 conversion"),
                               ("y", f".{name}-q4_k_m.gguf.*.tmp", "quantization to q4_k_m")):
        out = base / key / ODD
        args = ("gguf", trained_run["merged"], "--out", out, "--name", name, "--quants", "q4_k_m")
        proc = start(*args, log=base / f"{key}.log")
        kill_when(proc, lambda out=out, pattern=pattern: out.is_dir() and _size(out, pattern) > (4 << 20), what)
        killed = visible(out)
        manifest = json.loads(killed.get("manifest.json", b'{"artifacts": {}}'))["artifacts"]
        rerun = run_axpack(*args)
        res[key] = {"out": out, "killed": sorted(killed), "manifest_after_kill": sorted(manifest), "rerun": rerun}
    res["name"] = name
    res["base"] = base
    return res


def test_convert_killed_leaves_no_finished_gguf(killed_gguf):
    x = killed_gguf["x"]
    assert not [n for n in x["killed"] if n.endswith(".gguf")], x["killed"]
    assert x["manifest_after_kill"] == []
    assert "(left by an interrupted run)" in x["rerun"].stderr


def test_quantize_killed_keeps_the_finished_f16_only(killed_gguf):
    y, name = killed_gguf["y"], killed_gguf["name"]
    assert [n for n in y["killed"] if n.endswith(".gguf")] == [f"{name}-f16.gguf"]
    assert y["manifest_after_kill"] == [f"{name}-f16.gguf"]
    assert "skipping conversion" in y["rerun"].stdout + y["rerun"].stderr


def test_gguf_reruns_after_kills_are_byte_identical(killed_gguf):
    x, y, name = killed_gguf["x"], killed_gguf["y"], killed_gguf["name"]
    files = [f"{name}-f16.gguf", f"{name}-q4_k_m.gguf"]
    for f in files:
        assert (x["out"] / f).read_bytes() == (y["out"] / f).read_bytes(), f
    mx = json.loads((x["out"] / "manifest.json").read_text())["artifacts"]
    my = json.loads((y["out"] / "manifest.json").read_text())["artifacts"]
    assert sorted(mx) == sorted(my) == sorted(files)
    for f in files:
        assert {k: v for k, v in mx[f].items() if k != "seconds"} == {k: v for k, v in my[f].items() if k != "seconds"}
    for d in (x["out"], y["out"]):  # only finished files and the manifest remain
        assert sorted(p.name for p in d.iterdir()) == sorted([*files, "manifest.json"])
    assert not [p for p in killed_gguf["base"].rglob("PWNED*")] and not list(ROOT.glob("PWNED*"))


# --------------------------------------------------------------------------- training resume


def test_training_resumes_from_the_last_checkpoint(trained_run, tmp_path):
    """3 SFT steps, a checkpoint every step; killed once checkpoint-1 is
    complete; ``make sft CONFIG=... RESUME=1`` finishes steps 2-3 from it."""
    cfg = yaml.safe_load((ROOT / "configs/smollm2-135m/sft-lora.yaml").read_text())
    cfg.pop("saves_per_epoch", None)
    out = tmp_path / "sft"
    cfg.update({"max_steps": 3, "save_steps": 1, "save_total_limit": 2, "output_dir": str(out),
                "dataset_prepared_path": str(tmp_path / "prepared")})
    cfg["datasets"][0]["path"] = str(trained_run["data_dir"].relative_to(ROOT) / "sft.jsonl")
    config = tmp_path / "sft-lora.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = {**os.environ, "HF_TOKEN": TOKEN, "HUGGING_FACE_HUB_TOKEN": TOKEN, "AXPACK_OFFLINE": "1"}

    proc = start("train", config, "--stage", "sft", log=tmp_path / "kill.log", env=env)
    kill_when(proc, lambda: (out / "checkpoint-1" / "trainer_state.json").is_file(), "checkpoint-1 is complete")
    # killed: nothing passes for a finished run
    assert not (out / runs.DONE_FILE).exists()
    assert not (out / "adapter_model.safetensors").exists()
    assert runs.latest_checkpoint(out) == out / "checkpoint-1"
    ckpt1 = json.loads((out / "checkpoint-1" / "trainer_state.json").read_text())
    loss1 = next(e["loss"] for e in ckpt1["log_history"] if "loss" in e)
    refused = run_axpack("merge", config, check=False)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr

    resume = subprocess.run(["make", "--no-print-directory", "-o", "setup", "sft", f"CONFIG={config}", "RESUME=1"],
                            cwd=ROOT, capture_output=True, text=True, env=env, check=False)
    log = resume.stdout + resume.stderr
    assert resume.returncode == 0, log[-5000:]
    resolved = yaml.safe_load((out / runs.RESOLVED_FILE).read_text())
    assert resolved["resume_from_checkpoint"] == str(out / "checkpoint-1")
    assert (out / runs.DONE_FILE).is_file() and (out / "adapter_model.safetensors").is_file()
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    losses = {e["step"]: e["loss"] for e in state["log_history"] if "loss" in e}
    assert sorted(losses) == [1, 2, 3], state["log_history"]
    assert losses[1] == loss1, "step 1 must be carried over from checkpoint-1"
    # the resumed process trained steps 2 and 3 only
    trained_here = [line for line in log.splitlines() if "'loss'" in line or '"loss"' in line]
    assert len(trained_here) == 2, trained_here

    # no token in the logs or anything the run wrote
    kill_log = (tmp_path / "kill.log").read_text(errors="replace")
    assert TOKEN not in log and TOKEN not in kill_log
    for p in out.rglob("*"):
        if p.is_file():
            assert b"PLANTED" not in p.read_bytes(), p


def test_resume_skips_a_half_written_checkpoint(tmp_path):
    """Killed while saving checkpoint-2 (HF writes trainer_state.json last):
    resume must pick checkpoint-1, never the half-written one."""
    for n, complete in ((1, True), (2, False), (3, False)):
        d = tmp_path / f"checkpoint-{n}"
        d.mkdir()
        (d / "adapter_model.safetensors").write_bytes(b"x")
        if complete:
            (d / "trainer_state.json").write_text(json.dumps({"global_step": n}))
    (tmp_path / "checkpoint-3" / "trainer_state.json").write_text('{"global_step": 3, "log_hi')  # cut mid-write
    assert runs.latest_checkpoint(tmp_path) == tmp_path / "checkpoint-1"
    shutil.rmtree(tmp_path / "checkpoint-1")
    assert runs.latest_checkpoint(tmp_path) is None


# --------------------------------------------------------------------------- full disk


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs (needs root / CAP_SYS_ADMIN): a real ENOSPC."""
    mnt = tmp_path / "tiny-disk"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a 1 MiB tmpfs for a real ENOSPC (not root?): {proc.stderr.strip()[:200]}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_is_one_line_and_leaves_nothing(tiny_disk, trained_run, tmp_path):
    """prep, merge and gguf onto a full disk: one line, exit 1, the disk left empty."""
    raw = _big_raw(tmp_path / "raw.jsonl", 30_000, "disk")
    merge_cfg = _merge_config(trained_run, tmp_path / "run")
    for args in (["prep", raw, "--out", tiny_disk / "data", "-q"],
                 ["merge", merge_cfg, "--out", tiny_disk / "merged"],
                 ["gguf", trained_run["merged"], "--out", tiny_disk / "gguf", "--name", "t", "--quants", "q4_k_m"]):
        proc = run_axpack(*args, check=False)
        assert proc.returncode == 1, (args[0], proc.stderr[-3000:])
        assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
        errors = [m for m in proc.stderr.splitlines() if m.startswith("axpack: error: ")]
        assert len(errors) == 1 and ("no space left" in errors[0].lower() or "GiB free" in errors[0]), proc.stderr
        assert proc.stderr.strip().splitlines()[-1] == errors[0]
        leftovers = [p for p in tiny_disk.rglob("*") if p.is_file()]
        assert not leftovers, (args[0], leftovers)


def test_free_disk_check_runs_before_any_write(trained_run, tmp_path, monkeypatch):
    """gguf compares free disk with what it will write before converting."""
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(gguf.shutil, "disk_usage", lambda p: usage(1 << 40, (1 << 40) - (300 << 20), 300 << 20))
    monkeypatch.setattr(gguf.subprocess, "run", lambda *a, **k: pytest.fail("the converter ran on a full disk"))
    out = tmp_path / "gguf"
    with pytest.raises(AxpackError, match=r"GiB free, the GGUFs need") as err:
        gguf.build_ggufs(trained_run["merged"], out, "t", ["q4_k_m"])
    assert err.value.exit_code == 1
    assert not [p for p in out.rglob("*") if p.is_file()] if out.exists() else True
