"""Model-shape cards: the few numbers of a base model that ``axpack plan`` needs.

Each ``*.yaml`` beside this file is copied from a model's published
``config.json`` (its ``source`` says where) so that ``plan`` and ``diff`` run
offline. A card gives layers, hidden size, MLP intermediate size, attention
heads, KV heads, head dim, vocabulary, tied embeddings, and, for a hybrid or
multimodal model, the extra structure (Gated DeltaNet layers, vision tower)
the formulas must account for.

:func:`resolve_shape` finds the shape for a config: a card named by
``base_model`` (id or alias), else the card whose ``pack_dirs`` holds the config's folder name (how a DPO
config on ``runs/<run>/sft-merged`` finds its base), else a local model
folder's ``config.json``, else ``None``.

:meth:`ModelShape.linear_modules` lists every ``nn.Linear`` of the text model
as ``(name, in_features, out_features, count)``; parameter counts, LoRA sizes
and FLOPs all derive from that one list, and :func:`tests.test_plan` checks
the resulting totals against each card's published parameter count.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..errors import AxpackError


@dataclass(frozen=True)
class LinearAttention:
    """Gated DeltaNet (linear-attention) layer sizes (Qwen3-Next / Qwen3.5)."""

    key_heads: int
    value_heads: int
    key_head_dim: int
    value_head_dim: int
    conv_kernel: int = 4

    @property
    def key_dim(self) -> int:
        return self.key_heads * self.key_head_dim

    @property
    def value_dim(self) -> int:
        return self.value_heads * self.value_head_dim

    @property
    def conv_dim(self) -> int:
        """Channels of ``in_proj_qkv`` and the depthwise conv: q, k and v."""
        return 2 * self.key_dim + self.value_dim


@dataclass(frozen=True)
class ModelShape:
    """The shape of a decoder-only (or hybrid) causal LM's text model.

    Sizes are counts (not bytes). ``full_attention_layers`` equals ``layers``
    for a dense model; a hybrid model's other layers are ``linear_attention``.
    """

    id: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied_embeddings: bool
    attention_bias: bool = False
    qk_norm: bool = False
    family: str = "dense"
    full_attention_layers: int | None = None
    attn_output_gate: bool = False
    linear_attention: LinearAttention | None = None
    vision: dict[str, Any] | None = None
    mtp_params: int = 0
    params_published: int | None = None
    architecture: str = ""
    max_position: int | None = None
    source: str = ""
    origin: str = ""  # how it was found: "card", "config.json", ...
    aliases: tuple[str, ...] = ()
    pack_dirs: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())
    # what `axpack twin` needs beyond the shape (model_type, dtype, rope, tokenizer, ...); see twin.py
    twin: dict[str, Any] | None = None

    # ---- derived sizes ----------------------------------------------------
    @property
    def n_full(self) -> int:
        return self.layers if self.full_attention_layers is None else self.full_attention_layers

    @property
    def n_linear(self) -> int:
        return self.layers - self.n_full

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def hybrid(self) -> bool:
        return self.n_linear > 0

    def linear_modules(self) -> list[tuple[str, int, int, int]]:
        """Every ``nn.Linear`` of the text model: ``(name, in, out, count)``.

        ``name`` is the module's last name component (what Axolotl's
        ``lora_target_linear`` and ``lora_target_modules`` match); ``count``
        is how many layers hold it. ``lm_head`` is excluded (Axolotl never
        puts LoRA on it, ``find_all_linear_names``).
        """
        h, i = self.hidden, self.intermediate
        q_out = self.q_dim * (2 if self.attn_output_gate else 1)
        mods = [
            ("q_proj", h, q_out, self.n_full),
            ("k_proj", h, self.kv_dim, self.n_full),
            ("v_proj", h, self.kv_dim, self.n_full),
            ("o_proj", self.q_dim, h, self.n_full),
        ]
        la = self.linear_attention
        if self.n_linear and la is not None:
            mods += [
                ("in_proj_qkv", h, la.conv_dim, self.n_linear),
                ("in_proj_z", h, la.value_dim, self.n_linear),
                ("in_proj_b", h, la.value_heads, self.n_linear),
                ("in_proj_a", h, la.value_heads, self.n_linear),
                ("out_proj", la.value_dim, h, self.n_linear),
            ]
        mods += [
            ("gate_proj", h, i, self.layers),
            ("up_proj", h, i, self.layers),
            ("down_proj", i, h, self.layers),
        ]
        return [m for m in mods if m[3] > 0]

    def linear_params(self) -> int:
        """Weights of all decoder ``nn.Linear`` layers (the ones 4-bit/8-bit quantizes)."""
        return sum(fin * fout * n for _, fin, fout, n in self.linear_modules())

    def embedding_params(self) -> int:
        """``embed_tokens`` (+ ``lm_head`` when untied): kept in 16-bit under QLoRA."""
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    def small_params(self) -> int:
        """Norms, biases, convs and gates: small, kept in 16/32-bit."""
        h = self.hidden
        n = self.layers * 2 * h + h  # two RMSNorms per layer + final norm
        if self.attention_bias:
            n += self.n_full * (self.q_dim + 2 * self.kv_dim)
        if self.qk_norm or self.family == "qwen3_5_hybrid":
            n += self.n_full * 2 * self.head_dim  # q_norm, k_norm
        la = self.linear_attention
        if self.n_linear and la is not None:
            per = la.conv_dim * la.conv_kernel + 2 * la.value_heads + la.value_head_dim
            n += self.n_linear * per  # conv1d, dt_bias + A_log, gated RMSNorm
        return n

    def text_params(self) -> int:
        """All parameters the causal-LM (text-only) model loads."""
        return self.linear_params() + self.embedding_params() + self.small_params()

    def vision_params(self) -> int:
        return int((self.vision or {}).get("params", 0))

    def compute_params(self) -> int:
        """Parameters touched by a token's matmuls: decoder linears + the LM head.

        The embedding lookup costs no FLOPs; the LM head matmul does even when
        tied. Used as N in the 2N FLOPs-per-token forward rule (Kaplan et al.
        2020, arXiv:2001.08361, §2.1).
        """
        return self.linear_params() + self.vocab * self.hidden


_CARD_KEYS = {
    "id", "aliases", "pack_dirs", "architecture", "family", "layers", "full_attention_layers",
    "hidden", "intermediate", "heads", "kv_heads", "head_dim", "vocab", "tied_embeddings",
    "attention_bias", "qk_norm", "attn_output_gate", "max_position", "linear_attention", "vision",
    "mtp_params", "params_published", "source", "notes", "twin",
}


def _shape_from_card(data: dict[str, Any], where: str) -> ModelShape:
    unknown = set(data) - _CARD_KEYS
    if unknown:
        raise AxpackError(f"{where}: unknown card keys {sorted(unknown)}; see axpack/cards/__init__.py")
    la = data.get("linear_attention")
    try:
        return ModelShape(
            id=str(data["id"]),
            layers=int(data["layers"]),
            hidden=int(data["hidden"]),
            intermediate=int(data["intermediate"]),
            heads=int(data["heads"]),
            kv_heads=int(data["kv_heads"]),
            head_dim=int(data.get("head_dim") or int(data["hidden"]) // int(data["heads"])),
            vocab=int(data["vocab"]),
            tied_embeddings=bool(data["tied_embeddings"]),
            attention_bias=bool(data.get("attention_bias", False)),
            qk_norm=bool(data.get("qk_norm", False)),
            family=str(data.get("family", "dense")),
            full_attention_layers=data.get("full_attention_layers"),
            attn_output_gate=bool(data.get("attn_output_gate", False)),
            linear_attention=LinearAttention(**la) if la else None,
            vision=data.get("vision"),
            mtp_params=int(data.get("mtp_params", 0)),
            params_published=data.get("params_published"),
            architecture=str(data.get("architecture", "")),
            max_position=data.get("max_position"),
            source=" ".join(str(data.get("source", "")).split()),
            origin=f"card {where}",
            aliases=tuple(data.get("aliases") or ()),
            pack_dirs=tuple(data.get("pack_dirs") or ()),
            notes=tuple(data.get("notes") or ()),
            twin=data.get("twin"),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise AxpackError(f"{where}: bad model card ({err}); every card needs layers, hidden, ...") from None


@lru_cache(maxsize=1)
def load_cards() -> dict[str, ModelShape]:
    """All shipped cards, keyed by lower-cased id (read once per process)."""
    out: dict[str, ModelShape] = {}
    for entry in sorted(resources.files(__package__).iterdir(), key=lambda p: p.name):
        if entry.name.endswith((".yaml", ".yml")):
            data = yaml.safe_load(entry.read_text(encoding="utf-8"))
            shape = _shape_from_card(data, f"axpack/cards/{entry.name}")
            out[shape.id.lower()] = shape
    return out


def card_for_id(model_id: str) -> ModelShape | None:
    """The card whose id or alias equals ``model_id`` (case-insensitive)."""
    key = model_id.strip().rstrip("/").lower()
    cards = load_cards()
    if key in cards:
        return cards[key]
    for shape in cards.values():
        if key in (a.lower() for a in shape.aliases):
            return shape
    return None


def card_for_pack_dir(name: str) -> ModelShape | None:
    """The card listing ``name`` (a ``configs/<name>/`` folder) in ``pack_dirs``."""
    for shape in load_cards().values():
        if name.lower() in (d.lower() for d in shape.pack_dirs):
            return shape
    return None


def shape_from_hf_config(cfg: dict[str, Any], model_id: str, origin: str) -> ModelShape:
    """Build a shape from a Hugging Face ``config.json`` dict.

    Handles plain decoders (llama, qwen2, mistral, ...) and Qwen3.5's nested
    ``text_config`` with ``layer_types``.

    Raises:
        AxpackError: a required key (``num_hidden_layers`` ...) is missing.
    """
    text = cfg.get("text_config") or cfg
    try:
        layers = int(text["num_hidden_layers"])
        hidden = int(text["hidden_size"])
        heads = int(text["num_attention_heads"])
        layer_types = text.get("layer_types")
        la = None
        n_full = None
        if layer_types:
            n_full = sum(1 for t in layer_types if t == "full_attention")
            if n_full < layers:
                la = LinearAttention(
                    key_heads=int(text["linear_num_key_heads"]),
                    value_heads=int(text["linear_num_value_heads"]),
                    key_head_dim=int(text["linear_key_head_dim"]),
                    value_head_dim=int(text["linear_value_head_dim"]),
                    conv_kernel=int(text.get("linear_conv_kernel_dim", 4)),
                )
        vis = cfg.get("vision_config")
        return ModelShape(
            id=model_id,
            layers=layers,
            hidden=hidden,
            intermediate=int(text["intermediate_size"]),
            heads=heads,
            kv_heads=int(text.get("num_key_value_heads") or heads),
            head_dim=int(text.get("head_dim") or hidden // heads),
            vocab=int(text["vocab_size"]),
            tied_embeddings=bool(cfg.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
            attention_bias=bool(text.get("attention_bias", text.get("model_type") == "qwen2")),
            qk_norm=str(text.get("model_type", "")).startswith("qwen3"),
            family="qwen3_5_hybrid" if la is not None else "dense",
            full_attention_layers=n_full,
            attn_output_gate=bool(text.get("attn_output_gate", False)),
            linear_attention=la,
            vision={"layers": vis.get("depth"), "hidden": vis.get("hidden_size")} if vis else None,
            architecture=",".join(cfg.get("architectures") or []),
            max_position=text.get("max_position_embeddings"),
            source=origin,
            origin=origin,
        )
    except (KeyError, TypeError, ValueError) as err:
        raise AxpackError(f"{origin}: not a decoder config.json (missing {err}); pass --card ID") from None


def resolve_shape(cfg: dict[str, Any], config_path: str | Path | None = None,
                  card: str | None = None) -> ModelShape | None:
    """Find the model shape for an Axolotl config; ``None`` when unknown.

    Order: ``card`` (an id, alias or ``configs/`` folder name) if given; a
    card matching ``base_model``; a card whose ``pack_dirs`` holds the
    config's folder (so ``runs/<run>/sft-merged`` bases and a fresh clone
    without ``models/`` give the same answer); ``base_model`` as a local
    folder with a ``config.json``.

    Raises:
        AxpackError: ``card`` names no shipped card.
    """
    if card:
        shape = card_for_id(card) or card_for_pack_dir(card)
        if shape is None:
            known = ", ".join(sorted(s.id for s in load_cards().values()))
            raise AxpackError(f"--card {card}: no such model card; known: {known}")
        return shape
    base = str(cfg.get("base_model") or "")
    if base:
        shape = card_for_id(base)
        if shape is not None:
            return shape
    if config_path is not None:
        shape = card_for_pack_dir(Path(config_path).resolve().parent.name)
        if shape is not None:
            return shape
    if base:
        local = Path(base) / "config.json"
        if local.is_file():
            try:
                data = json.loads(local.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                data = None
            if isinstance(data, dict):
                return shape_from_hf_config(data, base, f"{local}")
    return None
