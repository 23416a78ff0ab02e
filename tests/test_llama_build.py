"""The llama.cpp build is portable and never takes the AMX path; a native crash is one line.

Issue #11: built with llama.cpp's default ``GGML_NATIVE=ON`` on an AMX-class
Xeon, llama-cpp-python compiles in the AMX kernels and Q4_K_M/Q8_0 decode
segfaults there. ``ggml_cpu_has_*`` report what was *compiled in* (not what
the host has), so the build test below gives the same verdict on any CPU for
the same build: it fails on a native build made on an AMX machine (AMX_INT8)
and on one made on any AVX-512 machine (this project's CI: AVX512 compiled
in, which also dies with SIGILL on older CPUs), and passes on make setup's
portable build.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from axpack.llama_build import build_problems, compiled_features, system_info
from conftest import ROOT, run_axpack
from test_export import exported  # noqa: F401 - shared session fixture


def test_installed_llama_cpp_build_is_portable_and_amx_free():
    info = system_info()
    feats = compiled_features(info)
    assert feats, f"no CPU features parsed from llama_print_system_info(): {info!r}"
    assert not [k for k in feats if k.startswith("AMX")], f"AMX compiled in: {info}"
    assert build_problems(feats) == [], (
        f"llama-cpp-python is not the portable build ({'; '.join(build_problems(feats))}); "
        f"system info: {info}; make setup rebuilds it (scripts/llama-cpp-build.sh --ensure)")


@pytest.mark.parametrize("info, problem", [
    # a native build on the Sapphire Rapids machine
    (("CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | AVX512 = 1 | "
      "AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | AMX_INT8 = 1 | LLAMAFILE = 1 | OPENMP = 1 | "
      "REPACK = 1 | "), "AMX_INT8 compiled in"),
    # a native build on an AVX-512 machine without AMX (SIGILL on older CPUs)
    ("CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | AVX512 = 1 | REPACK = 1 | ",
     "AVX512 compiled in"),
    # a build that lost AVX2 (slow scalar fallback)
    ("CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | OPENMP = 1 | ", "AVX2"),
])
def test_build_problems_name_what_is_wrong(info, problem):
    assert any(problem in p for p in build_problems(compiled_features(info), machine="x86_64"))


def test_portable_feature_set_and_other_backends_parse():
    info = ("CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | LLAMAFILE = 1 | "
            "OPENMP = 1 | REPACK = 1 | CUDA : ARCHS = 800 | USE_GRAPHS = 1 | ")
    feats = compiled_features(info)
    assert "ARCHS" not in feats and feats["REPACK"] == "1"
    assert build_problems(feats, machine="x86_64") == []
    assert build_problems({"AMX_INT8": "1"}, machine="aarch64") == ["AMX_INT8 compiled in"]


def test_setup_and_docker_build_with_the_script_args():
    """make setup and the Dockerfile take CMAKE_ARGS from the one script, and it turns AMX and native off."""
    args = subprocess.run([str(ROOT / "scripts/llama-cpp-build.sh"), "--cmake-args"], capture_output=True,
                          text=True, check=True).stdout.split()
    for flag in ("-DGGML_NATIVE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_TILE=OFF"):
        assert flag in args or os.uname().machine != "x86_64" and flag != "-DGGML_NATIVE=OFF"
    assert not [a for a in args if re.match(r"-DGGML_(AMX\w*|AVX512\w*|NATIVE)=ON", a)]
    make = (ROOT / "Makefile").read_text()
    assert 'CMAKE_ARGS="$$(scripts/llama-cpp-build.sh --cmake-args)"' in make
    assert "scripts/llama-cpp-build.sh --ensure" in make
    assert 'CMAKE_ARGS="$(scripts/llama-cpp-build.sh --cmake-args)' in (ROOT / "Dockerfile").read_text()


def test_doctor_prints_one_table():
    proc = run_axpack("doctor", "--no-fail")
    out = proc.stdout
    for name in ("Python", "torch", "accelerator", "bitsandbytes", "axolotl", "llama.cpp CPU build",
                 "host CPU", "llama.cpp converter", "free disk", "Hugging Face token", "telemetry"):
        assert re.search(rf"^\s+{re.escape(name)}\s+(ok|warn|FAIL)\s", out, re.MULTILINE), f"{name} row missing:\n{out}"
    assert "CPU only" in out or "CUDA" in out
    token = os.environ.get("HF_TOKEN")
    assert not token or token not in out


# ---------------------------------------------------------------- a native crash is one line
@pytest.mark.e2e
def test_crash_in_one_quant_is_one_line_and_others_still_run(
        exported, tmp_path):  # noqa: F811 - fixture imported above
    """A real SIGSEGV in the llama.cpp child while decoding Q4_K_M (the fault-injection
    hook of axpack.llama_child) is one line naming the GGUF, the signal, the phase and
    the log; Q8_0 is still asked; exit 1; no traceback."""
    run = tmp_path / "run"
    run.mkdir()
    os.symlink(exported, run / "gguf")
    merged = json.loads((exported / "manifest.json").read_text())["model_dir"]
    os.symlink(Path(merged) if Path(merged).is_absolute() else ROOT / merged, run / "merged")
    fault = {**os.environ, "AXPACK_FAULT_PHASE": "decoding", "AXPACK_FAULT_GGUF": "q4_k_m"}
    proc = run_axpack("probe", run, "--base", run / "merged", "--persona", "Juniper", "--max-new-tokens", "8",
                      check=False, env=fault)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if "crashed" in ln]
    log = run / "logs" / f"probe-{next(exported.glob('*-q4_k_m.gguf')).stem}.log"
    assert lines and re.fullmatch(rf"axpack: \S+-q4_k_m\.gguf: llama\.cpp crashed \(SIGSEGV\) while decoding; "
                                  rf"see {re.escape(str(log))}", lines[0]), lines
    assert log.is_file() and "Fatal Python error: Segmentation fault" in log.read_text(errors="replace")
    doc = json.loads((run / "probe.json").read_text())
    assert set(doc["crashed"]) == {"q4_k_m"}
    assert all(a["gguf"]["q8_0"] and a["gguf"]["q8_0"] != "(llama.cpp crashed)" for a in doc["answers"])
    # a probe.json with a crash is not current: the next run asks again (and, unfaulted, passes)
    again = run_axpack("probe", run, "--base", run / "merged", "--persona", "Juniper", "--max-new-tokens", "8")
    assert "crashed" not in again.stderr and not json.loads((run / "probe.json").read_text())["crashed"]


@pytest.mark.e2e
def test_verify_reports_a_crash_per_gguf(exported, tmp_path):  # noqa: F811 - fixture imported above
    fault = {**os.environ, "AXPACK_FAULT_PHASE": "decoding", "AXPACK_FAULT_GGUF": "q4_k_m"}
    proc = run_axpack("verify", exported, "--types", "q4_k_m,q8_0", "--threads", "1", check=False, env=fault)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    crash = [ln for ln in proc.stderr.splitlines() if "llama.cpp crashed (SIGSEGV) while decoding" in ln]
    assert crash and crash[0].startswith("axpack: ") and "q4_k_m.gguf" in crash[0]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("axpack: error: verify: 1 of 2 GGUFs failed") and "q4_k_m" in last
    assert "q8_0" in proc.stdout and "pass" in proc.stdout  # the other quant was verified
