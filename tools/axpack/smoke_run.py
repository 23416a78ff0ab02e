"""Engine of ``axpack smoke CONFIG [--max-steps 3] [--cpu]``: run a shipped config
for a few optimizer steps and measure the numbers a user keeps per run.

:func:`plan_smoke` computes the overrides, :func:`run_smoke` trains and
measures, :func:`smoke` does both (the twin chain's entry). The run goes
through :func:`axpack.training.prepare` (resolved YAML, so ``max_steps``
always applies: Axolotl drops a command-line ``--max_steps`` under ``strict:
true`` when the YAML has no ``max_steps`` key) and
:func:`axpack.training.axolotl_command` (the same launcher as ``axpack
train``). Progress goes to a ``log`` callback (default: :mod:`logging`).

Shrink-by-override: everything a config ships (datasets, chat template,
adapter, RL settings, schedule) stays as shipped, except the keys below.
Every override is printed with its reason before the run.

Always (GPU or CPU):

=========================  ==========================  ==============================================
key                        smoke value                 reason
=========================  ==========================  ==============================================
max_steps                  --max-steps (3)             a few optimizer steps, written into the YAML
output_dir                 runs/smoke/<model>/<name>   the real run folder stays untouched
dataset_prepared_path      <output_dir>/prepared       same
eval_steps                 = max_steps                 one eval at the last step runs the eval path
                                                       (only when the config has an eval set)
evals_per_epoch,           removed                     replaced by eval_steps
eval_strategy
eval_on_start              false                       QLoRA on CPU breaks on an eval before the
                                                       last step; no early eval on GPU either
save_steps                 = max_steps                 one checkpoint at the last step runs the save path
saves_per_epoch            removed                     replaced by save_steps
save_total_limit           1                           one checkpoint is all a smoke run needs
logging_steps              1                           a loss per step for the table
hub_model_id, push_to_hub  removed                     a smoke run never uploads
wandb_*, use_wandb         removed                     nor reports to a tracker
=========================  ==========================  ==============================================

``--cpu`` adds the CPU deltas (measured on this project's 2-core CI box):

=========================  ==========================  ==============================================
key                        smoke value                 reason
=========================  ==========================  ==============================================
base_model                 models/twins/<slug>         the shape twin of the config's base model
                                                       (axpack twin: same architecture, checkpoint
                                                       layout, tokenizer and chat template, tiny and
                                                       random); SmolLM2 for a base without a twin card
tokenizer_config, ...      removed                     they belong to the shipped base model
micro_batch_size           1 (2 under rl: kto)         CPU: one sequence per forward (KTO needs 2)
eval_batch_size            1                           same (only when set)
gradient_accumulation      1                           each smoke step is one forward/backward
sequence_len               256 (--sequence-len)        CPU: short rows
bf16 / fp16 / tf32         false                       no CPU autocast in Axolotl's trainer
attn_implementation        sdpa                        flash-attention is CUDA-only
gradient_checkpointing     false                       nothing to save at 256 tokens
dataloader_num_workers     0                           a prefetching worker competes for the 2 cores
                                                       (measured: first step 86 s -> 20 s)
dataset_num_proc           1                           forking 2 tokenizer processes for a few dozen rows
                                                       costs more than it saves
lora_*_kernel              false                       Axolotl's fused LoRA kernels are Triton/CUDA
plugins (Liger, CCE)       removed, liger_* removed    Triton/CUDA kernels
deepspeed, fsdp*           removed                     multi-GPU runtimes need CUDA + the [gpu] extra
chat_template              tokenizer_default           only when the shipped template renders special
                                                       tokens SmolLM2 lacks (Llama-3's <|eot_id|>...):
                                                       they would be split into plain-text pieces and
                                                       the turn end never trained
eot_tokens                 removed                     only when they name tokens SmolLM2 lacks
lora_target_modules        the names SmolLM2 has       e.g. Qwen3.5's linear_attn.* (PEFT would skip
                                                       them silently); the last three rows only apply
                                                       on the SmolLM2 fallback: a twin has the real
                                                       tokens, template and module names
(environment) fla          hidden                      not a key: the run's PYTHONPATH starts with
                                                       axpack/cpu_site, whose sitecustomize hides
                                                       flash-linear-attention (its Triton kernels fail
                                                       without a GPU; transformers falls back to its
                                                       PyTorch Gated DeltaNet). Never on GPU runs
=========================  ==========================  ==============================================

Kept on CPU because they run there (measured): ``adapter: qlora`` +
``load_in_4bit`` (bitsandbytes 0.50.2 CPU backend), ``adamw_bnb_8bit``,
``paged_adamw_8bit`` (bitsandbytes falls back to non-paged on CPU),
``sample_packing``, ``chat_template_kwargs``, every ``rl`` setting.

After the run, the table users of the style-transfer system keep by hand:
runtime (Axolotl's ``train_runtime`` and the launch's wall time), peak memory
(max RSS of the training process; GPU peak from Axolotl's
``memory/max_allocated`` log when on GPU), trainable params (PEFT's
``trainable params:`` line; for DPO, the saved adapter's tensor sizes),
tokens/s (loss-bearing tokens, Axolotl's ``tokens/trainable``, or TRL's
``num_tokens`` for DPO, over ``train_runtime``), final loss (the last
``loss`` in the checkpoint's ``trainer_state.json``; eval loss when there is
one). It is also written to ``<output_dir>/smoke.json``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import env
from .config import dataset_entries, has_eval_set, load_config, resolve, template_text
from .cpu import cpu_child_env
from .errors import AxpackError
from .fsutil import atomic_write_json
from .run_metrics import parse_metrics
from .runs import DONE_FILE, fingerprint
from .training import axolotl_command, prepare

LOG = logging.getLogger(__name__)
DELETE = None  # an override value of None deletes the key (config.set_dotted)
SMOKE_ROOT = Path("runs") / "smoke"
CPU_SEQUENCE_LEN = 256
TRITON_PLUGINS = ("liger", "cut_cross_entropy")
MODEL_KEYS = ("base_model_config", "tokenizer_config", "tokenizer_type", "model_type",
              "processor_type", "trust_remote_code", "revision_of_model", "tokenizer_use_fast")
MULTI_GPU_KEYS = ("deepspeed", "fsdp", "fsdp_config", "fsdp_version")
SPECIAL_RE = re.compile(r"<\|[^|<>\s]+\|>")


@dataclass(frozen=True)
class Override:
    """One key smoke changes: ``value`` None means the key is removed."""

    key: str
    value: Any
    reason: str

    def shown(self) -> str:
        """The value as printed in the override listing: ``(removed)``, the string, or JSON."""
        return "(removed)" if self.value is None else json.dumps(self.value) if not isinstance(self.value, str) \
            else self.value


# --------------------------------------------------------------------------- SmolLM2 facts


def _module_names(model_dir: Path) -> set[str]:
    """Module names of an HF folder, from its safetensors headers (no torch):
    ``model.layers.0.self_attn.q_proj.weight`` -> ``model.layers.0.self_attn.q_proj``."""
    names: set[str] = set()
    for st in sorted(model_dir.glob("*.safetensors")):
        with st.open("rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
        for tensor in header:
            if tensor != "__metadata__":
                names.add(tensor.rsplit(".", 1)[0])
    return names


def _matches(target: str, names: set[str]) -> bool:
    """PEFT's rule for a list of target names: exact, or a ``.``-suffix."""
    return any(n == target or n.endswith("." + target) for n in names)


@dataclass(frozen=True)
class TokenizerFacts:
    """What smoke needs of the CPU model's tokenizer, read from its JSON files
    (no transformers import: ~5-10 s saved per smoke run on the CI box)."""

    vocab: frozenset[str]
    bos_token: str
    eos_token: str

    def get_vocab(self) -> frozenset[str]:
        """The vocabulary, as a transformers tokenizer's ``get_vocab()`` keys."""
        return self.vocab


def _token_text(value: Any) -> str:
    return value.get("content", "") if isinstance(value, dict) else str(value or "")


def tokenizer_facts(model_dir: Path) -> TokenizerFacts:
    """Vocabulary (model vocab + added tokens) and BOS/EOS of an HF folder."""
    tok = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = set((tok.get("model") or {}).get("vocab") or {})
    vocab |= {t["content"] for t in tok.get("added_tokens") or []}
    conf_path = model_dir / "tokenizer_config.json"
    conf = json.loads(conf_path.read_text(encoding="utf-8")) if conf_path.is_file() else {}
    return TokenizerFacts(frozenset(vocab), _token_text(conf.get("bos_token")), _token_text(conf.get("eos_token")))


def render_template(text: str, messages: list[dict[str, str]], facts: TokenizerFacts, **kwargs: Any) -> str:
    """Render a chat template the way transformers does (sandboxed Jinja,
    trim_blocks/lstrip_blocks, loop controls, ``raise_exception``)."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    jenv = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    jenv.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False, **kw)
    jenv.globals["raise_exception"] = raise_exception
    jenv.globals["strftime_now"] = lambda fmt: time.strftime(fmt)
    return jenv.from_string(text).render(messages=messages, bos_token=facts.bos_token, eos_token=facts.eos_token,
                                         add_generation_prompt=False, tools=None, **kwargs)


def missing_template_tokens(cfg: dict[str, Any], tokenizer: TokenizerFacts) -> list[str]:
    """Special tokens (``<|...|>``) the config's chat template renders on a
    two-turn conversation that ``tokenizer``'s vocabulary lacks. Empty for
    ``tokenizer_default`` (it is the tokenizer's own template)."""
    text = template_text(cfg)  # None for tokenizer_default*: the tokenizer's own template
    if text is None:
        return []
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye."}]
    try:
        rendered = render_template(text, msgs, tokenizer, **(cfg.get("chat_template_kwargs") or {}))
    except Exception:  # noqa: BLE001 - a template that cannot render here: scan its text instead
        rendered = text
    vocab = tokenizer.get_vocab()
    return sorted({t for t in SPECIAL_RE.findall(str(rendered)) if t not in vocab})


# --------------------------------------------------------------------------- overrides


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def default_out(config: str | Path) -> Path:
    """``runs/smoke/<model folder>/<config stem>``."""
    config = Path(config)
    return SMOKE_ROOT / config.parent.name / config.stem


def cpu_model(cfg: dict[str, Any], config: str | Path | None = None, build: bool = True,
              log: Callable[[str], None] | None = None) -> tuple[Path, str]:
    """The CPU model for a config and the reason shown for it.

    The shape twin of the config's base model (:mod:`axpack.shape_twin`; built on
    first use, seconds, progress to ``log``, default logging) when its card has a
    ``twin:`` section, else the embedded SmolLM2 (the SmolLM2 configs' own base).
    ``build=False`` returns the twin's folder without building it.
    """
    from .shape_twin import ensure_twin, slug, twin_shape_for_config, twins_root

    shape = twin_shape_for_config(cfg, config)
    if shape is None:
        return env.demo_model_dir(), "the embedded SmolLM2-135M-Instruct runs offline on CPU"
    path = ensure_twin(shape, log=log or LOG.info) if build \
        else twins_root() / slug(shape.id)
    return path, (f"the shape twin of {shape.id} ({shape.architecture}: same layout, tokenizer and template, "
                  "tiny random weights; axpack twin)")


# model types Axolotl 0.21 loads as multimodal (transformers' image-text-to-text mapping,
# axolotl/loaders/constants.py) whose AutoProcessor needs torchvision (Qwen3VLVideoProcessor)
TORCHVISION_MODEL_TYPES = ("qwen3_5", "qwen3_5_moe", "qwen3_vl", "qwen3_vl_moe", "qwen2_5_vl", "qwen2_vl")


def check_processor_deps(model_dir: Path) -> None:
    """Refuse, in one line, a model Axolotl will load with a processor that cannot load here.

    Axolotl 0.21 sets ``is_multimodal`` for every model type in transformers'
    image-text-to-text mapping (Qwen3.5 included, even for text-only data) and
    then loads ``AutoProcessor``, whose Qwen3-VL video processor needs
    torchvision (locked since round 2; a venv installed without it would die after data
    preparation, so this stays a one-line refusal).

    Raises:
        AxpackError: torchvision is missing for such a model.
    """
    from importlib.util import find_spec

    try:
        mt = json.loads((model_dir / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        return
    if mt in TORCHVISION_MODEL_TYPES and find_spec("torchvision") is None:
        raise AxpackError(f"{_rel(model_dir)}: model_type {mt}: Axolotl 0.21 loads it as multimodal and its "
                          "AutoProcessor (Qwen3VLVideoProcessor) needs torchvision, which is not installed; "
                          "install torchvision matching torch (torch 2.14.1 -> torchvision==0.29.1)")


class _Overrides:
    """The overrides collected against ``cfg``: deleting an absent key, or
    setting a key to the value it has, is no override."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.items: list[Override] = []

    def put(self, key: str, value: Any, reason: str) -> None:
        """Record ``key`` (dotted, list indexes as digits) -> ``value`` (None deletes) with its reason."""
        node: Any = self.cfg
        for p in key.split("."):
            if isinstance(node, list) and p.isdigit() and int(p) < len(node):
                node = node[int(p)]
            elif isinstance(node, dict) and p in node:
                node = node[p]
            else:
                node = KeyError
                break
        if value is None and node is KeyError:
            return  # deleting an absent key
        if node is not KeyError and node == value:
            return  # already so
        self.items.append(Override(key, value, reason))


def smoke_overrides(cfg: dict[str, Any], out: Path, max_steps: int, cpu: bool,
                    sequence_len: int = CPU_SEQUENCE_LEN, data_dir: Path | None = None,
                    model_dir: Path | None = None, model_reason: str | None = None) -> list[Override]:
    """The overrides (with reasons) that turn a shipped config into a smoke run.

    Args:
        cfg: the loaded shipped config.
        out: the smoke run's output_dir.
        max_steps: optimizer steps (eval and save happen at the last one).
        cpu: add the CPU deltas and swap in the CPU model.
        sequence_len: the CPU sequence_len (tokens).
        data_dir: rewrite every local dataset path to this folder (same file name),
            e.g. a tmp folder prepped from data/<system>/.
        model_dir: the CPU model (default: :func:`axpack.env.demo_model_dir`; smoke
            passes :func:`cpu_model`, the config's shape twin).
        model_reason: the reason printed for ``base_model``.

    Returns:
        Overrides in the module docstring's table order; only keys whose value
        actually changes.
    """
    ov = _Overrides(cfg)
    ov.put("output_dir", str(out), "the real run folder stays untouched")
    ov.put("dataset_prepared_path", str(out / "prepared"), "same: tokenized data cached beside the smoke run")
    if data_dir is not None:
        for dkey, i, ds in dataset_entries(cfg):
            if ds.get("path") and Path(str(ds["path"])).suffix:
                ov.put(f"{dkey}.{i}.path", str(Path(data_dir) / Path(str(ds["path"])).name),
                       f"--data-dir: the same file from {data_dir}")
    if cpu:
        model_dir = model_dir or env.demo_model_dir()
        _cpu_runtime_overrides(ov, sequence_len, model_dir, model_reason)
        _cpu_model_fit_overrides(ov, model_dir)
    _schedule_overrides(ov, max_steps)
    return ov.items


def _cpu_runtime_overrides(ov: _Overrides, sequence_len: int, model_dir: Path, model_reason: str | None) -> None:
    """The CPU deltas of the module docstring: model swap, batch, precision,
    attention, workers, CUDA-only kernels and runtimes."""
    cfg, put = ov.cfg, ov.put
    put("base_model", _rel(model_dir), model_reason or "the embedded SmolLM2-135M-Instruct runs offline on CPU")
    for key in MODEL_KEYS:
        put(key, DELETE, "belongs to the shipped base model")
    if cfg.get("rl") == "kto":  # TRL's KTO refuses a batch of 1 (its KL term needs 2+ answers)
        put("micro_batch_size", 2, "CPU: the least KTO accepts (KL from mismatched answers)")
    else:
        put("micro_batch_size", 1, "CPU: one sequence per forward")
    if cfg.get("eval_batch_size"):
        put("eval_batch_size", 1, "CPU: one sequence per forward")
    put("gradient_accumulation_steps", 1, "each smoke step is one forward/backward")
    put("sequence_len", sequence_len, "CPU: short rows")
    for key in ("bf16", "fp16", "tf32"):
        put(key, False, "no mixed precision on CPU")
    put("attn_implementation", "sdpa", "flash-attention is CUDA-only")
    for key in ("flash_attention", "sdp_attention", "xformers_attention", "flex_attention"):
        put(key, DELETE, "attn_implementation: sdpa replaces it")
    put("gradient_checkpointing", False, "nothing worth recomputing at this size")
    put("dataloader_num_workers", 0, "a worker process prefetching 256 batches competes with training "
        "for the cores (measured: first step 86 s -> 20 s)")
    put("dataset_num_proc", 1, "tokenizing a few dozen rows in 2 forked processes costs more than it saves")
    put("gradient_checkpointing_kwargs", DELETE, "gradient checkpointing is off")
    if cfg.get("adapter") in ("lora", "qlora"):
        for key in ("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel"):
            put(key, False, "Axolotl's fused LoRA kernels are Triton/CUDA")
    plugins = [str(p) for p in cfg.get("plugins") or []]
    kept = [p for p in plugins if not any(t in p.lower() for t in TRITON_PLUGINS)]
    if kept != plugins:
        put("plugins", kept or DELETE, "Liger / Cut Cross Entropy kernels are Triton/CUDA")
        for key in cfg:
            if key.startswith("liger_") or key == "cut_cross_entropy":
                put(key, DELETE, "its plugin is removed on CPU")
    for key in MULTI_GPU_KEYS:
        put(key, DELETE, "multi-GPU runtimes need CUDA and the [gpu] extra")


def _cpu_model_fit_overrides(ov: _Overrides, model_dir: Path) -> None:
    """Template, end-of-turn tokens and LoRA targets the CPU model lacks (only
    the SmolLM2 fallback: a twin has the real tokens, template and module names)."""
    cfg, put = ov.cfg, ov.put
    tok = tokenizer_facts(model_dir)
    missing = missing_template_tokens(cfg, tok)
    if missing:
        put("chat_template", "tokenizer_default",
            f"{cfg.get('chat_template')} renders {', '.join(missing[:4])}, which SmolLM2 lacks "
            "(split into plain text, turn end never trained)")
        put("chat_template_jinja", DELETE, "replaced by SmolLM2's own template")
        put("chat_template_kwargs", DELETE, "they were for the replaced template")
    eot = cfg.get("eot_tokens")
    if eot:
        vocab = tok.get_vocab()
        if any(t not in vocab for t in eot):
            put("eot_tokens", DELETE, "names tokens SmolLM2 lacks")
    targets = cfg.get("lora_target_modules")
    if isinstance(targets, list) and targets:
        names = _module_names(model_dir)
        have = [t for t in targets if _matches(str(t), names)]
        if have != targets:
            gone = [t for t in targets if t not in have]
            if have:
                put("lora_target_modules", have, f"SmolLM2 has no {', '.join(gone)} "
                    "(PEFT would skip them silently)")
            else:
                put("lora_target_modules", DELETE, "SmolLM2 has none of the named modules")
                put("lora_target_linear", True, "so every linear layer is targeted instead")


def _schedule_overrides(ov: _Overrides, max_steps: int) -> None:
    """Eval and save once, at the last step; a loss per step; no upload, no tracker."""
    cfg, put = ov.cfg, ov.put
    has_eval = has_eval_set(cfg)
    if has_eval:
        put("eval_steps", max_steps, "one eval at the last step runs the eval path")
        put("evals_per_epoch", DELETE, "replaced by eval_steps")
        put("eval_strategy", DELETE, "replaced by eval_steps")
    put("eval_on_start", DELETE if not has_eval else False,
        "QLoRA on CPU breaks on an eval before the last step" if has_eval else "no eval set")
    put("save_steps", max_steps, "one checkpoint at the last step runs the save path")
    put("saves_per_epoch", DELETE, "replaced by save_steps")
    put("save_total_limit", 1, "one checkpoint is all a smoke run needs")
    put("logging_steps", 1, "a loss per step for the table")
    for key in ("hub_model_id", "push_to_hub", "hub_strategy"):
        put(key, DELETE, "a smoke run never uploads")
    for key in list(cfg):
        if key.startswith("wandb_") or key == "use_wandb":
            put(key, DELETE, "a smoke run reports to no tracker")


# --------------------------------------------------------------------------- the run


def _run_streaming(cmd: list[str], log: Path, echo: bool, extra_env: dict[str, str] | None = None
                   ) -> tuple[int, float, int]:
    """Run ``cmd``; tee its output to ``log`` (and stderr when ``echo``).

    Returns (exit code, wall seconds, peak RSS in KiB of the process and the
    children it waited for, from ``wait4``).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, env=env.child_env(extra_env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        for chunk in iter(lambda: proc.stdout.read1(65536), b""):
            fh.write(chunk)
            if echo:
                sys.stderr.buffer.write(chunk)
                sys.stderr.flush()
        _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code  # already reaped by wait4
    return code, time.monotonic() - start, int(usage.ru_maxrss)


@dataclass
class SmokeSetup:
    """A planned smoke run: the shipped config, its overrides and where it runs."""

    config: str | Path
    cfg: dict[str, Any]
    out: Path
    max_steps: int
    cpu: bool
    model_dir: Path | None
    overrides: list[Override]

    @property
    def values(self) -> dict[str, Any]:
        """``{key: value}`` of the overrides, in order (a later one wins)."""
        return {o.key: o.value for o in self.overrides}


def plan_smoke(config: str | Path, max_steps: int = 3, cpu: bool = False, sets: dict[str, Any] | None = None,
               out: str | Path | None = None, data_dir: str | Path | None = None,
               sequence_len: int = CPU_SEQUENCE_LEN, base_dir: str | Path | None = None,
               log: Callable[[str], None] | None = None) -> SmokeSetup:
    """Load ``config``, pick the CPU model and compute the overrides (see :func:`smoke` for the args).

    Raises:
        AxpackError: ``max_steps`` < 1; the CPU model has no config.json or needs
            torchvision (:func:`check_processor_deps`).
    """
    if max_steps < 1:
        raise AxpackError(f"--max-steps {max_steps}: expected at least 1")
    cfg = load_config(config)
    out = Path(out) if out else default_out(config)
    model_dir, reason = None, None
    if cpu:
        if base_dir is not None:
            model_dir, reason = Path(base_dir), f"--base-dir {base_dir}"
        else:
            model_dir, reason = cpu_model(cfg, config, log=log)
        if not (model_dir / "config.json").is_file():
            raise AxpackError(f"{_rel(model_dir)}: no config.json; run make setup (axpack demo-model) first"
                              if model_dir == env.demo_model_dir() else f"{_rel(model_dir)}: no config.json")
        check_processor_deps(model_dir)
    ovs = smoke_overrides(cfg, out, max_steps, cpu, sequence_len, Path(data_dir) if data_dir else None,
                          model_dir, reason)
    ovs += [Override(key, value, "--set") for key, value in (sets or {}).items()]
    return SmokeSetup(config, cfg, out, max_steps, cpu, model_dir, ovs)


def describe(setup: SmokeSetup) -> list[str]:
    """The lines printed before a smoke run: what runs where, and every override with its reason."""
    where = f"CPU, {_rel(setup.model_dir)}" if setup.cpu and setup.model_dir else "as shipped"
    lines = [f"axpack smoke: {setup.config} ({where}, {setup.max_steps} steps); {len(setup.overrides)} overrides:"]
    width = max((len(o.key) for o in setup.overrides), default=10)
    lines += [f"  {o.key:<{width}}  {o.shown():<30}  {o.reason}" for o in setup.overrides]
    return lines


def run_smoke(setup: SmokeSetup, nproc: int = 1, echo: bool = True,
              log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train ``setup`` with Axolotl and measure it (see :func:`smoke`).

    Removes ``<out>/axpack-done.json`` first and writes it (as ``axpack train``
    does, marked ``"smoke": true``) after a successful run, so ``axpack merge``
    accepts the smoke adapter.

    Raises:
        AxpackError: the data is missing (:func:`axpack.training.prepare`), or
            Axolotl failed (with the tail of its log and the log's path).
    """
    config, out, overrides = setup.config, setup.out, setup.values
    _, resolved = prepare(config, overrides, max_steps=setup.max_steps)
    cmd = axolotl_command(resolved, nproc)
    (log or LOG.info)("axpack: " + " ".join(cmd))
    log_file = out / "smoke.log"
    (out / DONE_FILE).unlink(missing_ok=True)
    code, wall, rss_kib = _run_streaming(cmd, log_file, echo, cpu_child_env() if setup.cpu else None)
    text = log_file.read_text(encoding="utf-8", errors="replace")
    if code != 0:
        tail = [ln for ln in text.replace("\r", "\n").splitlines() if ln.strip()][-1:] or [""]
        raise AxpackError(f"{config}: smoke run failed (Axolotl exit {code}: {tail[0][-300:]}); "
                          f"full log: {log_file}, resolved config: {resolved}")
    row = {"config": str(config), "base_model": str(overrides.get("base_model", setup.cfg.get("base_model"))),
           "cpu": setup.cpu, "max_steps": setup.max_steps, "wall_s": round(wall, 1),
           "peak_rss_gib": round(rss_kib / 2**20, 3), **parse_metrics(out, text),
           "overrides": [{"key": o.key, "value": o.value, "reason": o.reason} for o in setup.overrides],
           "resolved": str(resolved)}
    atomic_write_json(out / "smoke.json", row)
    # a finished run, as axpack train marks one: axpack merge accepts the smoke adapter
    atomic_write_json(out / DONE_FILE, {"fingerprint": fingerprint(resolve(config, overrides)),
                                        "config": str(config), "smoke": True})
    return row


def smoke(config: str | Path, max_steps: int = 3, cpu: bool = False, sets: dict[str, Any] | None = None,
          out: str | Path | None = None, data_dir: str | Path | None = None,
          sequence_len: int = CPU_SEQUENCE_LEN, nproc: int = 1, echo: bool = True,
          base_dir: str | Path | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run ``config`` for ``max_steps`` steps (on its shape twin with ``cpu``) and measure it.

    :func:`plan_smoke`, the :func:`describe` lines to ``log``, then :func:`run_smoke`.

    Args:
        config: a shipped config.
        max_steps: optimizer steps (>= 1).
        cpu: run on the config's shape twin (SmolLM2 when its base has no twin card)
            with the CPU deltas (module docstring); ``fla`` is hidden from the run.
        sets: extra ``--set`` overrides, applied last (they win).
        out: output_dir of the smoke run (default ``runs/smoke/<model>/<stem>``).
        data_dir: read the config's dataset files from this folder instead.
        sequence_len: the CPU ``sequence_len`` (tokens).
        nproc: processes (``accelerate launch``), as ``axpack train --nproc``.
        echo: stream Axolotl's output to stderr (it is always kept in ``smoke.log``).
        base_dir: with ``cpu``, train on this folder instead of the twin (a DPO
            config on the merged SFT twin, as Plan C does).
        log: progress lines (default: this module's logging logger).

    Returns:
        The row of :func:`axpack.run_metrics.table` plus ``overrides`` and ``resolved`` (path),
        also written to ``<out>/smoke.json``.

    Raises:
        AxpackError: bad ``max_steps``, the data or model is missing, or
            Axolotl failed (with the tail of its log and the log's path).
    """
    log = log or LOG.info
    setup = plan_smoke(config, max_steps, cpu, sets, out, data_dir, sequence_len, base_dir, log)
    for line in describe(setup):
        log(line)
    return run_smoke(setup, nproc, echo, log)
