# axpack: thin targets over the `axpack` CLI. Read top to bottom for one run:
#   setup -> prep -> sft -> merge -> dpo -> merge -> gguf -> verify -> probe -> report
# `make demo` runs all of it on the embedded SmolLM2-135M and data/demo/.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV    ?= .venv
BIN     := $(VENV)/bin
AXPACK  := $(BIN)/axpack
RUN     ?= demo
CONFIG  ?=
NPROC   ?= 1
RESUME  ?=
QUANTS  ?= q4_k_m,q8_0
# importance matrix for the quants: none (the measured default, README "Importance matrix");
# auto = the run's own data/sft.jsonl when it exists; or a JSONL / imatrix .gguf
IMATRIX ?= none
PREP_ARGS ?= --system strip
MERGED  ?= runs/$(RUN)/merged
MAX_STEPS ?=
LLAMA_CPP := .cache/llama.cpp
DEMO_MODEL := models/smollm2-135m-instruct
DEMO_SFT := configs/smollm2-135m/sft-lora.yaml
DEMO_DPO := configs/smollm2-135m/dpo-lora.yaml

# Axolotl 0.21 needs Python 3.12: the first python3.12 that really is 3.12
# (pyenv's shim answers even when 3.12 is not the active version).
PYTHON312 ?= $(shell for p in python3.12 $$HOME/.pyenv/versions/3.12*/bin/python3.12 /usr/local/bin/python3.12 /usr/bin/python3.12; do \
	$$p -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null && { echo $$p; break; }; done)

.PHONY: help setup lock prep sft dpo merge gguf probe report demo test doctor smoke bench clean-demo

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -ts $$'\t'

## ---- set-up (idempotent: a second run takes seconds) ----------------------
setup: $(VENV)/.synced $(LLAMA_CPP)/PINNED $(DEMO_MODEL)/config.json ## venv + locked deps + pinned llama.cpp + demo model

$(BIN)/python:
	@test -n "$(PYTHON312)" || { echo "setup: Python 3.12 not found; install it (pyenv install 3.12) or pass PYTHON312=/path/to/python3.12" >&2; exit 1; }
	$(PYTHON312) -m venv $(VENV)

$(BIN)/uv: | $(BIN)/python
	$(BIN)/python -m pip install --quiet uv==0.13.9

# uv pip sync installs exactly the lock (hashes checked); --compile-bytecode
# because PYTHONDONTWRITEBYTECODE=1 would otherwise leave every import cold.
# llama-cpp-python compiles llama.cpp here: with CMAKE_ARGS from
# scripts/llama-cpp-build.sh, a portable build that never takes the AMX path
# (issue #11: a native build on an AMX Xeon segfaults decoding Q4_K_M/Q8_0, and
# dies with SIGILL on older CPUs); the script says why this choice. --ensure
# checks the compiled CPU features of what was installed and rebuilds once if
# uv's cache handed back an older native wheel.
$(VENV)/.synced: requirements.lock pyproject.toml scripts/llama-cpp-build.sh | $(BIN)/uv
	CMAKE_ARGS="$$(scripts/llama-cpp-build.sh --cmake-args)" \
	  $(BIN)/uv pip sync --python $(BIN)/python --compile-bytecode requirements.lock
	$(BIN)/uv pip install --python $(BIN)/python --no-deps -e .
	scripts/llama-cpp-build.sh --ensure $(BIN)/python $(BIN)/uv requirements.lock
	touch $@

$(LLAMA_CPP)/PINNED: requirements.lock scripts/fetch-llama-cpp.sh | $(BIN)/python
	mkdir -p .cache
	scripts/fetch-llama-cpp.sh $(BIN)/python $(LLAMA_CPP)

$(DEMO_MODEL)/config.json: | $(VENV)/.synced
	AXPACK_OFFLINE=1 $(AXPACK) demo-model --out $(DEMO_MODEL)

lock: | $(BIN)/uv ## re-resolve requirements.lock from pyproject.toml
	$(BIN)/uv pip compile pyproject.toml --extra test --python $(BIN)/python \
	  --python-platform x86_64-manylinux_2_28 --generate-hashes --no-header -o requirements.lock

## ---- one run, step by step (RUN names runs/<run>/) -------------------------
prep: setup ## raw data/$(RUN)/*.jsonl -> runs/$(RUN)/data/ (PREP_ARGS="--system keep --val-fraction 0.1" ...)
	$(AXPACK) prep data/$(RUN)/*.jsonl --out runs/$(RUN)/data $(PREP_ARGS)

sft: setup ## train an SFT config: make sft CONFIG=configs/<model>/sft-*.yaml [MAX_STEPS=3]
	@test -n "$(CONFIG)" || { echo "make sft: set CONFIG=configs/<model>/sft-<method>.yaml" >&2; exit 2; }
	$(AXPACK) train $(CONFIG) --stage sft --nproc $(NPROC) $(if $(RESUME),--resume) $(if $(MAX_STEPS),--max_steps $(MAX_STEPS))

dpo: setup ## train a DPO config: make dpo CONFIG=configs/<model>/dpo-*.yaml [MAX_STEPS=3]
	@test -n "$(CONFIG)" || { echo "make dpo: set CONFIG=configs/<model>/dpo-<method>.yaml" >&2; exit 2; }
	$(AXPACK) train $(CONFIG) --stage dpo --nproc $(NPROC) $(if $(RESUME),--resume) $(if $(MAX_STEPS),--max_steps $(MAX_STEPS))

merge: setup ## merge CONFIG's adapter into its base (sft -> sft-merged/, dpo -> merged/)
	@test -n "$(CONFIG)" || { echo "make merge: set CONFIG=the config you trained" >&2; exit 2; }
	$(AXPACK) merge $(CONFIG)

gguf: setup ## $(MERGED) -> f16 GGUF once -> $(QUANTS) (SFT-only systems: MERGED=runs/<run>/sft-merged)
	$(AXPACK) gguf $(MERGED) --out runs/$(RUN)/gguf --name $(RUN) --quants $(QUANTS) $(IMATRIX_ARG)

IMATRIX_ARG = $(if $(filter auto,$(IMATRIX)),$(if $(wildcard runs/$(RUN)/data/sft.jsonl),--imatrix runs/$(RUN)/data/sft.jsonl),$(if $(filter-out none,$(IMATRIX)),--imatrix $(IMATRIX)))

probe: setup ## ask base, merged and each GGUF the fixed questions
	$(AXPACK) probe runs/$(RUN)

report: setup ## runs/$(RUN)/report.md and loss.png
	$(AXPACK) report runs/$(RUN)

## ---- the two commands of the README ---------------------------------------
demo: export AXPACK_OFFLINE := 1
demo: setup ## the whole path on SmolLM2-135M + data/demo (CPU, offline)
	$(MAKE) --no-print-directory prep RUN=demo
	$(AXPACK) train $(DEMO_SFT) --stage sft
	$(AXPACK) merge $(DEMO_SFT)
	$(AXPACK) train $(DEMO_DPO) --stage dpo
	$(AXPACK) merge $(DEMO_DPO)
	$(MAKE) --no-print-directory gguf verify probe report RUN=demo
	@$(AXPACK) probe runs/demo   # the table again, last (probe.json is current: no re-asking)

test: export AXPACK_OFFLINE := 1
test: setup ## the test suite (unit + one end-to-end CPU run); prints axpack doctor first
	@$(AXPACK) doctor --no-fail
	$(BIN)/python -m pytest -q --durations=15 $(PYTEST_ARGS)

doctor: setup ## what this machine gives the pipeline (torch/CUDA, Axolotl, llama.cpp build, disk, token)
	$(AXPACK) doctor

clean-demo: ## remove runs/demo (the demo then starts over)
	rm -rf runs/demo

## ---- review tools (plan/diff): benchmark ------------------------------------
.PHONY: bench-review
bench-review: setup ## time axpack plan/diff on every config (offline; budget 5 s per call)
	AXPACK_OFFLINE=1 $(BIN)/python bench/bench_review.py

## ---- data tools (prep/script/stats): benchmark -------------------------------
.PHONY: bench-prep
bench-prep: setup ## prep vs plain orjson load+dump on 200k generated conversations (goal: ratio >= 0.5)
	$(BIN)/python bench/bench_prep.py --n 200000 --repeat 3

## ---- config pack: validate, smoke, fetch (configs/README.md) ---------------
.PHONY: validate fetch sample-data
SMOKE_STEPS ?= 3
ALL_CONFIGS = $(shell find configs -name '*.yaml' | sort)

validate: export AXPACK_OFFLINE := 1
validate: setup ## check CONFIG (default: every configs/**/*.yaml) offline; NO_DATA=1 skips prep/merge outputs
	$(AXPACK) validate $(or $(CONFIG),$(ALL_CONFIGS)) $(if $(NO_DATA),--no-data)

smoke: export AXPACK_OFFLINE := $(if $(GPU),,1)
smoke: setup ## SMOKE_STEPS steps of CONFIG on CPU on its base's shape twin (GPU=1: as shipped) + runtime/memory/params/tokens-s/loss table
	@test -n "$(CONFIG)" || { echo "make smoke: set CONFIG=configs/<model>/<file>.yaml" >&2; exit 2; }
	$(AXPACK) smoke $(CONFIG) --max-steps $(SMOKE_STEPS) $(if $(GPU),,--cpu)

# The "# Data:" header command of every shipped config (tests/test_configs.py
# checks the two agree), so `axpack plan/diff` count real examples and every
# config finds its datasets. Needs only the venv: prep loads no model.
sample-data: $(VENV)/.synced ## prep every system's sample in data/<system>/ -> runs/<system>/data
	$(AXPACK) prep data/demo/*.jsonl --out runs/demo/data --system strip
	$(AXPACK) prep data/ops/*.jsonl --out runs/ops/data --system keep
	$(AXPACK) prep data/persona/*.jsonl --out runs/persona/data --system strip
	$(AXPACK) prep data/plan-c/*.jsonl --out runs/plan-c/data --system keep
	$(AXPACK) prep data/style/*.jsonl --out runs/style/data --system strip --val-fraction 0.1
	$(AXPACK) script data/script/*.txt --out runs/script/data --min-speaker-lines 2 --val-fraction 0.1
	$(AXPACK) prep data/kto/*.jsonl --out runs/kto/data --system default --system-text "You are a helpful AI assistant named SmolLM, trained by Hugging Face" --labels kto

fetch: setup ## pre-download CONFIG's base model into the Hugging Face cache (before the GPU clock runs)
	@test -n "$(CONFIG)" || { echo "make fetch: set CONFIG=configs/<model>/<file>.yaml (several: space-separated)" >&2; exit 2; }
	$(AXPACK) fetch $(CONFIG)

## ---- export that proves itself (issue #6; section appended by the export helper) ----
.PHONY: export verify push bench-export
export: setup ## merge + f16 GGUF + the config's '# axpack: export' quants (QUANTS=... overrides) + Modelfile/llama-server.sh: make export CONFIG=<config>
	$(AXPACK) export $(or $(CONFIG),$(DEMO_DPO)) $(if $(filter command line environment,$(origin QUANTS)),--quants $(QUANTS))

verify: setup ## prove runs/$(RUN)/gguf is the trained model (metadata, logit agreement, stops at EOT, KLD per quant, drift)
	$(AXPACK) verify runs/$(RUN)/gguf

push: setup ## upload runs/$(RUN) to the Hub (private): make push RUN=<run> REPO=org/name
	@test -n "$(REPO)" || { echo "make push: set REPO=org/name" >&2; exit 2; }
	$(AXPACK) push runs/$(RUN)/gguf --repo $(REPO)

bench-export: setup ## merge peak RSS (axpack vs tensor-at-a-time vs PEFT) and quantize overhead, as ratios
	$(BIN)/python bench/bench_export.py

## ---- llama.cpp build (issue #11): decode speed of the installed build -------
.PHONY: bench-llama
bench-llama: setup ## decode tok/s of runs/demo's Q4_K_M with the installed llama.cpp build (run make demo first)
	$(BIN)/python bench/bench_llama_build.py --json runs/demo/bench-llama.json

## ---- scale-out: multi-GPU / multi-node launch files (issue #17; section appended by the scale-out helper) ----
.PHONY: launch
NODES ?= 1
GPUS_PER_NODE ?= $(NPROC)
SCHEDULER ?= torchrun
LAUNCH_ARGS ?=
launch: setup ## launch files for CONFIG on NODES x GPUS_PER_NODE (SCHEDULER=torchrun|accelerate|slurm|ray, DRY_RUN=1, LAUNCH_ARGS="--env NCCL_SOCKET_IFNAME=eth0")
	@test -n "$(CONFIG)" || { echo "make launch: set CONFIG=configs/<model>/<file>.yaml" >&2; exit 2; }
	$(AXPACK) launch $(CONFIG) --nodes $(NODES) --gpus-per-node $(GPUS_PER_NODE) --scheduler $(SCHEDULER) $(if $(DRY_RUN),--dry-run) $(LAUNCH_ARGS)

.PHONY: plan
PLAN_ARGS ?=
plan: setup ## training math of CONFIG on NPROC GPUs: eff. batch, steps, per-GPU memory, time (PLAN_ARGS="--data runs/<run>/data")
	@test -n "$(CONFIG)" || { echo "make plan: set CONFIG=configs/<model>/<file>.yaml" >&2; exit 2; }
	$(AXPACK) plan $(CONFIG) --world-size $(NPROC) $(PLAN_ARGS)

## ---- shape twins (issue #12; section appended by the twins helper) ----------
.PHONY: twins
twins: export AXPACK_OFFLINE := 1
twins: setup ## every config's chain on its base model's shape twin (train, merge, DPO, GGUF, verify, labels, serving) -> runs/twins/summary.json
	$(AXPACK) twin --chain $(CONFIG) --out runs/twins

## ---- quantization you can trust (issue #16): KLD per quant, cost ---------------
.PHONY: bench-quant bench-imatrix
bench-quant: setup ## seconds and peak RSS of quantize, imatrix + quantize and verify (KLD) on the demo model, as ratios
	$(BIN)/python bench/bench_quant.py --threads 1

bench-imatrix: setup ## Q4_K_M / Q3_K_M / IQ4_XS with and without an imatrix from half the demo's conversations: KLD on held-out text and conversations, persona answers (make demo first)
	$(BIN)/python bench/bench_imatrix.py
