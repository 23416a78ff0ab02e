#!/usr/bin/env bash
# The llama.cpp build inside llama-cpp-python: portable and never on the AMX path
# (issue #11). llama-cpp-python compiles llama.cpp at install time, and
# llama.cpp's default GGML_NATIVE=ON (-march=native) on an AMX-class Xeon
# compiles in the AMX kernels, whose extra buffer type makes Q4_K_M/Q8_0
# decode segfault (llama.cpp issue #20824); a native build also dies with
# SIGILL on any CPU older than the one it was built on.
#
# The choice: GGML_NATIVE=OFF with the x86-64-v3 set (AVX2, FMA, F16C, BMI2:
# every x86-64 CPU since Intel Haswell 2013 / AMD Zen 2017; llama.cpp's own
# "haswell" CPU variant), no AVX-512, no AVX-VNNI, no AMX. The CPU repack
# buffers stay (not AMX; measured safe on the AMX machine with a non-AMX
# build). Not llama.cpp's runtime dispatch (GGML_BACKEND_DL + all variants):
# llama-cpp-python 0.3.36 never loads backend modules, and the dispatch would
# pick the AMX "sapphirerapids" variant on exactly the machines that crash.
# Other architectures: GGML_NATIVE=OFF (the generic baseline).
#
#   scripts/llama-cpp-build.sh --cmake-args             print the CMake options (CMAKE_ARGS)
#   scripts/llama-cpp-build.sh --ensure PY UV LOCK      rebuild llama-cpp-python (pinned, hash-checked
#                                                       from LOCK) if the installed build is not that one
# uv caches built wheels without CMAKE_ARGS in the key, so a cache holding a
# native build would be reused by `uv pip sync`: --ensure checks what was
# really installed (axpack.llama_build: the compiled CPU features) and
# rebuilds with --no-cache when needed.
set -euo pipefail

cmake_args() {
  case "$(uname -m)" in
    x86_64|amd64)
      echo "-DGGML_NATIVE=OFF -DGGML_CPU_ALL_VARIANTS=OFF -DGGML_BACKEND_DL=OFF" \
           "-DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON" \
           "-DGGML_AVX_VNNI=OFF -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF" \
           "-DGGML_AVX512_BF16=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" ;;
    *) echo "-DGGML_NATIVE=OFF -DGGML_CPU_ALL_VARIANTS=OFF -DGGML_BACKEND_DL=OFF" ;;
  esac
}

check() {  # exit 0 when the installed build is the portable one; prints why not
  "$1" -c 'import sys
from axpack.llama_build import build_problems, compiled_features, system_info
p = build_problems(compiled_features(system_info()))
print("; ".join(p)) if p else None
sys.exit(1 if p else 0)'
}

case "${1:-}" in
  --cmake-args) cmake_args ;;
  --ensure)
    py=$2 uv=$3 lock=$4
    if why=$(check "$py"); then
      echo "llama-cpp-build: llama-cpp-python is the portable build (no AMX, no native tuning)"
      exit 0
    fi
    echo "llama-cpp-build: installed llama-cpp-python is not the portable build ($why); rebuilding (~7 min on 2 cores)"
    req=$(mktemp)
    trap 'rm -f "$req"' EXIT
    sed -n '/^llama-cpp-python==/,/^[^ #]/p' "$lock" | sed '$d' > "$req"
    grep -q -- '--hash=sha256:' "$req" || { echo "llama-cpp-build: no hashed llama-cpp-python pin in $lock" >&2; exit 1; }
    CMAKE_ARGS="$(cmake_args)" "$uv" pip install --python "$py" --no-deps --no-cache \
      --reinstall-package llama-cpp-python --require-hashes -r "$req"
    if ! why=$(check "$py"); then
      echo "llama-cpp-build: the rebuilt llama-cpp-python is still not portable ($why)" >&2
      exit 1
    fi
    echo "llama-cpp-build: llama-cpp-python rebuilt portable (no AMX, no native tuning)" ;;
  *) echo "usage: $0 --cmake-args | --ensure PYTHON UV LOCK" >&2; exit 2 ;;
esac
