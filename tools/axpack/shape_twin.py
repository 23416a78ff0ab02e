"""Shape twins (engine of ``axpack twin``): a tiny random replica of a base model.

A twin is a randomly initialised model of the *same architecture class and
checkpoint layout* as a real base model — same ``architectures``, layer
pattern, attention bias, q/k norm, tied or untied embeddings, rotary
settings, ``torch_dtype``, vocabulary rows and stored key names — with the
sizes that can shrink shrunk (:data:`SHRINK`), so a training step takes well
under a second on CPU. The values come from the model-shape card
(``axpack/cards/*.yaml``, its ``twin:`` section, each value with its source).

What is kept, and why:

- ``head_dim`` and every rotary setting (Qwen3.5: head_dim 256,
  ``partial_rotary_factor`` 0.25, M-RoPE sections [11, 11, 10] interleaved;
  with head_dim 16 llama.cpp aborts with ``GGML_ASSERT(sect_dims <= ne0)``);
- the embedding rows (``vocab``: Qwen2.5's padded 152,064, Qwen3.5's 248,320);
- the ratio of query to key/value heads (GQA), and of linear-attention value
  to key heads (the converter reorders V heads by it);
- what the checkpoint stores beyond what transformers loads: Qwen3.5 is saved
  as ``Qwen3_5ForConditionalGeneration`` (``model.language_model.*``, a
  one-block vision tower under ``model.visual.*``) plus the ``mtp.*``
  multi-token-prediction tensors (``mtp_num_hidden_layers: 1``), which
  transformers drops on load and the pinned converter requires.

The tokenizer is the real one where llama.cpp ships it: the vocabulary-only
GGUFs of the pinned llama-cpp-python source package
(``vendor/llama.cpp/models/ggml-vocab-*.gguf``, fetched into
``.cache/llama.cpp/models/`` by ``make setup``), loaded with transformers'
GGUF tokenizer conversion, then given the real model's special tokens (at
their real ids, in the vocabulary's ``[PAD…]``/reserved slots), EOS, PAD, BOS
and the chat template the real model ships (``axpack/cards/templates/``).
Known differences from the real tokenizers are listed in each card and in
:func:`build_tokenizer`.

Output: ``config.json``, ``model.safetensors``, ``generation_config.json``,
the tokenizer files and ``axpack-twin.json`` (card, vocabulary sha256, seed,
sizes). Built atomically; a rerun with the same inputs is skipped. Seeded:
the same inputs give the same weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any

from . import env
from .cards import ModelShape, card_for_id, card_for_pack_dir, load_cards, resolve_shape
from .errors import AxpackError
from .fsutil import atomic_dir, atomic_write_json, atomic_write_text

LOG = logging.getLogger(__name__)

TWIN_FILE = "axpack-twin.json"
TWIN_VERSION = 3  # bump when the builder changes what it writes
SEED = 1234
TEMPLATES = Path(__file__).resolve().parent / "cards" / "templates"

# What shrinks (everything else is the real model's). Hidden 64 and 4 layers as the
# issue's measured Qwen3.5 twin; 4 layers = one 3:1 Qwen3.5 group.
SHRINK = {
    "hidden": 64,
    "layers": 4,
    "intermediate": 128,
    "kv_heads": 2,            # query heads = kv_heads x the real model's GQA ratio
    "linear_key_heads": 2,    # value heads = key heads x the real ratio (Qwen3.5: 2)
    "vision_depth": 1,
    "vision_hidden": 64,       # multiples of 64: bitsandbytes CPU 4-bit packs whole 64-blocks per row
    "vision_heads": 2,
    "vision_intermediate": 128,
}
# Output head init std: transformers' 0.02 gives a 64-wide random model logits
# within ~0.2 of each other (every position a near-tie for axpack verify);
# 0.5 makes the twin's next-token choices decisive. Measured: see tests/test_twins.py.
HEAD_STD = 0.5

# The real models' added tokens by family (id -> (content, special)), from their
# tokenizer_config.json "added_tokens_decoder" (Qwen2.5-7B-Instruct, Qwen3-4B-2507:
# https://huggingface.co/Qwen/Qwen3-4B-Instruct-2507/blob/main/tokenizer_config.json).
_QWEN25 = {
    151643: ("<|endoftext|>", True), 151644: ("<|im_start|>", True), 151645: ("<|im_end|>", True),
    151646: ("<|object_ref_start|>", True), 151647: ("<|object_ref_end|>", True),
    151648: ("<|box_start|>", True), 151649: ("<|box_end|>", True),
    151650: ("<|quad_start|>", True), 151651: ("<|quad_end|>", True),
    151652: ("<|vision_start|>", True), 151653: ("<|vision_end|>", True),
    151654: ("<|vision_pad|>", True), 151655: ("<|image_pad|>", True), 151656: ("<|video_pad|>", True),
    151657: ("<tool_call>", False), 151658: ("</tool_call>", False),
    151659: ("<|fim_prefix|>", False), 151660: ("<|fim_middle|>", False), 151661: ("<|fim_suffix|>", False),
    151662: ("<|fim_pad|>", False), 151663: ("<|repo_name|>", False), 151664: ("<|file_sep|>", False),
}
_QWEN3 = {**_QWEN25, 151665: ("<tool_response>", False), 151666: ("</tool_response>", False),
          151667: ("<think>", False), 151668: ("</think>", False)}
# Llama 3.1/3.2 (tokenizer.json of meta-llama/Llama-3.1-8B-Instruct): 8 named tokens,
# the other 248 of 128000-128255 are <|reserved_special_token_N|> numbered in id order.
_LLAMA31_NAMED = {128000: "<|begin_of_text|>", 128001: "<|end_of_text|>", 128004: "<|finetune_right_pad_id|>",
                  128006: "<|start_header_id|>", 128007: "<|end_header_id|>", 128008: "<|eom_id|>",
                  128009: "<|eot_id|>", 128010: "<|python_tag|>"}


def _llama31() -> dict[int, tuple[str, bool]]:
    out, n = {}, 0
    for i in range(128000, 128256):
        if i in _LLAMA31_NAMED:
            out[i] = (_LLAMA31_NAMED[i], True)
        else:
            out[i] = (f"<|reserved_special_token_{n}|>", True)
            n += 1
    return out


ADDED_TOKENS = {"qwen2.5": _QWEN25, "qwen3": _QWEN3, "llama3.1": _llama31()}


# --------------------------------------------------------------------------- where things are


def twins_root() -> Path:
    """``models/twins`` under the checkout (``AXPACK_TWINS_DIR`` overrides)."""
    return Path(os.environ.get("AXPACK_TWINS_DIR") or env.project_root() / "models" / "twins")


def vocab_dir() -> Path:
    """Folder with llama.cpp's ``ggml-vocab-*.gguf`` test vocabularies:
    ``.cache/llama.cpp/models`` (``AXPACK_VOCAB_DIR`` overrides)."""
    return Path(os.environ.get("AXPACK_VOCAB_DIR") or env.llama_cpp_dir() / "models")


def slug(model_id: str) -> str:
    """``Qwen/Qwen3.5-9B`` -> ``qwen3.5-9b``."""
    return re.sub(r"[^a-z0-9._-]+", "-", model_id.rstrip("/").split("/")[-1].lower())


def card_for(model: str) -> ModelShape:
    """The card of a base model id/alias (or a ``configs/<dir>`` name) that has a ``twin:`` section.

    Raises:
        AxpackError: no card, or the card has no ``twin:`` section.
    """
    shape = card_for_id(model) or card_for_pack_dir(model)
    if shape is None:
        known = ", ".join(sorted(s.id for s in load_cards().values() if s.twin))
        raise AxpackError(f"{model}: no model card; a twin can be built for: {known}")
    if not shape.twin:
        known = ", ".join(sorted(s.id for s in load_cards().values() if s.twin))
        raise AxpackError(f"{shape.id}: its card (axpack/cards/) has no twin: section; twins exist for: {known}")
    return shape


def twin_shape_for_config(cfg: dict[str, Any], config_path: str | Path | None = None) -> ModelShape | None:
    """The card (with a ``twin:`` section) of a config's base model, or None.

    A DPO config on ``runs/<run>/sft-merged`` finds its base through the card's
    ``pack_dirs`` (the config's ``configs/<dir>/`` folder).
    """
    try:
        shape = resolve_shape(cfg, config_path)
    except AxpackError:
        return None
    return shape if shape is not None and shape.twin else None


# --------------------------------------------------------------------------- fingerprint


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def twin_inputs(shape: ModelShape) -> dict[str, Any]:
    """Everything a twin is made from (its fingerprint's content)."""
    tw = shape.twin or {}
    tokcfg = tw.get("tokenizer") or {}
    vocab = vocab_dir() / str(tokcfg.get("vocab_gguf", ""))
    tmpl = TEMPLATES / str(tokcfg.get("chat_template", ""))
    from importlib.metadata import version

    return {"version": TWIN_VERSION, "card": shape.id, "twin": tw, "shrink": SHRINK, "head_std": HEAD_STD,
            "seed": SEED, "vocab_sha256": _sha256(vocab) if vocab.is_file() else None,
            "template_sha256": _sha256(tmpl) if tmpl.is_file() else None,
            "transformers": version("transformers")}


def fingerprint(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


# --------------------------------------------------------------------------- tokenizer


def build_tokenizer(shape: ModelShape):
    """The twin's tokenizer: the real vocabulary from llama.cpp's vocab GGUF, with the
    real model's added tokens, EOS/PAD/BOS and chat template.

    Known differences from the real tokenizer (measured; see the cards):
    - Qwen3.5: ``ggml-vocab-qwen35.gguf`` is the Qwen2 BPE with Qwen3.5's
      pre-tokenizer, not the real 248k vocabulary, so its ids differ.
    - Llama: transformers' conversion of ``ggml-vocab-llama-bpe.gguf`` appends
      ``<|endoftext|>`` at id 128256 (one past the 128,256 embedding rows; the
      pinned converter then asserts in ``get_vocab_base``): it is removed here.
      The GGUF carries Llama 3.0's special-token names; 3.1's are restored.

    Raises:
        AxpackError: the vocabulary GGUF or the template is missing.
    """
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tokcfg = (shape.twin or {}).get("tokenizer") or {}
    name = str(tokcfg["vocab_gguf"])
    vdir = vocab_dir()
    if not (vdir / name).is_file():
        raise AxpackError(f"{vdir / name}: llama.cpp vocabulary missing; run make setup "
                          "(scripts/fetch-llama-cpp.sh extracts models/ggml-vocab-*.gguf)")
    tmpl_path = TEMPLATES / str(tokcfg["chat_template"])
    if not tmpl_path.is_file():
        raise AxpackError(f"{tmpl_path}: chat template missing from the axpack package; reinstall axpack")
    # transformers' GGUF tokenizer conversion reads every token and merge through gguf-py
    # (most of a twin's build time); its result is cached per vocabulary file content
    cache = twins_root() / ".vocab-cache" / f"{_sha256(vdir / name)[:16]}-{name}.tokenizer.json"
    if cache.is_file():
        data = json.loads(cache.read_text(encoding="utf-8"))
    else:
        src = AutoTokenizer.from_pretrained(str(vdir), gguf_file=name)
        data = json.loads(src.backend_tokenizer.to_str())
        atomic_write_text(cache, json.dumps(data, ensure_ascii=False))
    vocab: dict[str, int] = data["model"]["vocab"]
    by_id = {i: t for t, i in vocab.items()}
    rows = shape.vocab
    # drop added tokens outside the embedding (the llama-bpe conversion's extra <|endoftext|>)
    data["added_tokens"] = [t for t in data.get("added_tokens") or [] if t["id"] < rows]
    added = {t["id"]: t for t in data["added_tokens"]}
    for tid, (content, special) in ADDED_TOKENS.get(str(tokcfg.get("added_tokens")), {}).items():
        old = by_id.get(tid)
        if old is not None and old != content:
            del vocab[old]
        vocab[content] = tid
        by_id[tid] = content
        added[tid] = {"id": tid, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
                      "normalized": False, "special": special}
    data["added_tokens"] = [added[i] for i in sorted(added)]
    if tokcfg.get("ignore_merges"):
        # Llama 3's tokenizer.json sets "ignore_merges": true (a whole pre-token found in the
        # vocabulary is one token); transformers' GGUF conversion leaves it false, which split
        # ' Việt' (id 101798) in the one llama-bpe test vector transformers got wrong (45/46)
        data["model"]["ignore_merges"] = True
    if max(vocab.values()) >= rows:
        raise AxpackError(f"{name}: token id {max(vocab.values())} >= {rows} embedding rows of {shape.id}")
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(data)),
        bos_token=tokcfg.get("bos_token"), eos_token=tokcfg.get("eos_token"),
        pad_token=tokcfg.get("pad_token"), clean_up_tokenization_spaces=False,
        model_max_length=int(shape.max_position or 32768))
    tok.chat_template = tmpl_path.read_text(encoding="utf-8")
    if tokcfg.get("tokenizer_class"):
        tok.init_kwargs["tokenizer_class"] = tokcfg["tokenizer_class"]
    return tok


# --------------------------------------------------------------------------- model


def _heads(shape: ModelShape) -> tuple[int, int]:
    kv = SHRINK["kv_heads"]
    ratio = max(1, shape.heads // max(1, shape.kv_heads))
    return kv * ratio, kv


def twin_config(shape: ModelShape, tok) -> Any:
    """The transformers config of the twin (a ``PreTrainedConfig``)."""
    from transformers import AutoConfig

    tw = shape.twin or {}
    heads, kv = _heads(shape)
    hidden = SHRINK["hidden"]
    if tw["model_type"] == "llama" and hidden % heads:
        # LlamaConfig validates hidden % heads == 0 (Llama-3.2's 24:8 GQA gives 6 heads): the
        # smallest multiple of 64 the heads divide. 64, not 32: bitsandbytes' CPU 4-bit forward
        # packs whole 64-blocks per row (hidden 96 failed: "shape '[768, 1]' is invalid for
        # input of size 1152" in _convert_weight_packed_for_cpu); real widths are multiples of 64
        hidden = math.lcm(64, heads) * max(1, -(-SHRINK["hidden"] // math.lcm(64, heads)))
    head_dim = shape.head_dim
    if tw["model_type"] == "qwen2":
        # llama.cpp's qwen2 graph sizes attn_q as n_embd x n_embd (measured: "tensor
        # 'blk.0.attn_q.weight' has wrong shape; expected 64, 64, got 64, 1792"), so a Qwen2
        # twin needs hidden = heads x head_dim; with Qwen2.5's 7:1 GQA and head_dim 128 that is
        # 896 wide (272M params of embeddings). The twin keeps GQA at 2:1 and halves head_dim:
        # hidden 128 = 2 x 64 (plain RoPE, so no rotary setting depends on head_dim)
        heads, kv, head_dim, hidden = 2, 1, 64, 128
    rope = dict(tw.get("rope") or {})
    eos_id = tok.eos_token_id
    pad_id = tok.pad_token_id
    bos_id = tok.bos_token_id
    text: dict[str, Any] = {
        "vocab_size": shape.vocab, "hidden_size": hidden, "intermediate_size": SHRINK["intermediate"],
        "num_hidden_layers": SHRINK["layers"], "num_attention_heads": heads, "num_key_value_heads": kv,
        "head_dim": head_dim, "hidden_act": tw.get("hidden_act", "silu"),
        "rms_norm_eps": float(tw.get("rms_norm_eps", 1e-6)),
        "max_position_embeddings": int(shape.max_position or 32768),
        "tie_word_embeddings": shape.tied_embeddings, "attention_bias": shape.attention_bias,
        "rope_parameters": rope, "eos_token_id": eos_id, "pad_token_id": pad_id, "bos_token_id": bos_id,
        "dtype": tw.get("dtype", "bfloat16"),
    }
    mt = tw["model_type"]
    if mt == "qwen3_5":
        la = shape.linear_attention
        assert la is not None
        lk = SHRINK["linear_key_heads"]
        interval = int(tw.get("full_attention_interval", 4))
        text.update({
            "linear_num_key_heads": lk, "linear_num_value_heads": lk * (la.value_heads // la.key_heads),
            "linear_key_head_dim": la.key_head_dim, "linear_value_head_dim": la.value_head_dim,
            "linear_conv_kernel_dim": la.conv_kernel,
            "layer_types": ["linear_attention" if (i + 1) % interval else "full_attention"
                            for i in range(SHRINK["layers"])],
        })
        text.pop("attention_bias")
        vis = dict(tw.get("vision") or {})
        vision = {"depth": SHRINK["vision_depth"], "hidden_size": SHRINK["vision_hidden"],
                  "num_heads": SHRINK["vision_heads"], "intermediate_size": SHRINK["vision_intermediate"],
                  "out_hidden_size": SHRINK["hidden"], **vis}
        cfg = AutoConfig.for_model("qwen3_5", text_config=text, vision_config=vision,
                                   tie_word_embeddings=shape.tied_embeddings, **(tw.get("special_ids") or {}))
    else:
        if mt == "llama":
            text["mlp_bias"] = False
        if mt == "qwen2":
            text.pop("attention_bias")  # Qwen2 always has q/k/v bias (no switch)
        cfg = AutoConfig.for_model(mt, **text)
    cfg.architectures = [shape.architecture]
    return cfg


def _mtp_tensors(model, cfg, n_layers: int) -> dict[str, Any]:
    """Qwen3.5's multi-token-prediction head as the real checkpoint stores it
    (``mtp.fc``, ``mtp.pre_fc_norm_embedding``, ``mtp.pre_fc_norm_hidden``,
    ``mtp.norm``, ``mtp.layers.N.*`` = one full-attention decoder block), names
    as the pinned converter maps them (conversion/qwen.py, _QwenMtpMixin)."""
    import torch
    from transformers.models.qwen3_5 import modeling_qwen3_5 as m

    text = cfg.text_config
    h = text.hidden_size
    full = next(i for i, t in enumerate(text.layer_types) if t == "full_attention")
    out: dict[str, Any] = {}
    std = text.initializer_range
    for n in range(n_layers):
        block = m.Qwen3_5DecoderLayer(text, layer_idx=full)
        for k, v in block.state_dict().items():
            t = torch.empty_like(v)
            if v.ndim == 2:
                torch.nn.init.normal_(t, std=std)
            else:
                t.zero_()  # Qwen3.5's RMSNorms store (weight - 1): zeros are the identity
            out[f"mtp.layers.{n}.{k}"] = t
    fc = torch.empty(h, 2 * h)
    torch.nn.init.normal_(fc, std=std)
    out["mtp.fc.weight"] = fc
    for k in ("pre_fc_norm_embedding", "pre_fc_norm_hidden", "norm"):
        out[f"mtp.{k}.weight"] = torch.zeros(h)
    return out


def build_model(shape: ModelShape, tok) -> tuple[Any, dict[str, Any]]:
    """(the twin model in its real dtype, extra tensors to store: Qwen3.5's ``mtp.*``)."""
    import torch
    import transformers

    from .cpu import hide_fla

    hide_fla()
    cfg = twin_config(shape, tok)
    cls = getattr(transformers, shape.architecture)
    torch.manual_seed(SEED)
    model = cls(cfg)
    model.eval()
    head = model.get_output_embeddings()
    with torch.no_grad():
        torch.nn.init.normal_(head.weight, std=HEAD_STD)
    dtype = getattr(torch, (shape.twin or {}).get("dtype", "bfloat16"))
    model.to(dtype)
    extra: dict[str, Any] = {}
    n_mtp = int((shape.twin or {}).get("mtp_layers") or 0)
    if n_mtp:
        extra = {k: v.to(dtype) for k, v in _mtp_tensors(model, cfg, n_mtp).items()}
    return model, extra


def build_twin(model: str, out: str | Path | None = None, force: bool = False, log=None) -> Path:
    """Build (or reuse) the twin of ``model`` (a card id/alias) in ``out``.

    Args:
        model: base model id, e.g. ``Qwen/Qwen3.5-9B`` (or a ``configs/<dir>`` name).
        out: target folder (default ``models/twins/<slug>``).
        force: rebuild even when ``axpack-twin.json`` records the same inputs.

    Returns:
        The twin folder.

    Raises:
        AxpackError: no card / no twin section, vocabulary or template missing.
    """
    log = log or LOG.info
    shape = card_for(model)
    out = Path(out) if out else twins_root() / slug(shape.id)
    inputs = twin_inputs(shape)
    fp = fingerprint(inputs)
    stamp = out / TWIN_FILE
    if not force and stamp.is_file():
        try:
            if json.loads(stamp.read_text()).get("fingerprint") == fp:
                log(f"axpack: {out} is the current twin of {shape.id}; skipping (--force rebuilds)")
                return out
        except (OSError, ValueError):
            pass
    env.apply_to_process()
    from safetensors.torch import load_file, save_file

    tok = build_tokenizer(shape)
    model_obj, extra = build_model(shape, tok)
    tw = shape.twin or {}
    with atomic_dir(out) as tmp:
        model_obj.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        conf_path = tmp / "config.json"
        conf = json.loads(conf_path.read_text())
        if extra:
            st = tmp / "model.safetensors"
            tensors = load_file(str(st))
            tensors.update({k: v.contiguous() for k, v in extra.items()})
            save_file(tensors, str(st), metadata={"format": "pt"})
            conf.setdefault("text_config", {})["mtp_num_hidden_layers"] = int(tw.get("mtp_layers") or 0)
            conf["text_config"]["mtp_use_dedicated_embeddings"] = False
        eos_ids = [tok.convert_tokens_to_ids(t) for t in [tok.eos_token]] + list(
            (tw.get("tokenizer") or {}).get("eos_ids") or [])
        gen = {"bos_token_id": tok.bos_token_id, "eos_token_id": sorted(set(eos_ids)) if len(set(eos_ids)) > 1
               else eos_ids[0], "pad_token_id": tok.pad_token_id, "do_sample": False}
        atomic_write_json(tmp / "generation_config.json", {k: v for k, v in gen.items() if v is not None})
        atomic_write_json(conf_path, conf)
        proc = tw.get("processor") or {}
        if proc.get("image"):
            atomic_write_json(tmp / "preprocessor_config.json", proc["image"])
        if proc.get("video"):
            atomic_write_json(tmp / "video_preprocessor_config.json", proc["video"])
        params = sum(p.numel() for p in model_obj.parameters()) + sum(v.numel() for v in extra.values())
        atomic_write_json(tmp / TWIN_FILE, {"fingerprint": fp, "base_model": shape.id,
                                             "architecture": shape.architecture, "params": params,
                                             "inputs": inputs})
    log(f"axpack: twin of {shape.id} ({shape.architecture}, {params / 1e6:.1f}M params) -> {out}")
    return out


def ensure_twin(shape: ModelShape, log=None) -> Path:
    """The twin folder of ``shape`` under :func:`twins_root`, built if missing or stale."""
    return build_twin(shape.id, twins_root() / slug(shape.id), log=log)
