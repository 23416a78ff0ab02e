"""Shared fixtures: the embedded model, the third-party data, and ONE trained run.

``trained_run`` is a real SmolLM2-135M SFT + DPO run (a few steps each) built
through the CLI exactly as a user would (prep -> train -> merge -> train ->
merge). It lives in ``runs/test-e2e/`` and is reused: every step recognises its
finished output by fingerprint, so a warm ``make test`` does not train again.
Later suites (export, verify, reliability) take it instead of training.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
AXPACK = [str(Path(sys.executable).parent / "axpack")]
E2E_RUN = ROOT / "runs" / "test-e2e"
SFT_STEPS = 3
DPO_STEPS = 2

os.environ.setdefault("AXPACK_OFFLINE", "1")
os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")


def run_axpack(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run the real ``axpack`` console script from the repo root; capture output."""
    proc = subprocess.run([*AXPACK, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          check=False, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"axpack {' '.join(map(str, args))} exited {proc.returncode}:\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(scope="session")
def demo_model() -> Path:
    """The embedded SmolLM2 folder (built by make setup)."""
    path = ROOT / "models" / "smollm2-135m-instruct"
    if not (path / "config.json").is_file():
        pytest.skip("models/smollm2-135m-instruct missing: run make setup (axpack demo-model)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (third-party test data); absent in a user's clone."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} absent: third-party test data is only beside CI/dev clones")
    return SHARED_DATA


def write_test_config(src: Path, dest: Path, overrides: dict) -> Path:
    """Copy a shipped config with ``overrides`` applied (top-level keys and
    ``datasets.0.path``) to ``dest``."""
    cfg = yaml.safe_load(src.read_text())
    for key, value in overrides.items():
        if key == "datasets.0.path":
            cfg["datasets"][0]["path"] = value
        else:
            cfg[key] = value
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dest


@pytest.fixture(scope="session")
def trained_run(demo_model) -> dict[str, Path]:
    """A real SFT -> merge -> DPO -> merge run on SmolLM2, few steps each.

    Returns Paths: run_dir, data_dir, sft_config, dpo_config, sft_dir,
    sft_merged, dpo_dir, merged.
    """
    run = E2E_RUN
    rel = run.relative_to(ROOT)
    data = run / "data"
    raw = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "data" / "demo").glob("*.jsonl"))
    run_axpack("prep", *raw, "--out", rel / "data", "--system", "strip")
    sft_cfg = write_test_config(ROOT / "configs/smollm2-135m/sft-lora.yaml", run / "configs/sft-lora.yaml", {
        "datasets.0.path": str(rel / "data/sft.jsonl"),
        "dataset_prepared_path": str(rel / "prepared/sft"),
        "output_dir": str(rel / "sft"),
        "max_steps": SFT_STEPS,
    })
    run_axpack("train", sft_cfg, "--stage", "sft")
    run_axpack("merge", sft_cfg)
    dpo_cfg = write_test_config(ROOT / "configs/smollm2-135m/dpo-lora.yaml", run / "configs/dpo-lora.yaml", {
        "base_model": str(rel / "sft-merged"),
        "datasets.0.path": str(rel / "data/dpo.jsonl"),
        "dataset_prepared_path": str(rel / "prepared/dpo"),
        "output_dir": str(rel / "dpo"),
        "max_steps": DPO_STEPS,
    })
    run_axpack("train", dpo_cfg, "--stage", "dpo")
    run_axpack("merge", dpo_cfg)
    return {
        "run_dir": run, "data_dir": data, "sft_config": sft_cfg, "dpo_config": dpo_cfg,
        "sft_dir": run / "sft", "sft_merged": run / "sft-merged", "dpo_dir": run / "dpo",
        "merged": run / "merged",
    }


# ---- what each suite costs (printed at the end of every run, CI included) ----
_FILE_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report) -> None:
    """Add each test phase's duration (setup, call, teardown) to its file."""
    name = report.nodeid.split("::", 1)[0]
    _FILE_SECONDS[name] = _FILE_SECONDS.get(name, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter) -> None:
    """Seconds per test file, slowest first. A session fixture's build (the
    trained run, the smoke data) is charged to the first file that uses it."""
    if not _FILE_SECONDS:
        return
    terminalreporter.section("seconds per suite")
    for name, secs in sorted(_FILE_SECONDS.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"{secs:8.1f}  {name}")
    terminalreporter.write_line(f"{sum(_FILE_SECONDS.values()):8.1f}  total")
