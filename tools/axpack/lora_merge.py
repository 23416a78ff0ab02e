"""axpack's streaming LoRA merge: one tensor in memory at a time.

For every base shard, the output shard gets the *same* safetensors header
(same names, dtypes, shapes, offsets — a merge changes values, never layout),
then the tensors are written in file order: a tensor no adapter touches is
copied byte for byte in 8 MiB chunks (never decoded), a LoRA target is read
into one buffer, gets ``W += (B @ A) * scaling`` in place and is written back.
Peak memory above the imports is therefore the largest target tensor plus its
fp32 delta, not a shard or a model (measured: ``make bench-export``).

Bit-identical to PEFT's ``merge_and_unload()`` on the same inputs (tests/
test_lora_merge.py checks every tensor bitwise), because it performs PEFT
0.21's exact operations: the adapter weights as fp32 (PEFT's default
``autocast_adapter_dtype=True`` upcasts bf16/fp16 adapters), ``delta =
transpose(B @ A, fan_in_fan_out) * scaling`` with ``scaling = lora_alpha / r``
(rsLoRA: ``lora_alpha / sqrt(r)``, Kalajdzievski 2023), per-module r and
alpha from ``rank_pattern`` / ``alpha_pattern`` matched like
``peft.utils.other.get_pattern_key``, and the in-place ``W += delta`` in the
base weight's dtype (PyTorch computes bf16 += fp32 in fp32 and rounds once).

Refused with one line (the merge would be wrong or lossy): DoRA, resized
embeddings / added tokens, trainable tokens, LoRA bias, LoRA on embedding or
conv layers, PiSSA/OLoRA/CorDA/LoftQ initialisation (they rewrite the base),
aLoRA, layer replication, ``target_parameters``, non-LoRA PEFT types, a
quantized (fp8/int) base, and any adapter module that has no base tensor of
the right shape.

QLoRA (``qlora=QLoraSpec(...)``): during training bitsandbytes quantizes
every ``nn.Linear`` of the base to NF4 and the adapter learns against
``dequantize(quantize(W))``. Default (``base="nf4"``): those weights get the
same NF4 round trip (``bitsandbytes.functional.quantize_4bit`` /
``dequantize_4bit``, blocksize 64, double quant, in the training dtype) and the
delta is folded into that — the merged model is the function that was trained,
which is also what Axolotl's merge-lora does. ``base="pristine"`` folds the
delta into the original weights instead: the adapter never saw them, so the
merged model drifts from the trained one by the NF4 error.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import AxpackError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
PEFT_PREFIX = "base_model.model."
COPY_CHUNK = 8 << 20
# Weight formats never copied next to the merged safetensors.
SKIP_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt")
SKIP_NAMES = {"axpack-merge.json", "axpack-source.json", "README.md", ".gitattributes"}
FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")
# Tokenizer files taken from the training output, so the merged model carries
# exactly the chat template and special tokens it was trained with.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
    "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
)
# LoraConfig fields whose presence changes what a merge must do; truthy -> refused.
UNSUPPORTED_FIELDS = {
    "use_dora": "DoRA (weight-decomposed LoRA) rescales each merged column by a learned magnitude",
    "lora_bias": "LoRA bias (lora_bias: true) also changes the layer's bias",
    "trainable_token_indices": "trainable tokens rewrite embedding rows",
    "layer_replication": "layer replication changes the model's layer list",
    "target_parameters": "target_parameters LoRA acts on raw parameters (MoE experts)",
    "alora_invocation_tokens": "aLoRA only acts after its invocation tokens; merging would apply it everywhere",
    "use_qalora": "QA-LoRA pools the input groups",
    "use_bdlora": "BD-LoRA uses block-diagonal factors",
    "arrow_config": "Arrow routing mixes several adapters per token",
    "kasa_config": "KaSA changes the base weights' singular values",
    "velora_config": "VeLoRA changes the forward pass",
    "monteclora_config": "MonteCLoRA samples its factors",
    "megatron_config": "Megatron-parallel LoRA layers",
}
REWRITING_INITS = ("pissa", "olora", "corda", "loftq", "eva", "lora_ga", "orthogonal")
# Checkpoints whose stored names differ from the module names of the model
# AutoModelForCausalLM builds (what LoRA adapters and the QLoRA quantizer name):
# (loaded prefix, stored prefix). Qwen3.5 checkpoints are Qwen3_5ForConditionalGeneration
# (model.language_model.*, model.visual.*) and load as Qwen3_5ForCausalLM (model.*):
# transformers 5.20.1 conversion_mapping.py, "qwen3_5_text": PrefixChange(
# prefix_to_remove="language_model", model_prefix="model"). The merged checkpoint keeps
# the stored names (and every tensor the text model never loads: model.visual.*, mtp.*).
STORED_PREFIXES: tuple[tuple[str, str], ...] = (("model.", "model.language_model."),)


@dataclass
class QLoraSpec:
    """How the base was quantized in QLoRA training and which base to fold into.

    Attributes:
        base: ``"nf4"`` (fold into dequantize(quantize_nf4(W)), the trained
            function; default, as Axolotl) or ``"pristine"`` (the original W).
        dtype: the dtype the base was loaded in before quantization (Axolotl's
            ``torch_dtype``: bf16 when ``bf16`` is on, fp16 for ``fp16``, else fp32).
        blocksize: NF4 block size (bitsandbytes' default 64).
        double_quant: ``bnb_4bit_use_double_quant`` (Axolotl's default True).
        quant_type: ``"nf4"`` or ``"fp4"``.
        skip_modules: extra ``llm_int8_skip_modules`` (kept unquantized in training).
    """

    base: str = "nf4"
    dtype: str = "bfloat16"
    blocksize: int = 64
    double_quant: bool = True
    quant_type: str = "nf4"
    skip_modules: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line saying which base the delta is folded into, and why."""
        if self.base == "pristine":
            return ("QLoRA: delta folded into the pristine base weights (--qlora-base pristine); the adapter was "
                    "trained against their NF4 round trip, so the merged model differs from the trained one by "
                    "the NF4 error")
        return (f"QLoRA: delta folded into the {self.quant_type.upper()} round trip of the base "
                f"(dequantize(quantize(W)), {self.dtype}, blocksize {self.blocksize}, double quant "
                f"{'on' if self.double_quant else 'off'}): the weights the adapter was trained against, so the "
                f"merged model is the trained model (Axolotl's merge-lora does the same)")


@dataclass
class Target:
    """One LoRA-adapted linear layer: where its factors are and its scaling."""

    module: str
    a_key: str
    b_key: str
    r: int
    alpha: float
    scaling: float
    fan_in_fan_out: bool


@dataclass
class MergeResult:
    """What :func:`merge_lora` did. Sizes in bytes."""

    out_dir: Path
    merged: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    roundtripped: int = 0
    copied: int = 0
    bytes_written: int = 0
    qlora: str | None = None


# ---------------------------------------------------------------- safetensors
def read_header(path: Path) -> tuple[dict[str, Any], bytes, int]:
    """Parse a safetensors header.

    Returns:
        (header dict incl. ``__metadata__``, the raw header bytes incl. the
        8-byte length, offset of the data section).

    Raises:
        AxpackError: not a safetensors file.
    """
    with open(path, "rb") as fh:
        raw_len = fh.read(8)
        if len(raw_len) != 8:
            raise AxpackError(f"{path}: not a safetensors file (too short); re-download or re-merge it")
        (n,) = struct.unpack("<Q", raw_len)
        if n > 100_000_000:
            raise AxpackError(f"{path}: not a safetensors file (header length {n}); re-download it")
        raw = fh.read(n)
    try:
        header = json.loads(raw)
    except ValueError:
        raise AxpackError(f"{path}: safetensors header is not JSON; the file is damaged, re-download it") from None
    return header, raw_len + raw, 8 + n


def shard_files(model_dir: Path) -> list[Path]:
    """The safetensors shards of a HF folder, in index order (or the single file).

    Raises:
        AxpackError: no safetensors weights (e.g. only pytorch_model.bin).
    """
    index = model_dir / INDEX_FILE
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [n for n in names if not (model_dir / n).is_file()]
        if missing:
            raise AxpackError(f"{model_dir}: shard {missing[0]} named in {INDEX_FILE} is missing; re-download the base")
        return [model_dir / n for n in names]
    if (model_dir / SINGLE_FILE).is_file():
        return [model_dir / SINGLE_FILE]
    found = sorted(model_dir.glob("*.safetensors"))
    if found:
        return found
    raise AxpackError(f"{model_dir}: no *.safetensors weights (pytorch_model.bin is not read); "
                      "save the base with safe_serialization=True first")


def _torch_dtype(name: str):
    import torch

    return {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[name]


def _nbytes(info: dict[str, Any]) -> int:
    start, end = info["data_offsets"]
    return int(end) - int(start)


# ---------------------------------------------------------------- adapter
def load_adapter(adapter_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(adapter_config.json dict, {key: tensor}) of a saved PEFT adapter (small: loaded whole).

    Raises:
        AxpackError: files missing or unreadable.
    """
    from safetensors.torch import load_file

    cfg_path, w_path = adapter_dir / ADAPTER_CONFIG, adapter_dir / ADAPTER_WEIGHTS
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise AxpackError(f"{p}: missing; point at a trained adapter folder (train first)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except ValueError as err:
        raise AxpackError(f"{cfg_path}: not valid JSON ({err}); retrain or restore it") from None
    return cfg, load_file(str(w_path))


def pattern_key(patterns: list[str], key: str) -> str:
    """The first ``rank_pattern``/``alpha_pattern`` key matching module name ``key``.

    Same rule as ``peft.utils.other.get_pattern_key`` (PEFT 0.21):
    ``re.match(rf"(.*\\.)?({pattern})$", key)``; no match returns ``key``.
    """
    for p in patterns:
        if re.match(rf"(.*\.)?({p})$", key):
            return p
    return key


def check_adapter_supported(cfg: dict[str, Any], tensors: dict[str, Any], where: Path) -> None:
    """Refuse adapters this merge cannot reproduce exactly (see module docstring).

    Raises:
        AxpackError: one line naming the feature and what to do.
    """
    ptype = str(cfg.get("peft_type", "LORA")).upper()
    if ptype != "LORA":
        raise AxpackError(f"{where}: peft_type {ptype}: only LoRA/QLoRA adapters can be merged by axpack; "
                          "merge it with PEFT's merge_and_unload")
    for key, why in UNSUPPORTED_FIELDS.items():
        if cfg.get(key):
            raise AxpackError(f"{where}: {key}: {why}; axpack's merge does not support it (it would not be "
                              f"bit-identical to PEFT), train without it or merge with PEFT's merge_and_unload")
    init = cfg.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(REWRITING_INITS):
        raise AxpackError(f"{where}: init_lora_weights: {init} rewrites the base weights at init, so the adapter "
                          "cannot be folded into the original base; convert it to a plain LoRA first (PEFT docs)")
    for k, w in tensors.items():
        if "lora_magnitude_vector" in k:
            raise AxpackError(f"{where}: {k}: DoRA magnitude vector; axpack's merge does not support DoRA "
                              "(train with peft_use_dora: false)")
        if "lora_embedding_A" in k or "lora_embedding_B" in k:
            raise AxpackError(f"{where}: {k}: LoRA on an embedding layer is not supported by axpack's merge; "
                              "target linear layers only (lora_target_linear: true)")
        if "trainable_tokens" in k or "token_adapter" in k:
            raise AxpackError(f"{where}: {k}: trainable tokens (resized/retrained embeddings) are not supported")
        if (".lora_A." in k or ".lora_B." in k) and w.ndim != 2:
            raise AxpackError(f"{where}: {k}: {w.ndim}-D LoRA factor (conv layer) is not supported; "
                              "target linear layers only")


def plan_targets(cfg: dict[str, Any], tensors: dict[str, Any], where: Path) -> tuple[dict[str, Target], dict[str, str]]:
    """Map base weight names to their LoRA target, and to full replacements.

    Returns:
        (``{"model.layers.0.self_attn.q_proj.weight": Target}``,
        ``{base weight name: adapter key}`` for ``modules_to_save`` copies).

    Raises:
        AxpackError: a factor pair is incomplete, r disagrees with the shapes.
    """
    fan = bool(cfg.get("fan_in_fan_out"))
    r_default, alpha_default = int(cfg.get("r") or 8), cfg.get("lora_alpha") or 8
    rank_pattern, alpha_pattern = dict(cfg.get("rank_pattern") or {}), dict(cfg.get("alpha_pattern") or {})
    rslora = bool(cfg.get("use_rslora"))
    targets: dict[str, Target] = {}
    replace: dict[str, str] = {}
    for key in sorted(tensors):
        name = key.removeprefix(PEFT_PREFIX)
        if ".lora_B." in name:
            continue
        if ".lora_A." in name:
            module, _, rest = name.partition(".lora_A.")
            if rest != "weight":
                raise AxpackError(f"{where}: {key}: unexpected LoRA key (a named adapter or bias); "
                                  "save the adapter with PEFT's save_pretrained")
            b_key = key.replace(".lora_A.", ".lora_B.")
            if b_key not in tensors:
                raise AxpackError(f"{where}: {key} has no matching lora_B; "
                                  "the adapter file is incomplete, retrain or re-save it")
            a, b = tensors[key], tensors[b_key]
            r = int(a.shape[0])
            r_cfg = int(rank_pattern.get(pattern_key(list(rank_pattern), module), r_default))
            if b.shape[1] != r or r_cfg != r:
                raise AxpackError(f"{where}: {module}: factor shapes {tuple(a.shape)}/{tuple(b.shape)} disagree with "
                                  f"r={r_cfg} from adapter_config.json; the adapter is damaged")
            alpha = alpha_pattern.get(pattern_key(list(alpha_pattern), module), alpha_default)
            scaling = alpha / math.sqrt(r) if rslora else alpha / r
            targets[module + ".weight"] = Target(module, key, b_key, r, alpha, scaling, fan)
        else:
            # modules_to_save copies are saved under the module's own name
            replace[name] = key
    return targets, replace


def stored_name(key: str, stored: set[str] | dict[str, Any]) -> str:
    """The name ``key`` (a loaded model's weight name) has in a checkpoint that stores ``stored``.

    ``key`` itself when stored so, else the first :data:`STORED_PREFIXES` rename
    that is stored, else ``key`` (the caller reports it missing).
    """
    if key in stored:
        return key
    for loaded, saved in STORED_PREFIXES:
        if key.startswith(loaded) and saved + key[len(loaded):] in stored:
            return saved + key[len(loaded):]
    return key


def check_vocab(base_dir: Path, adapter_dir: Path) -> None:
    """Refuse resized embeddings: the training output's config.json or tokenizer
    holds more tokens than the base's ``vocab_size``.

    Raises:
        AxpackError: resized embeddings (the merged model would lose the new rows).
    """
    try:
        base_vocab = int(json.loads((base_dir / "config.json").read_text()).get("vocab_size") or 0)
    except (OSError, ValueError):
        return
    cfg = adapter_dir / "config.json"
    if cfg.is_file() and base_vocab:
        try:
            trained = int(json.loads(cfg.read_text()).get("vocab_size") or base_vocab)
        except ValueError:
            trained = base_vocab
        if trained != base_vocab:
            raise AxpackError(f"{adapter_dir}: resized embeddings "
                              f"(vocab_size {base_vocab} -> {trained}, added tokens); "
                              "axpack's merge does not support them: keep the base's tokens (use its own chat "
                              "template tokens, no added special tokens)")
    tok = adapter_dir / "tokenizer.json"
    if tok.is_file() and base_vocab:
        try:
            data = json.loads(tok.read_text())
            ids = set((data.get("model") or {}).get("vocab", {}).values()) if isinstance(
                (data.get("model") or {}).get("vocab"), dict) else set()
            ids |= {t["id"] for t in data.get("added_tokens", [])}
            top = max(ids) + 1 if ids else 0
        except (ValueError, KeyError, TypeError):
            return
        if top > base_vocab:
            raise AxpackError(f"{tok}: token ids up to {top - 1} but the base embedding has {base_vocab} rows "
                              "(resized embeddings / added tokens); axpack's merge does not support them")


# ---------------------------------------------------------------- QLoRA
def quantized_linear_weights(base_dir: Path, spec: QLoraSpec) -> set[str]:
    """Names of the weights bitsandbytes quantized in QLoRA training.

    Builds the model on the meta device (no memory) and takes every
    ``nn.Linear`` weight except transformers' own skip list
    (``get_keys_to_not_convert``: lm_head / tied output embeddings) and
    ``spec.skip_modules`` — the same rule transformers' bnb quantizer uses.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.quantizers.base import get_keys_to_not_convert

    config = AutoConfig.from_pretrained(base_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    skips = set(get_keys_to_not_convert(model)) | set(spec.skip_modules)
    out = set()
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and not any(
                name == s or name.endswith("." + s) or name.split(".")[-1] == s for s in skips):
            out.add(name + ".weight")
    return out


def nf4_roundtrip(w, spec: QLoraSpec):
    """``dequantize_4bit(quantize_4bit(w))`` in ``spec.dtype``: the base weight as the adapter saw it.

    Same call bitsandbytes' ``Params4bit`` makes when transformers loads a
    QLoRA base (``compress_statistics`` = double quant). Returns ``spec.dtype``.
    """
    import bitsandbytes.functional as F
    import torch

    x = w.to(getattr(torch, spec.dtype))
    q, state = F.quantize_4bit(x, blocksize=spec.blocksize, compress_statistics=spec.double_quant,
                               quant_type=spec.quant_type)
    return F.dequantize_4bit(q, state)


# ---------------------------------------------------------------- merge
def _copy_range(src, dst, nbytes: int) -> None:
    while nbytes > 0:
        block = src.read(min(COPY_CHUNK, nbytes))
        if not block:
            raise AxpackError(f"{src.name}: file ends early; the shard is truncated, re-download it")
        dst.write(block)
        nbytes -= len(block)


def _read_tensor(src, info: dict[str, Any]):
    """One tensor into its own writable buffer (read(), not mmap: pages do not stay in RSS)."""
    import torch

    n = _nbytes(info)
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = src.readinto(view[got:])
        if not k:
            raise AxpackError(f"{src.name}: file ends early; the shard is truncated, re-download it")
        got += k
    dtype = _torch_dtype(info["dtype"])
    t = torch.frombuffer(buf, dtype=dtype) if n else torch.empty(0, dtype=dtype)
    return t.reshape(info["shape"]), buf


def delta_for(target: Target, tensors: dict[str, Any]):
    """PEFT's ``get_delta_weight``: ``transpose(B @ A, fan_in_fan_out) * scaling`` in fp32."""
    import torch

    a = tensors[target.a_key].to(torch.float32)
    b = tensors[target.b_key].to(torch.float32)
    d = b @ a
    if target.fan_in_fan_out:
        d = d.T
    return d * target.scaling


def _tensor_bytes(t) -> bytes:
    import torch

    t = t.contiguous()
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


@dataclass
class _MergePlan:
    """Which stored tensors :func:`merge_lora` rewrites, and how (stored names)."""

    targets: dict[str, Target]        # weight -> its LoRA factors (delta added)
    replace: dict[str, str]           # weight -> modules_to_save tensor in the adapter
    nf4: set[str]                     # weights that go through the NF4 round trip (QLoRA, base "nf4")
    tensors: dict[str, Any]           # the adapter's tensors
    qlora: QLoraSpec | None

    def touches(self, key: str) -> bool:
        """True when the stored tensor ``key`` is rewritten rather than copied."""
        return key in self.targets or key in self.replace or key in self.nf4


def merge_lora(base_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path,
               qlora: QLoraSpec | None = None, tokenizer_from: str | Path | None = None,
               log=None) -> MergeResult:
    """Merge the LoRA adapter in ``adapter_dir`` into ``base_dir``, writing ``out_dir``.

    Args:
        base_dir: local HF folder with safetensors shards (any dtype F32/F16/BF16).
        adapter_dir: PEFT adapter folder (adapter_config.json + adapter_model.safetensors).
        out_dir: an empty or new folder (callers make it atomic; see axpack.merging).
        qlora: set for QLoRA adapters (which base to fold into, see :class:`QLoraSpec`).
        tokenizer_from: folder whose tokenizer files override the base's
            (the training output, so the merged model has the trained chat template).
        log: callable for progress lines (default: silent).

    Returns:
        :class:`MergeResult`.

    Raises:
        AxpackError: unsupported adapter (DoRA, resized embeddings, ...), a
            target with no base tensor or a shape mismatch, a quantized base.
    """
    base_dir, adapter_dir, out_dir = Path(base_dir), Path(adapter_dir), Path(out_dir)
    log = log or (lambda _msg: None)
    cfg, tensors = load_adapter(adapter_dir)
    check_adapter_supported(cfg, tensors, adapter_dir)
    check_vocab(base_dir, adapter_dir)
    targets, replace = plan_targets(cfg, tensors, adapter_dir)
    headers = [(p, *read_header(p)) for p in shard_files(base_dir)]
    seen = {k: v for _, h, _, _ in headers for k, v in h.items() if k != "__metadata__"}
    # adapters and the quantizer name the loaded model's modules; the checkpoint may store them
    # under other names (Qwen3.5: model.language_model.*): look each up by its stored name
    targets = {stored_name(k, seen): t for k, t in targets.items()}
    replace = {stored_name(k, seen): a for k, a in replace.items()}
    _check_against_base(targets, replace, seen, tensors, adapter_dir, base_dir)
    result = MergeResult(out_dir)
    nf4: set[str] = set()
    if qlora is not None:
        result.qlora = qlora.describe()
        log("axpack: " + result.qlora)
        if qlora.base == "nf4":
            nf4 = {stored_name(k, seen) for k in quantized_linear_weights(base_dir, qlora)}
    plan = _MergePlan(targets, replace, nf4, tensors, qlora)
    out_dir.mkdir(parents=True, exist_ok=True)
    for path, header, raw, data_start in headers:
        log(f"axpack: merging {path.name} ({sum(1 for k in header if k != '__metadata__')} tensors)")
        _merge_shard(path, header, raw, data_start, out_dir / path.name, plan, result)
        result.bytes_written += (out_dir / path.name).stat().st_size
    missing = sorted(set(targets) - set(result.merged))
    if missing:
        raise AxpackError(f"{adapter_dir}: {len(missing)} LoRA targets were not merged (first: {missing[0]}); "
                          "the base shards and their index disagree")
    _copy_side_files(base_dir, out_dir)
    if tokenizer_from:
        for name in TOKENIZER_FILES:
            src = Path(tokenizer_from) / name
            if src.is_file():
                shutil.copy2(src, out_dir / name)
    return result


def _check_against_base(targets: dict[str, Target], replace: dict[str, str], seen: dict[str, Any],
                        tensors: dict[str, Any], adapter_dir: Path, base_dir: Path) -> None:
    """Refuse before writing anything: a target the base lacks, a shape or dtype that does not fit.

    Raises:
        AxpackError: no base tensor for a target, shape mismatch (another base
            model), a quantized stored dtype, a modules_to_save shape change.
    """
    for wkey, t in targets.items():
        if wkey not in seen:
            raise AxpackError(f"{adapter_dir}: LoRA target {t.module} has no base tensor {wkey} in {base_dir} "
                              "(wrong base model, or the architecture renames weights at load); merge into the "
                              "base the adapter was trained on")
        info = seen[wkey]
        out_f, in_f = tensors[t.b_key].shape[0], tensors[t.a_key].shape[1]
        want = [in_f, out_f] if t.fan_in_fan_out else [out_f, in_f]
        if list(info["shape"]) != want:
            raise AxpackError(f"{adapter_dir}: {t.module}: adapter expects a {want} weight, base has "
                              f"{info['shape']}; this adapter was trained on a different base model")
        if info["dtype"] not in FLOAT_DTYPES:
            raise AxpackError(f"{base_dir}: {wkey} is stored as {info['dtype']} (a quantized checkpoint); "
                              "merge into a full-precision (bf16/fp16/fp32) base")
    for wkey, akey in replace.items():
        if wkey not in seen or list(seen[wkey]["shape"]) != list(tensors[akey].shape):
            have = seen[wkey]["shape"] if wkey in seen else "no such tensor"
            raise AxpackError(f"{adapter_dir}: {akey}: modules_to_save weight of shape {list(tensors[akey].shape)} "
                              f"but base has {have} (resized embeddings or a tied weight); axpack's merge does not "
                              "support that")


def _merge_shard(path: Path, header: dict[str, Any], raw: bytes, data_start: int, dest: Path,
                 plan: _MergePlan, result: MergeResult) -> None:
    """Write ``dest``: ``path``'s header bytes, then each tensor in file order,
    rewritten when the plan touches it and copied in chunks otherwise; fsynced."""
    items = sorted(((k, v) for k, v in header.items() if k != "__metadata__"),
                   key=lambda kv: kv[1]["data_offsets"][0])
    with open(path, "rb") as src, open(dest, "wb") as dst:
        dst.write(raw)
        pos = 0
        for key, info in items:
            start, end = info["data_offsets"]
            if start != pos:
                raise AxpackError(f"{path}: {key}: data not contiguous (offset {start}, expected {pos}); "
                                  "the file is damaged")
            pos = end
            src.seek(data_start + start)
            if plan.touches(key):
                data = _merged_tensor_bytes(key, info, src, plan, result)
                if len(data) != end - start:
                    raise AssertionError(f"{key}: merged tensor has {len(data)} bytes, expected {end - start}")
                dst.write(data)
                del data
            else:
                _copy_range(src, dst, end - start)
                result.copied += 1
        dst.flush()
        os.fsync(dst.fileno())


def _merged_tensor_bytes(key: str, info: dict[str, Any], src, plan: _MergePlan, result: MergeResult):
    """The stored bytes of tensor ``key`` after the merge (read from ``src`` at its offset)."""
    import torch

    w, buf = _read_tensor(src, info)
    if key in plan.nf4:
        # fold into the round trip in its own dtype, round once to the stored dtype
        store = w.dtype
        w = nf4_roundtrip(w, plan.qlora)
        result.roundtripped += 1
        if key in plan.targets:
            w = (w.to(torch.float32) + delta_for(plan.targets[key], plan.tensors)).to(store)
            result.merged.append(key)
        else:
            w = w.to(store)
        return _tensor_bytes(w)
    if key in plan.replace:
        result.replaced.append(key)
        return _tensor_bytes(plan.tensors[plan.replace[key]].to(w.dtype).reshape(w.shape).clone())
    # plain LoRA: PEFT's in-place add, bit for bit; w is still a view of buf
    with torch.no_grad():
        w.add_(delta_for(plan.targets[key], plan.tensors))  # PEFT: base_layer.weight.data += delta
    result.merged.append(key)
    return buf


def _copy_side_files(base_dir: Path, out_dir: Path) -> None:
    """Copy config, generation config, index, tokenizer and code files of the base."""
    for p in sorted(base_dir.iterdir()):
        if (p.is_file() and not p.name.startswith(".") and p.name not in SKIP_NAMES
                and not p.name.endswith(SKIP_SUFFIXES)):
            shutil.copy2(p, out_dir / p.name)


def iter_tensors(model_dir: str | Path) -> Iterator[tuple[str, Any]]:
    """Yield ``(name, tensor)`` for every tensor of a HF folder, one at a time (for tests/tools)."""
    from safetensors import safe_open

    for shard in shard_files(Path(model_dir)):
        with safe_open(str(shard), framework="pt") as fh:
            for k in fh.keys():  # noqa: SIM118 - safe_open is not a dict
                yield k, fh.get_tensor(k)
