"""Label audit and serving parity for a twin chain (``axpack twin --chain``).

Label audit (:func:`label_audit`): a fixed 3-turn conversation (system,
then user/assistant three times) goes through Axolotl's own prompt strategy
for the config's first dataset, with the twin's tokenizer and the config's
template settings (``chat_template``, ``chat_template_kwargs``,
``roles_to_train``, ``train_on_eos``). The labelled (trained) spans are
decoded and must be exactly each trained assistant turn's content followed by
its end-of-turn token — nothing from the system or user turns, nothing of the
template's scaffolding (role headers, an empty ``<think></think>`` block).
For a DPO config, Axolotl's DPO transform renders a fixed pair: the prompt
must end with the generation prompt the SFT template trains after, and
chosen/rejected must be the answer plus the end-of-turn token. The audit is
written as ``labels.md`` beside the run: the rendered prompt with the trained
spans marked ``⟦…⟧``.

Serving parity (:func:`serving_parity`): the chat template stored in the GGUF,
rendered for a 2-turn conversation with the generation prompt and the
template kwargs the shipped ``llama-server.sh`` passes, tokenized by
llama.cpp, must give the same ids as training put before the assistant's
answer.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from .errors import AxpackError
from .fsutil import atomic_write_text

SYSTEM = "You are a careful assistant for the audit."
TURNS = [("What is two plus two?", "Two plus two is four."),
         ("Name a primary colour.", "Red is a primary colour."),
         ("Say goodbye.", "Goodbye, and take care.")]
DPO_PROMPT = "Which planet is the largest?"
DPO_CHOSEN, DPO_REJECTED = "Jupiter is the largest planet.", "Mars is the largest planet."
MARK_OPEN, MARK_CLOSE = "⟦", "⟧"


def _axolotl_cfg(resolved: str | Path):
    from axolotl.utils.dict import DictDefault

    data = yaml.safe_load(Path(resolved).read_text())
    data.setdefault("tokenizer_config", data["base_model"])
    return DictDefault(data)


def _tokenizer(cfg):
    from axolotl.loaders import load_tokenizer

    return load_tokenizer(cfg)


def _conversation(with_system: bool, turns=TURNS) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": SYSTEM}] if with_system else []
    for u, a in turns:
        msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
    return msgs


def _spans(labels: list[int]) -> list[tuple[int, int]]:
    out, start = [], None
    for i, lab in enumerate(labels + [-100]):
        if lab != -100 and start is None:
            start = i
        elif lab == -100 and start is not None:
            out.append((start, i))
            start = None
    return out


def _eot_text(tok, cfg) -> list[str]:
    """End-of-turn token texts: the config's eot_tokens, else the tokenizer's EOS."""
    eot = cfg.get("eot_tokens") or []
    return [str(t) for t in eot] or [str(tok.eos_token)]


def sft_audit(cfg, tok) -> tuple[list[str], str]:
    """(failures, labels.md body) for an SFT config."""
    from axolotl.prompt_strategies.chat_template import load

    ds = dict(cfg["datasets"][0])
    strategy = load(tok, cfg, ds)
    trained = ds.get("roles_to_train") or ["assistant"]
    with_system = True
    msgs = _conversation(with_system)
    field = ds.get("field_messages", "messages")
    res = strategy.tokenize_prompt({field: msgs})
    ids, labels = list(res["input_ids"]), list(res["labels"])
    spans = _spans(labels)
    got = [tok.decode(ids[a:b]) for a, b in spans]
    eots = _eot_text(tok, cfg)
    want_content = [m["content"] for m in msgs if m["role"] in trained]
    fails = []
    if len(got) != len(want_content):
        fails.append(f"{len(got)} trained spans for {len(want_content)} trained turns: {got!r}")
    for g, c in zip(got, want_content):
        if not any(g == c + e for e in eots):
            fails.append(f"trained span {g!r} != {c!r} + end-of-turn {eots[0]!r}")
    body = _marked(tok, ids, spans)
    return fails, body


def _marked(tok, ids: list[int], spans: list[tuple[int, int]]) -> str:
    parts, pos = [], 0
    for a, b in spans:
        parts += [tok.decode(ids[pos:a]), MARK_OPEN + tok.decode(ids[a:b]) + MARK_CLOSE]
        pos = b
    parts.append(tok.decode(ids[pos:]))
    return "".join(parts)


def dpo_audit(cfg, tok) -> tuple[list[str], str]:
    """(failures, labels.md body) for a DPO config (Axolotl's DPO chat_template transform)."""
    import importlib

    ds = dict(cfg["datasets"][0])
    kind = str(ds.get("type", "chat_template.default"))
    mod, _, fn = kind.rpartition(".")
    transform = getattr(importlib.import_module(f"axolotl.prompt_strategies.dpo.{mod}"), fn)(cfg, 0)
    if isinstance(transform, tuple):  # (transform_fn, dataset map kwargs)
        transform = transform[0]
    sample = {ds.get("field_messages", "messages"): [{"role": "user", "content": DPO_PROMPT}],
              ds.get("field_chosen", "chosen"): [{"role": "assistant", "content": DPO_CHOSEN}],
              ds.get("field_rejected", "rejected"): [{"role": "assistant", "content": DPO_REJECTED}]}
    out = transform(sample, tokenizer=tok)
    kwargs = dict(cfg.get("chat_template_kwargs") or {})
    eots = _eot_text(tok, cfg)
    fails, notes = [], []
    for name, text in (("chosen", DPO_CHOSEN), ("rejected", DPO_REJECTED)):
        # the sequence DPO scores must be the one SFT trained and the server prompts:
        # the template with the config's kwargs over the whole exchange
        want = tok.apply_chat_template([{"role": "user", "content": DPO_PROMPT},
                                        {"role": "assistant", "content": text}], tokenize=False, **kwargs)
        if not want.startswith(out["prompt"] + out[name].rstrip("\n")):
            fails.append(f"prompt + {name} {(out['prompt'] + out[name])[-60:]!r} is not the template's rendering "
                         f"with {kwargs} {want[-60:]!r}")
        if not any(out[name].rstrip("\n").endswith(text + e) for e in eots):
            fails.append(f"{name} {out[name]!r} does not end with {text!r} + end-of-turn {eots[0]!r}")
    extra = [out[n].rstrip("\n")[: -len(t + e)] for n, t in (("chosen", DPO_CHOSEN), ("rejected", DPO_REJECTED))
             for e in eots[:1]]
    if any(extra):
        if extra[0] != extra[1]:
            fails.append(f"chosen and rejected carry different template text before the answer: {extra!r}")
        else:
            notes.append(f"Axolotl's DPO transform renders the prompt without chat_template_kwargs {kwargs}, so "
                         f"{extra[0]!r} moves from the prompt into both completions. The scored token sequence is "
                         "unchanged, and these tokens are identical in chosen and rejected at the same position, "
                         "so their log-probabilities cancel in the sigmoid DPO margin; a loss with an NLL term on "
                         "chosen (rpo_alpha) would train them.")
    body = (f"prompt:\n\n```\n{out['prompt']}\n```\n\nchosen (trained): `{MARK_OPEN}{out['chosen']}{MARK_CLOSE}`\n\n"
            f"rejected (trained): `{MARK_OPEN}{out['rejected']}{MARK_CLOSE}`\n"
            + "".join(f"\nNote: {n}\n" for n in notes))
    return fails, body


def label_audit(config: str | Path, resolved: str | Path, run_dir: Path) -> str:
    """Audit the labels of ``resolved`` (the YAML the twin trained); write ``run_dir/labels.md``.

    Returns:
        ``"ok"`` or ``"failed: <first failure>"``.
    """
    cfg = _axolotl_cfg(resolved)
    tok = _tokenizer(cfg)
    dpo = bool(cfg.get("rl"))
    fails, body = dpo_audit(cfg, tok) if dpo else sft_audit(cfg, tok)
    think = ""
    kwargs = cfg.get("chat_template_kwargs") or {}
    if "enable_thinking" in kwargs:
        think = (f"\n`chat_template_kwargs: {json.dumps(dict(kwargs))}`: the template's empty "
                 "`<think></think>` block (if rendered) must be outside the trained spans.\n")
    audited = ("DPO pair through Axolotl`s DPO transform" if dpo
               else "a 3-turn conversation through Axolotl`s chat_template strategy")
    head = (f"# Label audit: {config}\n\nTokenizer: `{cfg['base_model']}`; template `{cfg.get('chat_template')}`; "
            f"{audited}; "
            f"trained spans marked {MARK_OPEN}…{MARK_CLOSE}.\n{think}\n")
    if not dpo:
        body = f"```\n{body}\n```\n"
    result = "ok" if not fails else "failed: " + fails[0]
    atomic_write_text(run_dir / "labels.md", head + body + f"\nResult: {result}\n" +
                      "".join(f"- {f}\n" for f in fails))
    return result[:400]


def _server_kwargs(gguf_dir: Path) -> dict[str, Any]:
    """chat-template kwargs the shipped llama-server.sh passes.

    ``--chat-template-kwargs JSON``, and ``--reasoning on|off`` (``-rea``), which
    the pinned llama.cpp turns into ``enable_thinking`` true/false
    (common/arg.cpp; setting ``enable_thinking`` through the kwargs is deprecated there).
    """
    script = gguf_dir / "llama-server.sh"
    if not script.is_file():
        return {}
    text = script.read_text()
    m = re.search(r"--chat-template-kwargs\s+'([^']*)'", text)
    kwargs = json.loads(m.group(1)) if m else {}
    r = re.search(r"(?:--reasoning|-rea)\s+(on|off)\b", text)
    if r:
        kwargs["enable_thinking"] = r.group(1) == "on"
    return kwargs


def serving_parity(resolved: str | Path, merged: Path, gguf_dir: Path, name: str,
                   config: str | Path | None = None) -> str:
    """``ok`` or ``failed: ...``: does the GGUF's template, as served, prompt like training?

    Writes the serving files first (:func:`axpack.serving.write_serving_files`),
    as ``axpack export`` does: with ``config``'s ``# axpack: serve`` flags and its
    ``chat_template_kwargs``.
    """
    from gguf import GGUFReader
    from llama_cpp import Llama

    from .serving import read_directives, write_serving_files

    cfg = _axolotl_cfg(resolved)
    tok = _tokenizer(cfg)
    ggufs = sorted(gguf_dir.glob(f"{name}-*.gguf"))
    if not ggufs:
        raise AxpackError(f"{gguf_dir}: no {name}-*.gguf")
    quant = next((g for g in ggufs if not g.name.endswith("f16.gguf")), ggufs[0])
    flags = read_directives(config).serve if config else None
    write_serving_files(merged, gguf_dir, quant.name, flags=flags,
                        template_kwargs=dict(cfg.get("chat_template_kwargs") or {}) or None)
    field = GGUFReader(str(ggufs[0])).fields.get("tokenizer.chat_template")
    template = field.contents() if field is not None else None
    if not template:
        return "failed: the GGUF stores no tokenizer.chat_template"
    msgs = [{"role": "user", "content": TURNS[0][0]}, {"role": "assistant", "content": TURNS[0][1]},
            {"role": "user", "content": TURNS[1][0]}]
    served = tok.apply_chat_template(msgs, chat_template=template, tokenize=False, add_generation_prompt=True,
                                     **_server_kwargs(gguf_dir))
    # training: the ids before the second answer's first trained token
    if cfg.get("rl"):
        trained = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True,
                                          **dict(cfg.get("chat_template_kwargs") or {}))
        train_ids = tok.encode(trained, add_special_tokens=False)
    else:
        from axolotl.prompt_strategies.chat_template import load

        ds = dict(cfg["datasets"][0])
        strategy = load(tok, cfg, ds)
        full = msgs + [{"role": "assistant", "content": TURNS[1][1]}]
        res = strategy.tokenize_prompt({ds.get("field_messages", "messages"): full})
        spans = _spans(list(res["labels"]))
        if len(spans) < 2:
            return f"failed: training labels {len(spans)} spans for 2 answers"
        train_ids = list(res["input_ids"])[: spans[1][0]]
    llm = Llama(model_path=str(ggufs[0]), vocab_only=True, verbose=False)
    try:
        served_ids = llm.tokenize(served.encode(), add_bos=False, special=True)
    finally:
        llm.close()
    if served_ids == train_ids:
        return "ok"
    i = next((k for k, (a, b) in enumerate(zip(served_ids, train_ids)) if a != b), min(len(served_ids), len(train_ids)))
    return (f"failed: served prompt differs from training at token {i}: served {tok.decode(served_ids[i:i + 8])!r} "
            f"vs trained {tok.decode(train_ids[i:i + 8])!r} (llama-server.sh kwargs {_server_kwargs(gguf_dir)})")
