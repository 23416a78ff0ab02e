#!/usr/bin/env bash
# Build llama.cpp's llama-imatrix and llama-quantize from the pinned sources
# (issue #16: an importance matrix needs llama-imatrix, and quantizing with one
# needs llama-quantize --imatrix: llama_model_quantize_params.imatrix is a
# pointer to a C++ std::unordered_map, which ctypes cannot build).
#
# Same sources as everything else: the llama-cpp-python sdist pinned (with its
# sha256) in requirements.lock; same portable CMake options as the bundled
# library (scripts/llama-cpp-build.sh --cmake-args: no -march=native, no AMX).
# Static build (BUILD_SHARED_LIBS=OFF): the tools never load another libllama.
#
# Opt-in (make llama-tools), not part of make setup: measured on this 2-core box
# under a load of 10-12 (six agents), at nice 10: 68 of the 136 build steps in 56 min, not finished;
# the whole llama-cpp-python build takes ~7 min on 2 idle cores.
#
# Usage: scripts/build-llama-tools.sh PYTHON DEST      (DEST: .cache/llama-tools)
set -euo pipefail
py=$1
dest=$2
here=$(cd "$(dirname "$0")" && pwd)
lock=$here/../requirements.lock
version=$(sed -n 's/^llama-cpp-python==\([0-9.]*\).*/\1/p' "$lock")
[ -n "$version" ] || { echo "build-llama-tools: llama-cpp-python is not pinned in $lock" >&2; exit 1; }
cmake_args=$("$here/llama-cpp-build.sh" --cmake-args)
stamp="llama-cpp-python==$version cmake:$cmake_args"
if [ -x "$dest/bin/llama-imatrix" ] && [ -x "$dest/bin/llama-quantize" ] && [ "$(cat "$dest/PINNED" 2>/dev/null)" = "$stamp" ]; then
  echo "build-llama-tools: $dest already holds llama-imatrix and llama-quantize of llama-cpp-python==$version"
  exit 0
fi
for tool in cmake c++; do
  command -v "$tool" >/dev/null || { echo "build-llama-tools: $tool not found; install cmake and a C++ compiler" >&2; exit 1; }
done
mkdir -p "$(dirname "$dest")"
work=$(mktemp -d "$(dirname "$dest")/.llama-tools.XXXXXX")
trap 'rm -rf "$work"' EXIT
"$py" -m pip download --quiet --no-binary :all: --no-deps --dest "$work" "llama-cpp-python==$version"
sdist=$(ls "$work"/llama_cpp_python-*.tar.gz)
got=$(sha256sum "$sdist" | cut -d' ' -f1)
if ! grep -A40 "^llama-cpp-python==$version" "$lock" | grep -q "sha256:$got"; then
  echo "build-llama-tools: $sdist sha256 $got is not in $lock; refusing unpinned sources" >&2
  exit 1
fi
tar -xzf "$sdist" -C "$work" "llama_cpp_python-$version/vendor/llama.cpp"
src=$work/llama_cpp_python-$version/vendor/llama.cpp
gen=(); command -v ninja >/dev/null && gen=(-G Ninja)
start=$(date +%s)
# shellcheck disable=SC2086 # cmake_args is a list of options
cmake -S "$src" -B "$work/build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF $cmake_args
cmake --build "$work/build" -j "$(nproc)" --target llama-imatrix llama-quantize
mkdir -p "$work/out/bin"
cp "$work/build/bin/llama-imatrix" "$work/build/bin/llama-quantize" "$work/out/bin/"
printf '%s\n' "$stamp" > "$work/out/PINNED"
rm -rf "$dest"
mv "$work/out" "$dest"
echo "build-llama-tools: llama-imatrix, llama-quantize -> $dest/bin ($(( $(date +%s) - start )) s)"
