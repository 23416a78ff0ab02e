"""What the installed llama.cpp (llama-cpp-python) build was compiled for.

Why this exists (issue #11): llama-cpp-python builds llama.cpp from source at
install time, and llama.cpp's default is ``GGML_NATIVE=ON`` (``-march=native``).
Built on an AMX-class Xeon (Sapphire Rapids and later), that compiles in the
AMX kernels and registers the AMX extra buffer type; Q4_K_M and Q8_0 decode
then segfault in ``ggml_backend_amx_mul_mat`` (upstream llama.cpp issue
#20824, closed without a fix). A native build is also not portable: a venv or
image built on one CPU dies with SIGILL on an older one.

``make setup`` therefore builds with the CMake options of
``scripts/llama-cpp-build.sh`` (the one place they are written): no native
tuning, the x86-64-v3 instruction set (AVX2/FMA/F16C/BMI2, every x86-64 CPU
since Intel Haswell 2013 and AMD Zen 2017), no AVX-512 and no AMX. The CPU
repack buffers stay on: they are not AMX (measured safe on the AMX machine of
the issue with an AVX-512, non-AMX build).

``ggml_cpu_has_*`` (behind ``llama_print_system_info``) report what was
*compiled in*, not what the host CPU has, so :func:`build_problems` gives the
same answer on any machine for the same build — the test of the build does
not depend on the CPU it runs on.
"""

from __future__ import annotations

import platform
import re
from pathlib import Path

# x86-64-v3: what llama.cpp's own "haswell" CPU variant enables
# (ggml/src/CMakeLists.txt, GGML_CPU_ALL_VARIANTS: SSE42 AVX F16C FMA AVX2 BMI2).
PORTABLE_X86_FEATURES = frozenset({"SSE3", "SSSE3", "AVX", "AVX2", "F16C", "FMA", "BMI2"})
# Compiled features a portable, AMX-free build must not have: AMX (the crash),
# AVX-512 and AVX-VNNI (SIGILL on CPUs without them).
FORBIDDEN_PREFIXES = ("AMX", "AVX512", "AVX_VNNI")
# /proc/cpuinfo flag names of the portable x86 set (SSE3 is "pni" there).
_CPUINFO_NAMES = {"SSE3": "pni", "SSSE3": "ssse3", "AVX": "avx", "AVX2": "avx2", "F16C": "f16c",
                  "FMA": "fma", "BMI2": "bmi2"}


def system_info() -> str:
    """``llama_print_system_info()`` of the installed llama-cpp-python, decoded.

    Raises:
        ImportError: llama-cpp-python is not installed.
    """
    import llama_cpp

    return llama_cpp.llama_print_system_info().decode("utf-8", "replace")


def compiled_features(info: str) -> dict[str, str]:
    """The ``NAME = VALUE`` pairs of the CPU backend in a system-info string.

    ``"CPU : SSE3 = 1 | AVX2 = 1 | REPACK = 1 | "`` -> ``{"SSE3": "1", "AVX2": "1", "REPACK": "1"}``.
    Only the ``CPU :`` section is read (other backends list their own).
    """
    m = re.search(r"\bCPU : (.*?)(?=\b\w+ : |$)", info, re.DOTALL)
    body = m.group(1) if m else info
    return {k: v for k, v in re.findall(r"([A-Z][A-Z0-9_]*)\s*=\s*([^|\s]+)", body)}


def build_problems(features: dict[str, str], machine: str | None = None) -> list[str]:
    """Why a build is not the portable, AMX-free one (empty list: it is).

    On x86-64, a compiled feature starting with one of
    :data:`FORBIDDEN_PREFIXES` is a problem (AMX: the segfault; AVX-512,
    AVX-VNNI: SIGILL on older CPUs), and so is a missing AVX2/FMA/F16C (a build
    that fell back to slow scalar code). Other architectures: AMX only.
    """
    machine = (machine or platform.machine()).lower()
    problems = [f"{k} compiled in" for k, v in sorted(features.items())
                if v == "1" and k.startswith(FORBIDDEN_PREFIXES)]
    if machine in ("x86_64", "amd64"):
        missing = sorted(PORTABLE_X86_FEATURES - {k for k, v in features.items() if v == "1"})
        if missing:
            problems.append(f"{', '.join(missing)} not compiled in (expected the x86-64-v3 set)")
    return problems


def host_missing_features(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """Features of the portable x86 build this CPU lacks (it would die with SIGILL).

    Empty on non-x86 machines or when ``/proc/cpuinfo`` cannot be read.
    """
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return []
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return []
    m = re.search(r"^flags\s*:(.*)$", text, re.MULTILINE)
    if not m:
        return []
    flags = set(m.group(1).split())
    return sorted(k for k, name in _CPUINFO_NAMES.items() if name not in flags)


def host_has_amx(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when this CPU reports AMX (``amx_int8``/``amx_tile``): where a native build would crash."""
    try:
        return bool(re.search(r"\bamx_(int8|tile)\b", cpuinfo.read_text(errors="replace")))
    except OSError:
        return False
