"""Which keys of a raw record prep honours, rejects or ignores: the one list.

Prep never changes what a record means. Every key of a record (top level)
and of each of its turns (per message) is one of:

- **shape** keys, read by the record's format (:data:`SHAPE_KEYS`,
  :data:`TURN_SHAPE_KEYS`): ``messages``, ``role``/``content``, ...;
- **honoured** keys, which change what the record teaches and are kept in
  the output (:data:`HONOURED_TOP`, :data:`HONOURED_TURN`): the desirability
  ``label`` (``--labels``), per-turn ``loss_weight``/``weight``/``train``
  (Axolotl's per-turn ``train`` flag);
- **meaningful but not kept** (:data:`MEANINGFUL_TOP`, :data:`MEANINGFUL_TURN`):
  images/audio/video, tool definitions and tool calls, reasoning text. A
  record holding one (non-empty) is a reject whose reason names the key and
  what would train it, never a silent drop;
- **inert** (:data:`INERT_TOP`, :data:`INERT_TURN`, plus ``--ignore-key``):
  ids, sources, metadata. Ignored, and counted in summary.json
  ``ignored_keys`` (``{"id": 120, "messages[].name": 8}``: records or turns
  that had the key, among those written);
- anything else is an ``unknown-key`` reject naming the key and
  ``--ignore-key KEY`` (prep cannot know what an unknown key means, so it
  neither drops nor keeps it silently).

A key that is empty (null, "", [] or {}) means nothing and is ignored
whatever it is, except shape keys, which the format checks itself.
"""

from __future__ import annotations

from typing import Any

# Keys each --format reads at the top level (formats.py).
SHAPE_KEYS: dict[str, frozenset[str]] = {
    "messages": frozenset({"messages", "system"}),
    "sharegpt": frozenset({"conversations", "system"}),
    "alpaca": frozenset({"instruction", "input", "output", "system", "history"}),
    "dpo": frozenset({"prompt", "question", "chosen", "rejected", "system"}),
    "dpo-messages": frozenset({"chosen_messages", "rejected_messages", "system"}),
    "sharegpt-dpo": frozenset({"conversations", "chosen", "rejected", "system"}),
    "alpaca-dpo": frozenset(
        {"instruction", "input", "chosen", "rejected", "system", "history"}
    ),
    "prompt-completion": frozenset({"prompt", "completion", "system"}),
}
# Keys each turn may hold: OpenAI/Axolotl or ShareGPT spelling.
TURN_SHAPE_KEYS = frozenset({"role", "content", "from", "value"})

# Honoured: read by prep and kept in what it writes.
HONOURED_TOP = {
    "label": "desirability label (KTO): --labels kto writes kto.jsonl, --labels keep-true keeps label: true as SFT",
}
# per-turn training weight -> Axolotl's per-turn "train" flag (0/1 or bool only)
TRAIN_KEYS = ("loss_weight", "weight", "train")
HONOURED_TURN = {
    k: "per-turn training flag: 0/false = not trained, 1/true = trained (Axolotl message_field_training: train)"
    for k in TRAIN_KEYS
}

MEDIA_WHY = (
    "prep writes text-only examples and never drops media silently: train this data with an "
    "Axolotl multimodal config (a processor, type: chat_template with images)"
)
_MEDIA = MEDIA_WHY + ", or remove the key from records whose text stands alone"
_TOOLS = (
    "prep writes text turns only; train tool use with Axolotl's chat_template "
    "(tools + tool_calls, a template that renders them, e.g. Qwen2.5/Llama-3.2, not SmolLM2's) "
    "on the raw file, or remove the tool turns and the key"
)
_REASONING = (
    "prep writes content only, so the reasoning would be dropped: train with Axolotl's "
    "chat_template directly (it reads reasoning_content), or move it into content"
)
# Meaningful, not kept: a record with one of these (non-empty) is rejected.
MEANINGFUL_TOP: dict[str, tuple[str, str]] = {
    **{
        k: ("media", _MEDIA)
        for k in ("images", "image", "videos", "video", "audios", "audio")
    },
    **{k: ("tools", _TOOLS) for k in ("tools", "functions")},
}
MEANINGFUL_TURN: dict[str, tuple[str, str]] = {
    **{
        k: ("tool-calls", _TOOLS)
        for k in ("tool_calls", "function_call", "tool_call_id")
    },
    **{
        k: ("reasoning", _REASONING)
        for k in ("reasoning_content", "reasoning", "thinking")
    },
    **{k: ("media", _MEDIA) for k in ("images", "image", "audio", "video")},
}

# Inert: known not to change what a record teaches (Axolotl never reads them
# for the pack's templates). Ignored and counted.
INERT_TOP = frozenset(
    {
        "id",
        "_id",
        "idx",
        "uuid",
        "prompt_id",
        "conversation_id",
        "source",
        "sources",
        "dataset",
        "data_source",
        "origin",
        "category",
        "categories",
        "task",
        "task_type",
        "tags",
        "topic",
        "lang",
        "language",
        "license",
        "url",
        "meta",
        "metadata",
        "model",
        "models",
        "created_at",
        "timestamp",
        "split",
        "score",
        "score_chosen",
        "score_rejected",
        "rating",
        "quality",
        "num_turns",
        "length",
        "hash",
    }
)
# ``name`` is OpenAI's participant name: the pack's templates do not render
# it, so Axolotl would not train it either.
INERT_TURN = frozenset(
    {"id", "name", "timestamp", "created_at", "meta", "metadata", "index"}
)

# --format names whose records may carry a label
LABEL_POLICIES = ("reject", "kto", "keep-true")


def empty(value: Any) -> bool:
    """A key whose value says nothing (null, "", [] or {})."""
    return value is None or value == "" or value == [] or value == {}


def refusable(key: str) -> str | None:
    """Why ``--ignore-key KEY`` may not declare ``key`` inert (None: it may)."""
    if key in TURN_SHAPE_KEYS or any(key in keys for keys in SHAPE_KEYS.values()):
        return f"{key!r} is a key prep reads as part of a record's shape"
    if key in HONOURED_TOP or key in HONOURED_TURN:
        why = HONOURED_TOP.get(key) or HONOURED_TURN[key]
        return f"{key!r} changes what a record teaches ({why})"
    if key in MEANINGFUL_TOP or key in MEANINGFUL_TURN:
        return f"{key!r} changes what a record teaches; prep rejects records with it rather than drop it"
    return None


def table() -> list[tuple[str, str, str]]:
    """(key, where, what prep does) for every listed key: the documentation
    table (README "What prep reads") is this list."""
    rows = [(k, "top", f"honoured: {v}") for k, v in HONOURED_TOP.items()]
    rows += [(k, "turn", f"honoured: {v}") for k, v in HONOURED_TURN.items()]
    rows += [(k, "top", f"reject ({c})") for k, (c, _) in MEANINGFUL_TOP.items()]
    rows += [(k, "turn", f"reject ({c})") for k, (c, _) in MEANINGFUL_TURN.items()]
    rows += [(k, "top", "ignored, counted") for k in sorted(INERT_TOP)]
    rows += [(k, "turn", "ignored, counted") for k in sorted(INERT_TURN)]
    return rows
