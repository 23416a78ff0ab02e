"""Engine of ``axpack validate``: Axolotl's own schema plus the checks it lacks
(the command is :mod:`axpack.validate`).

Axolotl validates a config with pydantic (``axolotl.utils.config.validate_config``
on ``AxolotlInputConfig`` + plugin args), but two holes let bad configs pass
silently: the schema *ignores* unknown keys (``lora_alpah: 64`` just vanishes,
even with ``strict: true``), and the GPU-capability checks only run on a GPU
box. This module runs, for each config:

1. **Unknown keys** at every level the schema describes (top level, plugin
   args, ``datasets[*]`` by the config's ``rl``, nested models such as
   ``trl``), each with a ``difflib`` "did you mean".
2. **Axolotl's schema**, offline and GPU-free, with fixed capabilities
   (:data:`TARGET_CAPABILITIES`, an sm_80/bf16 card: the configs' target),
   exactly as ``axolotl.cli.config.load_cfg`` calls it on a GPU.
3. **File name vs content**: ``sft-*`` has no ``rl``; ``dpo-*`` has
   ``rl: dpo``; ``*qlora*`` has ``adapter: qlora`` + ``load_in_4bit: true``;
   ``*-lora*`` has ``adapter: lora`` and no 4-bit; ``configs/<model>/`` names
   the hub ``base_model``.
4. **Known pitfalls** (:data:`PITFALLS`: rules with an id and a source each,
   in :class:`axpack.rules.Rule`'s shape like plan's): an eval cadence with no
   eval set, ``warmup_steps`` with ``warmup_ratio``, ``max_prompt_len`` under
   DPO (no effect with TRL 1.x), YAML-1.1 number strings (``2e-4``), absolute
   paths, ``runs/<run>/`` folders that disagree, ``lora_alpha`` left to PEFT's
   default, no LoRA targets, ``chat_template_kwargs`` the template never
   reads, best-model saving whose ``save_steps`` is not a multiple of
   ``eval_steps``.
5. **Referenced files exist**: dataset files (and that their first record
   has the fields the config names), a ``runs/`` base model (made by
   ``axpack merge``), a local ``models/`` base model, the DeepSpeed JSON.
   ``--no-data`` skips the inputs that earlier pipeline steps make (prep's
   dataset files, merge's ``runs/<run>/sft-merged``), so configs can be
   reviewed before any data exists.

Every problem is one line, ``file:line: key: what; what to do``; any problem
makes the command exit 1.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import json
import os
import re
import sys
import tempfile
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import env
from .config import (
    DATASET_KEYS,
    dataset_entries,
    duplicate_keys,
    has_eval_set,
    key_lines,
    line_of,
    load_config,
    template_text,
)
from .errors import AxpackError
from .rules import Rule, fire

# The GPU the configs target, so the capability validators (bf16, tf32, fp8,
# compute capability) run as they would there: an Ampere (sm_80) card, one
# process. torch_version is filled from the installed torch.
TARGET_CAPABILITIES: dict[str, Any] = {
    "bf16": True,
    "fp8": False,
    "tf32": True,
    "n_gpu": 1,
    "n_node": 1,
    "compute_capability": "sm_80",
}

DATA_SUFFIXES = {".json", ".jsonl", ".parquet", ".csv", ".txt", ".arrow"}
# RL types whose datasets Axolotl parses as DPODataset (validate_config).
DPO_LIKE = {"dpo", "ipo", "simpo"}
# Keys that start an eval cadence: with no eval set they do nothing or fail.
EVAL_KEYS = ("eval_steps", "evals_per_epoch", "eval_strategy", "eval_on_start",
             "load_best_model_at_end", "early_stopping_patience")
# Keys whose values are floats; YAML 1.1 reads ``2e-4`` (no dot) as a string.
FLOAT_KEYS = ("learning_rate", "weight_decay", "warmup_ratio", "lora_dropout", "rl_beta",
              "val_set_size", "max_grad_norm", "cosine_min_lr_ratio", "neftune_noise_alpha",
              "adam_beta1", "adam_beta2", "adam_epsilon", "loraplus_lr_ratio")
PATH_KEYS = ("base_model", "base_model_config", "tokenizer_config", "output_dir",
             "dataset_prepared_path", "deepspeed", "lora_model_dir", "resume_from_checkpoint")
RUN_RE = re.compile(r"^(?:\./)?runs/([^/]+)/")


@dataclass(frozen=True)
class Problem:
    """One finding: printed as ``file:line: key: what; todo``."""

    file: str
    line: int
    key: str
    what: str
    todo: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.key}: {self.what}; {self.todo}"


class _Report:
    """Collects problems for one file, placing each key on its line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines = key_lines(path)
        self.problems: list[Problem] = []

    def add(self, key: str, what: str, todo: str, near: str | None = None) -> None:
        """Record a problem at ``key``'s line (or ``near``'s, when ``key`` is absent)."""
        line = self.lines.get(key) or (near and self.lines.get(near)) or line_of(self.lines, key)
        p = Problem(str(self.path), line, key, what, todo)
        if p not in self.problems:
            self.problems.append(p)


# --------------------------------------------------------------------------- schema


@contextlib.contextmanager
def _quiet_stderr():
    """Silence import-time and validator chatter on fd 2 (torch/bitsandbytes/
    Axolotl warnings), so validate prints only its findings. Kept and shown
    again if an unexpected exception escapes (a bug, not a finding)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            tmp.seek(0)
            sys.stderr.write(tmp.read().decode("utf-8", "replace")[-5000:])
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def _axolotl():
    """Import Axolotl's config machinery with the process set offline-safe."""
    env.apply_to_process()
    from axolotl.utils.config import validate_config as axolotl_validate
    from axolotl.utils.dict import DictDefault
    from axolotl.utils.schemas.config import AxolotlInputConfig
    from axolotl.utils.schemas.datasets import DPODataset, KTODataset, SFTDataset

    return axolotl_validate, DictDefault, AxolotlInputConfig, {"sft": SFTDataset, "dpo": DPODataset,
                                                                "kto": KTODataset}


def _plugin_models(cfg: dict[str, Any], report: _Report) -> list[type]:
    """The pydantic arg models of the plugins this config lists (``plugins:``).

    Raises nothing: a plugin that does not import is reported on its line.
    """
    from axolotl.integrations.base import load_plugin

    models = []
    for i, name in enumerate(cfg.get("plugins") or []):
        try:
            plugin = load_plugin(str(name))
            args = plugin.get_input_args()
        except Exception as err:  # noqa: BLE001 - any import failure is the user's to see
            report.add(f"plugins.{i}", f"plugin {name!r} does not load ({type(err).__name__}: "
                       f"{str(err).splitlines()[0] if str(err) else ''})",
                       "check the dotted name, e.g. axolotl.integrations.liger.LigerPlugin")
            continue
        if args:
            module, _, cls = str(args).rpartition(".")
            models.append(getattr(__import__(module, fromlist=[cls]), cls))
    return models


def _field_names(model: type) -> set[str]:
    names = set()
    for name, field in model.model_fields.items():
        names.add(name)
        if field.alias:
            names.add(field.alias)
    return names


def _nested_model(annotation: Any) -> type | None:
    """The one pydantic model inside ``annotation`` (Optional/Union/Annotated)
    when a dict value is expected to follow it; None for free-form dicts."""
    from pydantic import BaseModel

    found: list[type] = []

    def visit(tp: Any) -> None:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            found.append(tp)
            return
        origin = typing.get_origin(tp)
        if origin in (list, tuple, set, dict):
            return  # containers are handled by the caller (lists) or free-form (dicts)
        for arg in typing.get_args(tp):
            visit(arg)

    visit(annotation)
    return found[0] if len(found) == 1 else None


def _suggest(key: str, known: set[str]) -> str:
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)
    return f"did you mean {close[0]}?" if close else "remove it, or check the key in Axolotl's config reference"


def unknown_keys(cfg: dict[str, Any], report: _Report) -> None:
    """Report keys Axolotl's schema would drop without a word."""
    _, _, input_config, dataset_models = _axolotl()
    models = [input_config, *_plugin_models(cfg, report)]
    known: set[str] = set().union(*(_field_names(m) for m in models))
    fields = {}
    for m in models:
        fields.update(m.model_fields)
    rl = str(cfg.get("rl") or "")
    ds_model = dataset_models["dpo"] if rl in DPO_LIKE else dataset_models["kto"] if rl == "kto" \
        else dataset_models["sft"]
    for key, value in cfg.items():
        if key not in known:
            report.add(key, "unknown key: Axolotl ignores it silently", _suggest(key, known))
            continue
        if key in DATASET_KEYS:
            for _, i, ds in dataset_entries(cfg, (key,)):
                _check_model_keys(ds, ds_model, f"{key}.{i}", report)
            continue
        field = fields.get(key)
        if isinstance(value, dict) and field is not None:
            model = _nested_model(field.annotation)
            if model is not None:
                _check_model_keys(value, model, key, report)


def _check_model_keys(value: dict[str, Any], model: type, prefix: str, report: _Report) -> None:
    known = _field_names(model)
    for key, sub in value.items():
        if key not in known:
            report.add(f"{prefix}.{key}", f"unknown key for {model.__name__}: Axolotl ignores it "
                       "silently", _suggest(key, known))
        elif isinstance(sub, dict):
            nested = _nested_model(model.model_fields[key].annotation) if key in model.model_fields else None
            if nested is not None:
                _check_model_keys(sub, nested, f"{prefix}.{key}", report)


def _key_in_message(message: str, cfg: dict[str, Any]) -> str | None:
    """The longest config key named in an Axolotl validator's message."""
    hits = [k for k in cfg if re.search(rf"(?<![\w]){re.escape(k)}(?![\w])", message)]
    return max(hits, key=len) if hits else None


def schema(cfg: dict[str, Any], report: _Report) -> None:
    """Run Axolotl's own validation with :data:`TARGET_CAPABILITIES`."""
    axolotl_validate, dict_default, _, _ = _axolotl()
    import torch
    from axolotl.utils.config import prepare_plugins
    from pydantic import ValidationError

    env_caps = {"torch_version": str(torch.__version__).split("+", maxsplit=1)[0]}
    data = dict_default(copy.deepcopy(cfg))
    try:
        prepare_plugins(data)
        axolotl_validate(data, capabilities=dict(TARGET_CAPABILITIES), env_capabilities=env_caps)
    except ValidationError as err:
        for e in err.errors():
            loc = [str(p) for p in e.get("loc", ()) if not str(p).startswith(("function-", "tagged-union"))]
            loc = [p for p in loc if p not in {"SFTDataset", "DPODataset", "KTODataset",
                                               "StepwiseSupervisedDataset", "SyntheticDataset"}]
            msg = str(e.get("msg", "")).removeprefix("Value error, ").removeprefix("Assertion failed, ")
            key = ".".join(loc) if loc else (_key_in_message(msg, cfg) or "(schema)")
            report.add(key, f"Axolotl schema: {msg.splitlines()[0] if msg else e.get('type')}",
                       "fix the value (see Axolotl's config reference)")
    except Exception as err:  # noqa: BLE001 - Axolotl raises plain ValueError/TypeError too
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        key = _key_in_message(msg, cfg) or "(schema)"
        report.add(key, f"Axolotl schema: {msg}", "fix the value (see Axolotl's config reference)")


# --------------------------------------------------------------------------- conventions


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def _is_local(path: str) -> bool:
    return path.startswith(("runs/", "models/", "./", "../", "/", "~")) or Path(path).suffix in DATA_SUFFIXES


def naming(path: Path, cfg: dict[str, Any], report: _Report) -> None:
    """File name vs content (``sft-``/``dpo-`` prefix, ``qlora``/``lora``,
    the ``configs/<model>/`` folder vs a hub ``base_model``)."""
    stem = path.stem
    rl = cfg.get("rl")
    if stem.startswith("sft-") and rl:
        report.add("rl", f"rl: {rl} in an SFT file (named sft-*)", "remove rl, or rename the file dpo-*")
    if stem.startswith("dpo-") and rl != "dpo":
        report.add("rl", f"a dpo-* file needs rl: dpo (has {rl!r})", "set rl: dpo, or rename the file sft-*",
                   near="num_epochs")
    words = set(stem.split("-"))
    adapter = cfg.get("adapter")
    if "qlora" in words or "qlora" in stem:
        if adapter != "qlora":
            report.add("adapter", f"a *qlora* file needs adapter: qlora (has {adapter!r})",
                       "set adapter: qlora, or rename the file")
        if cfg.get("load_in_4bit") is not True:
            report.add("load_in_4bit", "a *qlora* file needs load_in_4bit: true (QLoRA = LoRA on a 4-bit base)",
                       "set load_in_4bit: true", near="adapter")
    elif "lora" in words:
        if adapter != "lora":
            report.add("adapter", f"a *-lora* file needs adapter: lora (has {adapter!r})",
                       "set adapter: lora, or rename the file *qlora*")
        if cfg.get("load_in_4bit") or cfg.get("load_in_8bit"):
            key = "load_in_4bit" if cfg.get("load_in_4bit") else "load_in_8bit"
            report.add(key, "a *-lora* file loads the base in 16 bit", f"remove {key}, or rename the file *qlora*")
    base = str(cfg.get("base_model") or "")
    if path.parent.parent.name == "configs" and base and not _is_local(base):
        folder = path.parent.name
        if _norm(folder) not in _norm(base):
            report.add("base_model", f"{base} does not match the folder configs/{folder}/",
                       "move the file to the folder of its base model, or fix base_model")


# a pitfall rule's finding: (key, what, todo, near: the key whose line to use when key is absent)
Issue = tuple[str, str, str, "str | None"]


def _eval_without_eval_set(cfg: dict[str, Any], lines: dict[str, int]) -> list[Issue]:
    if has_eval_set(cfg):
        return []
    val = cfg.get("val_set_size") or 0
    return [(key, f"{cfg[key]} but there is no eval set (val_set_size: {val}, no test_datasets)",
             "set val_set_size (e.g. 0.05) or add test_datasets, or remove " + key, None)
            for key in EVAL_KEYS if cfg.get(key) not in (None, False, 0, "no")]


def _warmup_twice(cfg: dict[str, Any], lines: dict[str, int]) -> list[Issue]:
    if cfg.get("warmup_steps") is None or cfg.get("warmup_ratio") is None:
        return []
    return [("warmup_steps", f"set together with warmup_ratio (line {line_of(lines, 'warmup_ratio')})",
             "keep one of warmup_steps / warmup_ratio", None)]


def _dpo_max_prompt_len(cfg: dict[str, Any], lines: dict[str, int]) -> list[Issue]:
    if str(cfg.get("rl") or "") not in DPO_LIKE or cfg.get("max_prompt_len") is None:
        return []
    return [("max_prompt_len", ("has no effect under rl: dpo (TRL 1.x DPOConfig has no max_prompt_length; "
             "Axolotl passes only sequence_len as max_length)"),
             "remove it; bound prompt + answer with sequence_len and check prompt lengths with axpack stats", None)]


def _float_as_string(cfg: dict[str, Any], lines: dict[str, int]) -> list[Issue]:
    out: list[Issue] = []
    for key in FLOAT_KEYS:
        value = cfg.get(key)
        if isinstance(value, str):
            try:
                float(value)
            except ValueError:
                continue
            out.append((key, f"{value!r} is a string (YAML 1.1 reads an exponent without a dot as text)",
                        f"write it with a dot, e.g. {float(value):.1e}".replace("e-0", "e-"), None))
    return out


def _absolute_paths(cfg: dict[str, Any], lines: dict[str, int]) -> list[Issue]:
    todo = "configs are shared: use a path relative to the repo root"
    out: list[Issue] = []
    for key in PATH_KEYS:
        value = cfg.get(key)
        if isinstance(value, str) and (value.startswith(("/", "~")) or re.match(r"^[A-Za-z]:\\", value)):
            out.append((key, f"absolute path {value}", todo, None))
    for dkey, i, ds in dataset_entries(cfg):
        p = str(ds.get("path") or "")
        if p.startswith(("/", "~")):
            out.append((f"{dkey}.{i}.path", f"absolute path {p}", todo, None))
    return out


def _run_folders_disagree(cfg: dict[str, Any], lines: dict[str, int]) -> list[Issue]:
    runs: dict[str, str] = {}
    for key in ("output_dir", "dataset_prepared_path", "base_model"):
        m = RUN_RE.match(str(cfg.get(key) or ""))
        if m:
            runs[key] = m.group(1)
    for dkey, i, ds in dataset_entries(cfg):
        m = RUN_RE.match(str(ds.get("path") or ""))
        if m:
            runs[f"{dkey}.{i}.path"] = m.group(1)
    if len(set(runs.values())) <= 1:
        return []
    ref = runs.get("output_dir") or next(iter(runs.values()))
    return [(key, f"points into runs/{run}/ but output_dir is under runs/{ref}/",
             "keep one run folder per config (runs/<run>/...)", None) for key, run in runs.items() if run != ref]


def _lora_alpha_default(cfg: dict[str, Any], lines: dict[str, int]) -> list[Issue]:
    if cfg.get("adapter") not in ("lora", "qlora") or cfg.get("lora_alpha") is not None \
            or cfg.get("peft_use_rslora"):
        return []
    return [("lora_alpha", "not set: PEFT's default α=8 silently rescales the update to 8/r",
             "set lora_alpha (commonly r or 2r)", "lora_r")]


def _no_lora_targets(cfg: dict[str, Any], lines: dict[str, int]) -> list[Issue]:
    if cfg.get("adapter") not in ("lora", "qlora") or cfg.get("lora_target_linear") \
            or cfg.get("lora_target_modules") or cfg.get("lora_target_parameters"):
        return []
    return [("lora_target_modules", "no LoRA targets (lora_target_modules / lora_target_linear)",
             "set lora_target_linear: true or list lora_target_modules", "adapter")]


def _unread_template_kwargs(cfg: dict[str, Any], lines: dict[str, int]) -> list[Issue]:
    kwargs = cfg.get("chat_template_kwargs")
    text = template_text(cfg) if isinstance(kwargs, dict) and kwargs else None
    if text is None:
        return []
    return [(f"chat_template_kwargs.{name}",
             f"chat_template {cfg.get('chat_template')} never reads {name}, so it has no effect",
             "remove it, or use the template that defines it", None)
            for name in kwargs if not re.search(rf"\b{re.escape(str(name))}\b", text)]


def _best_model_save_steps(cfg: dict[str, Any], lines: dict[str, int]) -> list[Issue]:
    save, ev = cfg.get("save_steps"), cfg.get("eval_steps")
    if cfg.get("load_best_model_at_end") and isinstance(save, int) and isinstance(ev, int) and ev > 0 and save % ev:
        return [("save_steps", (f"{save} is not a multiple of eval_steps {ev}; load_best_model_at_end "
                 "needs every eval to have a checkpoint"), "make save_steps a multiple of eval_steps", None)]
    return []


# Known ways a schema-valid config does something other than intended: rules of
# axpack.rules' shape over (cfg, key lines), each returning a list of Issues.
PITFALLS: list[Rule] = [
    Rule("eval-without-eval-set", "Axolotl 0.21 builds an eval set only from val_set_size > 0 or test_datasets "
         "(axolotl/utils/data/shared.py create_train_validation_split); transformers' Trainer evaluates the "
         "eval_dataset it is given", _eval_without_eval_set),
    Rule("warmup-steps-and-ratio", "Axolotl 0.21 core/builders/base.py _configure_warmup_and_logging: "
         "warmup_steps wins, warmup_ratio is ignored", _warmup_twice),
    Rule("dpo-max-prompt-len", "TRL 1.14.1 DPOConfig (trl/trainer/dpo_config.py): max_length only, no "
         "max_prompt_length; Axolotl passes sequence_len as max_length", _dpo_max_prompt_len),
    Rule("float-as-string", "YAML 1.1 float regex needs a dot ([-+]?([0-9][0-9_]*)?\\.[0-9.]*([eE][-+][0-9]+)?); "
         "PyYAML, which Axolotl loads configs with, follows YAML 1.1", _float_as_string),
    Rule("absolute-path", "Axolotl resolves relative paths against the working directory (the repo root for "
         "every axpack command); an absolute path ties the config to one machine", _absolute_paths),
    Rule("run-folders-disagree", "axpack's run layout: runs/<run>/ holds one config's data, prepared cache and "
         "outputs (configs/README.md)", _run_folders_disagree),
    Rule("lora-alpha-default", "PEFT LoraConfig lora_alpha default 8 (peft/tuners/lora/config.py); the update "
         "is scaled by lora_alpha / r (Hu et al. 2021, arXiv:2106.09685 §4.1)", _lora_alpha_default),
    Rule("no-lora-targets", "Axolotl 0.21 config reference: lora_target_modules / lora_target_linear choose the "
         "modules LoRA wraps", _no_lora_targets),
    Rule("unread-template-kwargs", "transformers apply_chat_template passes chat_template_kwargs to the Jinja "
         "template as variables; a variable the template never names has no effect", _unread_template_kwargs),
    Rule("best-model-save-steps", "transformers TrainingArguments: load_best_model_at_end requires save_steps to "
         "be a round multiple of eval_steps", _best_model_save_steps),
]


def pitfalls(cfg: dict[str, Any], report: _Report) -> None:
    """Report every :data:`PITFALLS` rule that fires on ``cfg``, each issue on its key's line."""
    for _rule, issues in fire(PITFALLS, cfg, report.lines):
        for key, what, todo, near in issues:
            report.add(key, what, todo, near=near)


# --------------------------------------------------------------------------- files


# reader: replaced by axpack.records.read_records at merge (first record; None when unreadable)
def _first_record(path: Path) -> dict[str, Any] | None:
    """The dataset file's first record when it is a JSON object (read by
    :func:`axpack.records.read_records`, prep's reader); None otherwise."""
    from .records import read_records

    if path.suffix not in (".jsonl", ".json"):
        return None
    try:
        rec = next(read_records(path), None)
    except (OSError, AxpackError):
        return None
    if rec is None or rec.error is not None or not isinstance(rec.value, dict):
        return None
    return rec.value


def _fields_needed(cfg: dict[str, Any], ds: dict[str, Any]) -> list[tuple[str, str]]:
    """(config key, record field) pairs the dataset's first record must have."""
    typ = str(ds.get("type") or "")
    out = []
    if typ.startswith("chat_template"):
        out.append(("field_messages", str(ds.get("field_messages") or "messages")))
        if cfg.get("rl") in DPO_LIKE:
            out.append(("field_chosen", str(ds.get("field_chosen") or "chosen")))
            out.append(("field_rejected", str(ds.get("field_rejected") or "rejected")))
    return out


def files(path: Path, cfg: dict[str, Any], report: _Report, check_data: bool, root: Path) -> None:
    """Files the config names: datasets, a local base model, DeepSpeed JSON."""
    system = None
    for dkey, i, ds in dataset_entries(cfg):
        if not ds.get("path"):
            continue
        p = str(ds["path"])
        if not _is_local(p) and not (root / p).exists():
            continue  # a Hub dataset id: nothing to check offline
        m = RUN_RE.match(p)
        system = system or (m.group(1) if m else None)
        if not check_data:
            continue
        full = root / p
        if not full.exists():
            hint = (f"run axpack prep data/{m.group(1)}/*.jsonl --out runs/{m.group(1)}/data "
                    "(configs/README.md has each system's flags)") if m else "fix the path"
            report.add(f"{dkey}.{i}.path", f"{p} not found", f"{hint}, or pass --no-data to skip data files")
            continue
        rec = _first_record(full)
        if rec is not None:
            for ckey, fname in _fields_needed(cfg, ds):
                if fname not in rec:
                    report.add(f"{dkey}.{i}.{ckey}" if ckey in ds else f"{dkey}.{i}",
                               f"the first record of {p} has no field {fname!r} (has {', '.join(sorted(rec))})",
                               f"set {ckey} to the record's field, or re-run axpack prep")
    base = str(cfg.get("base_model") or "")
    if base and _is_local(base):
        full = root / base
        if base.startswith(("runs/", "./runs/")):
            if check_data and not (full / "config.json").is_file():
                report.add("base_model", f"{base} not found (made by axpack merge of the SFT run)",
                           "run make merge CONFIG=<the SFT config> first, or pass --no-data")
        elif not (full / "config.json").is_file():
            report.add("base_model", f"{base} has no config.json",
                       "run make setup (builds models/), or point base_model at an HF folder or hub id")
    jinja = cfg.get("chat_template_jinja")
    if isinstance(jinja, str) and "{" not in jinja and "\n" not in jinja and not (root / jinja).is_file():
        # Axolotl reads it as a file only if os.path.isfile; else the path text itself becomes the template
        report.add("chat_template_jinja", f"{jinja} not found (Axolotl would use the path text as the template)",
                   "point it at an existing .jinja file, or paste the template text")
    ds_json = cfg.get("deepspeed")
    if isinstance(ds_json, str):
        full = root / ds_json
        if not full.is_file():
            report.add("deepspeed", f"{ds_json} not found", "use one of configs/deepspeed/*.json")
        else:
            try:
                json.loads(full.read_text(encoding="utf-8"))
            except ValueError as err:
                report.add("deepspeed", f"{ds_json} is not valid JSON ({err})", "fix the JSON")


# --------------------------------------------------------------------------- entry points


def validate_config(path: str | Path, check_data: bool = True, root: str | Path | None = None) -> list[Problem]:
    """All problems of one config file (empty list: valid).

    Args:
        path: the YAML file.
        check_data: also require the inputs made by earlier steps (prep's
            dataset files, merge's ``runs/`` base model); ``--no-data`` = False.
        root: folder relative paths in the config resolve against (Axolotl
            resolves them against the working directory); default: cwd.

    Returns:
        Problems in file order of discovery; each names file, line and key.
    """
    path = Path(path)
    root = Path(root) if root is not None else Path.cwd()
    report = _Report(path)
    try:
        cfg = load_config(path)
    except AxpackError as err:
        m = re.match(r"^(.*?):(\d+): (.*)$", err.message)
        line = int(m.group(2)) if m else 1
        report.problems.append(Problem(str(path), line, "(file)", m.group(3) if m else err.message,
                                       "fix the file"))
        return report.problems
    for key, first, second in duplicate_keys(path):
        report.problems.append(Problem(str(path), second, key, f"written twice (line {first} and {second}); "
                                       "YAML keeps the last one without a word", "delete one of them"))
    with _quiet_stderr():
        unknown_keys(cfg, report)
        naming(path, cfg, report)
        pitfalls(cfg, report)
        files(path, cfg, report, check_data, root)
        if not any(p.key.startswith("plugins.") for p in report.problems):
            schema(cfg, report)  # a plugin that does not load would fail it again, as "(schema)"
    return sorted(report.problems, key=lambda p: p.line)


def validate_paths(paths: list[str | Path], check_data: bool = True,
                   root: str | Path | None = None) -> dict[str, list[Problem]]:
    """Validate several configs; returns ``{path: problems}`` in input order."""
    return {str(p): validate_config(p, check_data, root) for p in paths}
