"""Tokens per example: a local tokenizer with its chat template, or the chars/4 heuristic.

With data, the mean tokens per example come from a tokenizer and its chat
template: ``--tokenizer DIR``, else a local copy of the base model's (the
``base_model`` folder, the Hugging Face cache, the embedded demo model:
:func:`find_tokenizer`, :class:`TokenCounter`), else from :func:`estimate_tokens`
(``chars / 4 + 4 per message``). ``axpack stats`` gives the full length histogram.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..cards import ModelShape

CHARS_PER_TOKEN = 4.0
TOKENS_PER_MESSAGE = 4


def estimate_tokens(record: Any, stage: str) -> float:
    """Heuristic tokens of one JSONL record: ``chars / 4 + 4 per message``.

    English BPE averages ~4 characters a token; the chat template adds a few
    tokens a turn. A DPO pair counts its prompt twice plus chosen and
    rejected (both sequences are run).
    """

    def walk(node: Any) -> tuple[int, int]:
        chars = msgs = 0
        if isinstance(node, str):
            return len(node), 0
        if isinstance(node, dict):
            if "role" in node or "from" in node:
                msgs += 1
            for key, value in node.items():
                if key in ("role", "from", "type", "id", "name"):
                    continue
                c, m = walk(value)
                chars, msgs = chars + c, msgs + m
        elif isinstance(node, list):
            for item in node:
                c, m = walk(item)
                chars, msgs = chars + c, msgs + m
        return chars, msgs

    def tokens(node: Any) -> float:
        chars, msgs = walk(node)
        return chars / CHARS_PER_TOKEN + TOKENS_PER_MESSAGE * max(msgs, 1)

    if stage == "dpo" and isinstance(record, dict) and "chosen" in record and "rejected" in record:
        prompt = record.get("prompt", record.get("conversations", record.get("messages", "")))
        return 2 * tokens(prompt) + tokens(record["chosen"]) + tokens(record["rejected"])
    return tokens(record)


def _chat_template(folder: Path) -> str | None:
    """The folder's chat template: ``chat_template.jinja``, else ``tokenizer_config.json``'s (the default one)."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    tc = folder / "tokenizer_config.json"
    if not tc.is_file():
        return None
    ct = json.loads(tc.read_text(encoding="utf-8")).get("chat_template")
    if isinstance(ct, list):
        ct = next((t.get("template") for t in ct if t.get("name") == "default"), None)
    return ct


class TokenCounter:
    """Counts tokens of chat records with a local tokenizer and its chat template.

    Uses the ``tokenizers`` library and a Jinja sandbox as transformers does
    (``trim_blocks``, ``lstrip_blocks``), without importing transformers. A
    record whose template fails to render falls back to the chars/4
    heuristic.

    Raises:
        ValueError: the folder has no chat template (and whatever
            ``tokenizers`` raises on an unreadable ``tokenizer.json``).
    """

    def __init__(self, folder: Path):
        import tokenizers
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        self.folder = folder
        self.tok = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
        template = _chat_template(folder)
        self.special = {}
        tc = folder / "tokenizer_config.json"
        if tc.is_file():
            conf = json.loads(tc.read_text(encoding="utf-8"))
            for key in ("bos_token", "eos_token"):
                v = conf.get(key)
                self.special[key] = v.get("content") if isinstance(v, dict) else (v or "")
        if not template:
            raise ValueError("no chat template")

        def raise_exception(msg: str) -> None:
            raise ValueError(msg)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=["jinja2.ext.loopcontrols"])
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: "26 Jul 2024"
        env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, ensure_ascii=False, indent=indent)
        self.template = env.from_string(template)

    def _messages(self, node: Any, role: str = "user") -> list[dict[str, str]]:
        if isinstance(node, str):
            return [{"role": role, "content": node}]
        out = []
        for m in node if isinstance(node, list) else [node]:
            if isinstance(m, dict):
                r = m.get("role") or {"human": "user", "gpt": "assistant"}.get(str(m.get("from")), str(m.get("from")))
                c = m.get("content", m.get("value", ""))
                out.append({"role": r or role, "content": c if isinstance(c, str) else json.dumps(c)})
        return out

    def _texts(self, record: Any, stage: str) -> list[str]:
        if not isinstance(record, dict):
            raise TypeError("not a mapping")
        if stage == "dpo" and "chosen" in record and "rejected" in record:
            prompt = self._messages(record.get("prompt", record.get("conversations", [])))
            return [self.template.render(messages=prompt + self._messages(record[k], "assistant"),
                                         add_generation_prompt=False, **self.special)
                    for k in ("chosen", "rejected")]
        msgs = record.get("messages", record.get("conversations"))
        if msgs is None:
            raise ValueError("no messages")
        return [self.template.render(messages=self._messages(msgs), add_generation_prompt=False, **self.special)]

    def mean_tokens(self, records: list[Any], stage: str) -> float:
        """Mean tokens per record (per pair for DPO: both rendered sequences) over ``records``."""
        texts: list[str] = []
        fallback = 0.0
        for rec in records:
            try:
                texts += self._texts(rec, stage)
            except Exception:  # noqa: BLE001 - any template failure: heuristic for this record
                fallback += estimate_tokens(rec, stage)
        encode = getattr(self.tok, "encode_batch_fast", self.tok.encode_batch)  # fast: no offsets
        counts = [len(e.ids) for e in encode(texts, add_special_tokens=False)] if texts else []
        return (sum(counts) + fallback) / max(1, len(records))


def find_tokenizer(cfg: dict[str, Any], shape: ModelShape | None) -> Path | None:
    """A local folder with ``tokenizer.json`` for this config, without network.

    Tries ``tokenizer_config``, ``base_model`` as a folder, the Hugging Face
    cache snapshot of ``base_model`` or the card id, and the embedded demo
    model for the SmolLM2 card. None when none is on disk.
    """
    import os

    from ..env import demo_model_dir

    cands: list[Path] = []
    for key in ("tokenizer_config", "base_model"):
        if cfg.get(key):
            cands.append(Path(str(cfg[key])))
    cache = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", Path.home() / ".cache" /
                                                                       "huggingface")) / "hub")
    ids = [str(cfg.get("base_model") or "")] + ([shape.id] + list(shape.aliases) if shape else [])
    for rid in ids:
        if "/" in rid and not Path(rid).exists():
            snaps = cache / f"models--{rid.replace('/', '--')}" / "snapshots"
            if snaps.is_dir():
                cands += sorted(snaps.iterdir())
    if shape is not None and shape.id.startswith("HuggingFaceTB/SmolLM2-135M"):
        cands.append(demo_model_dir())
    for c in cands:
        if (c / "tokenizer.json").is_file():
            return c
    return None
