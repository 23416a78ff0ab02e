"""``axpack doctor``: one table of what this machine gives the pipeline.

Python, torch and CUDA (device or "CPU only"), bitsandbytes, Axolotl,
flash-attn and DeepSpeed, the llama.cpp build's compiled CPU features (and
whether they are the portable, AMX-free set :mod:`axpack.llama_build`
requires), the host CPU, the pinned converter, free disk where ``runs/``
lives, whether a Hugging Face token is configured (never printed) and
telemetry. ``make test`` prints the same table first, so a failure on a new
CPU can be read from the log. Exit 1 when a row FAILs (``--no-fail``: report only).
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import click

from . import env, llama_build
from .errors import AxpackError

MIN_FREE_GIB = 10  # a 7B run: ~15 GB merged fp16 + ~5 GB per Q4_K_M/Q5_K_M; the demo needs ~2


@dataclass
class Row:
    """One line of the table: what, what was found, ``ok`` / ``warn`` / ``FAIL``."""

    name: str
    value: str
    status: str = "ok"


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _torch_rows() -> list[Row]:
    v = _version("torch")
    if v is None:
        return [Row("torch", "not installed (make setup)", "FAIL")]
    try:
        import torch
    except Exception as e:  # noqa: BLE001 - a broken wheel is a FAIL row, never a doctor crash
        return [Row("torch", f"{v}: import failed: {type(e).__name__}: {e}", "FAIL")]
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        cuda = f"CUDA {torch.version.cuda}: {torch.cuda.device_count()} × {names}"
    else:
        cuda = f"CPU only (torch built for CUDA {torch.version.cuda})" if torch.version.cuda else "CPU only"
    return [Row("torch", v), Row("accelerator", cuda)]


def _llama_rows() -> list[Row]:
    v = _version("llama_cpp_python") or _version("llama-cpp-python")
    if v is None:
        return [Row("llama-cpp-python", "not installed (make setup)", "FAIL")]
    try:
        info = llama_build.system_info()
    except Exception as e:  # noqa: BLE001 - a broken build is a FAIL row, never a doctor crash
        return [Row("llama-cpp-python", f"{v}: import failed: {type(e).__name__}: {e}", "FAIL")]
    feats = llama_build.compiled_features(info)
    compiled = " ".join(k for k, val in feats.items() if val == "1") or "(none)"
    problems = llama_build.build_problems(feats)
    rows = [Row("llama-cpp-python", v),
            Row("llama.cpp CPU build", compiled, "ok" if not problems else "FAIL")]
    if problems:
        rows.append(Row("llama.cpp build problem", "; ".join(problems)
                        + "; rebuild it portable: make setup (it checks and rebuilds)", "FAIL"))
    missing = llama_build.host_missing_features()
    amx = llama_build.host_has_amx()
    cpu = platform.processor() or platform.machine()
    cpu_name = _cpu_model() or cpu
    rows.append(Row("host CPU", f"{cpu_name}; AMX: {'yes (a native build would crash here)' if amx else 'no'}"
                    + (f"; lacks {', '.join(missing)}: the portable build needs x86-64-v3" if missing else ""),
                    "FAIL" if missing else "ok"))
    return rows


def _cpu_model() -> str | None:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    m = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return m.group(1).strip() if m else None


def _converter_row() -> Row:
    pinned = env.llama_cpp_dir() / "PINNED"
    if not pinned.is_file():
        return Row("llama.cpp converter", f"{env.llama_cpp_dir()}: missing (make setup)", "FAIL")
    return Row("llama.cpp converter", f"{pinned.read_text().split()[0]} in {env.llama_cpp_dir()}")


def _disk_row() -> Row:
    runs = env.project_root() / "runs"
    where = runs if runs.is_dir() else env.project_root()
    free = shutil.disk_usage(where).free / 2**30
    return Row("free disk", f"{free:.1f} GiB at {where}", "ok" if free >= MIN_FREE_GIB else "warn")


def _token_row() -> Row:
    try:
        from huggingface_hub import get_token

        tok = get_token()
    except Exception:  # noqa: BLE001 - an unreadable token store counts as none
        tok = os.environ.get("HF_TOKEN")
    return Row("Hugging Face token", "configured (not shown)" if tok else "none (make push needs one)",
               "ok" if tok else "warn")


def collect() -> list[Row]:
    """Every row of the doctor table, in display order (imports torch and llama_cpp)."""
    env.apply_to_process()
    rows = [Row("Python", f"{platform.python_version()} ({sys.executable})",
                "ok" if sys.version_info[:2] == (3, 12) else "FAIL")]
    rows += _torch_rows()
    for dist, need in (("bitsandbytes", "QLoRA"), ("axolotl", "training"), ("flash-attn", None),
                       ("deepspeed", None)):
        v = _version(dist)
        if v:
            rows.append(Row(dist, v))
        else:
            rows.append(Row(dist, f"not installed{f' ({need} needs it)' if need else ' (GPU extra: optional)'}",
                            "FAIL" if need else "ok"))
    rows += _llama_rows()
    rows.append(_converter_row())
    rows.append(_disk_row())
    rows.append(_token_row())
    child = env.child_env()
    off = child.get("AXOLOTL_DO_NOT_TRACK") == "1" and child.get("HF_HUB_DISABLE_TELEMETRY") == "1"
    rows.append(Row("telemetry", "off (AXOLOTL_DO_NOT_TRACK=1, HF_HUB_DISABLE_TELEMETRY=1)" if off else "ON",
                    "ok" if off else "FAIL"))
    rows.append(Row("offline mode", "on (AXPACK_OFFLINE=1)" if env.offline() else "off (hub downloads allowed)"))
    return rows


@click.command("doctor")
@click.option("--no-fail", is_flag=True, help="Exit 0 even when a row FAILs (make test prints the table first).")
def command(no_fail: bool) -> None:
    """What this machine gives the pipeline: Python, torch/CUDA, Axolotl, llama.cpp build, disk, token."""
    rows = collect()
    width = max(len(r.name) for r in rows)
    click.echo("axpack doctor")
    for r in rows:
        click.echo(f"  {r.name:<{width}}  {r.status:<4}  {r.value}")
    bad = [r for r in rows if r.status == "FAIL"]
    if bad and not no_fail:
        raise AxpackError(f"doctor: {len(bad)} row(s) FAIL ({', '.join(r.name for r in bad)}); "
                          "the table above says why and what to do")
