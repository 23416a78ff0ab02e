"""Raw chat record shapes -> one normalized SFT or DPO example.

Every raw record (one JSON object) becomes either

- SFT: ``{"messages": [{"role": R, "content": TEXT}, ...]}`` with R in
  system/user/assistant (and ``tool`` when tool roles are mapped), the shape
  Axolotl's ``type: chat_template`` reads with ``field_messages: messages``;
- DPO: ``{"prompt": [turns], "chosen": [assistant turn], "rejected":
  [assistant turn]}``, the shape Axolotl's ``type: chat_template.default``
  reads with ``field_messages: prompt``, ``field_chosen``, ``field_rejected``;

or raises :class:`Reject` with a short code and a reason. Shapes understood
(``--format`` names in brackets; ``auto`` picks per record):

- [messages] OpenAI / Axolotl ``{"messages": [{"role", "content"}]}``, content
  a string or a list of text parts (``[{"type": "text", "text": ...}]``).
- [sharegpt] ``{"conversations": [{"from", "value"}]}`` with from in
  human/gpt/system (user/assistant accepted too); the tool roles
  ``function_call`` and ``observation`` are rejected with a reason, or mapped
  to assistant/tool with ``tool_roles="map"``; an optional top-level
  ``system`` string becomes the first turn (LLaMA-Factory's layout).
- [alpaca] ``{"instruction", "input", "output"}`` with optional ``system`` and
  ``history`` (``[[query, response], ...]``); instruction and input are joined
  with one newline, as LLaMA-Factory's Alpaca converter does.
- [dpo] ``{"prompt", "chosen", "rejected"}``, each a string, one message, or a
  message list (``question`` is accepted for ``prompt``; a chosen/rejected
  list that repeats the prompt first has the repeat removed); an optional
  top-level ``system`` becomes the prompt's first turn, as for ShareGPT.
- [sharegpt-dpo] ShareGPT ranking, LLaMA-Factory's ``dpo_en_demo.json``:
  ``{"conversations": [...], "chosen": {"from","value"}, "rejected": {...}}``.
- [alpaca-dpo] ``{"instruction", "input", "chosen", "rejected"}``.
- [dpo-messages] two whole conversations, ``{"chosen_messages": [turns],
  "rejected_messages": [turns]}`` (or ``chosen``/``rejected`` as whole
  conversations with no ``prompt``): the shared turns become the prompt,
  the final assistant turns chosen/rejected; conversations that differ
  before their final assistant turn are a reject naming the first
  differing turn.
- [prompt-completion] TRL's ``{"prompt", "completion"}`` (strings or turn
  lists; with ``label`` its unpaired-preference / KTO layout).

Content may be a string or a list of text parts, the text under ``text``
(OpenAI) or ``value``. Every other key, top level or per turn, is decided by
:mod:`axpack.record_keys` (honoured, rejected with a reason, or ignored and
counted); a desirability ``label`` by ``labels`` (:class:`Opts`): rejected
by default, ``kto`` -> ``{"completion": [turns], "label": bool}`` (Axolotl
``rl: kto``, ``type: chatml.argilla_chat``), ``keep-true`` -> SFT for
``label: true`` only. A per-turn ``loss_weight``/``weight``/``train`` of
0/1 becomes the turn's ``"train"`` flag where it differs from Axolotl's
default (assistant turns trained, others not); configs read it with
``message_field_training: train``.

Role checks live in :mod:`axpack.cleaning`; this module only maps shapes.
:class:`Reject` is defined in :mod:`axpack.records` (the reader raises it too).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from . import record_keys as rk
from .records import Reject

SFT = "sft"
DPO = "dpo"
KTO = "kto"

FORMATS = (
    "auto",
    "messages",
    "sharegpt",
    "alpaca",
    "dpo",
    "sharegpt-dpo",
    "alpaca-dpo",
    "dpo-messages",
    "prompt-completion",
)

# ShareGPT / OpenAI speaker names -> chat-template role.
ROLE_ALIASES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "model": "assistant",
}
# ShareGPT tool roles (LLaMA-Factory): mapped only on request.
TOOL_ROLES = {
    "function_call": "assistant",
    "observation": "tool",
    "tool": "tool",
    "function": "tool",
}


_JSON_TYPES = {
    dict: "object",
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


def _js(value: Any) -> str:
    """A decoded value as JSON text (at most 40 characters) for a reason."""
    text = json.dumps(value, ensure_ascii=False)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: rejects.jsonl must stay UTF-8
            text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def jtype(value: Any) -> str:
    """The JSON name of a decoded value's type, for reasons users can act on:
    ``object``, ``array``, ``string``, ``number``, ``boolean``, ``null`` (a
    non-JSON type: its Python name)."""
    return _JSON_TYPES.get(type(value), type(value).__name__)


@dataclass(slots=True)
class Opts:
    """How records are read (prep's options that change conversion).

    Attributes:
        tool_roles: ``"reject"`` or ``"map"`` ShareGPT function_call/observation.
        labels: ``"reject"``, ``"kto"`` or ``"keep-true"`` (records with ``label``).
        ignore: extra keys declared inert (``--ignore-key``).
        ignored: filled per record: the inert keys it held (``"id"``,
            ``"messages[].name"``), for summary.json ``ignored_keys``.
    """

    tool_roles: str = "reject"
    labels: str = "reject"
    ignore: frozenset[str] = frozenset()
    ignored: list[str] = field(default_factory=list)
    flagged: bool = False  # a turn of the current record got a "train" flag


# content part types that carry media: never read as text, never dropped
MEDIA_PARTS = frozenset(
    {
        "image",
        "image_url",
        "input_image",
        "audio",
        "input_audio",
        "audio_url",
        "video",
        "video_url",
        "file",
        "input_file",
    }
)


def _part_text(part: Any, i: int, where: str) -> str:
    """One content part -> its text: a string, or a text part with the text
    under ``text`` (OpenAI) or ``value``."""
    if type(part) is str:
        return part
    if not isinstance(part, dict):
        raise Reject(
            "content-type",
            f"{where}: content part {i} is {jtype(part)}, expected a text part or a string",
        )
    kind = part.get("type", "text")
    if kind in MEDIA_PARTS:
        raise Reject(
            "media",
            f"{where}: content part {i} is {kind!r}: {rk.MEDIA_WHY}, or remove the part "
            "if the text stands alone",
        )
    if kind != "text":
        raise Reject(
            "content-type",
            f"{where}: content part {i} has type {kind!r}; only 'text' parts are read "
            "(text under 'text' or 'value')",
        )
    extra = sorted(k for k in part if k not in ("type", "text", "value"))
    if extra:
        raise Reject(
            "content-type",
            f"{where}: content part {i} has key {extra[0]!r}; prep writes one text per turn, "
            "so per-part keys (e.g. a per-part weight) cannot be kept: use a per-message "
            "loss_weight, or train the raw file with Axolotl's chat_template",
        )
    text = part.get("text", part.get("value"))
    if "text" in part and "value" in part and part["text"] != part["value"]:
        raise Reject(
            "content-type",
            f"{where}: content part {i} has both 'text' and 'value', and they differ",
        )
    if type(text) is not str:
        got = "neither 'text' nor 'value'" if text is None else f"a {jtype(text)} text"
        raise Reject(
            "content-type",
            f"{where}: content part {i} is a text part with {got}; expected a string",
        )
    return text


def _text(value: Any, where: str) -> str:
    """Content -> str. A list of text parts is joined with no separator
    (OpenAI's multi-part content; a part's text under ``text`` or ``value``);
    media parts and anything else non-string are a reject."""
    if type(value) is str:
        return value
    if isinstance(value, list):
        return "".join([_part_text(part, i, where) for i, part in enumerate(value)])
    if value is None:
        raise Reject("empty-content", f"{where}: content is missing or null")
    raise Reject(
        "content-type",
        f"{where}: content is {jtype(value)}, expected a string or text parts",
    )


def _role(name: Any, where: str, tool_roles: str) -> str:
    if type(name) is not str:
        raise Reject("bad-role", f"{where}: role is {jtype(name)}, expected a string")
    key = name.strip().lower()
    role = ROLE_ALIASES.get(key)
    if role is not None:
        return role
    if key in TOOL_ROLES:
        if tool_roles == "map":
            return TOOL_ROLES[key]
        raise Reject(
            "tool-role",
            f"{where}: tool role {name!r} is not trained by default; pass --tool-roles map to keep it",
        )
    raise Reject(
        "bad-role",
        f"{where}: unknown role {name!r} (expected system/user/assistant or human/gpt)",
    )


def _train_flag(key: str, value: Any, where: str) -> bool:
    """A per-turn training weight -> bool (0/false: not trained, 1/true: trained)."""
    if type(value) is bool:
        return value
    if type(value) in (int, float) and value in (0, 1):
        return bool(value)
    raise Reject(
        "loss-weight",
        f"{where}: {key} is {_js(value)}; only 0 (not trained) or 1 (trained) map to Axolotl's "
        "per-turn train flag, other weights have no equivalent: set it to 0 or 1, or drop the record",
    )


def _turn_extras(
    turn: dict, role_key: str, text_key: str, field: str, where: str, opts: Opts
) -> bool | None:
    """Keys of one turn beyond role and text (see :mod:`axpack.record_keys`):
    returns its training flag (None: none given), raises Reject for a key
    that means something prep cannot keep or an unknown key, and notes the
    inert ones in ``opts.ignored``."""
    flag: bool | None = None
    said = ""
    for key, value in turn.items():
        if key in (role_key, text_key):
            continue
        if key in rk.TRAIN_KEYS:
            got = _train_flag(key, value, where)
            if flag is not None and got != flag:
                raise Reject(
                    "loss-weight",
                    f"{where}: {said} and {key} {_js(value)} disagree on whether the turn is trained; keep one",
                )
            flag, said = got, f"{key} {_js(value)}"
        elif key in rk.TURN_SHAPE_KEYS:
            raise Reject(
                "bad-shape",
                f"{where} has both {role_key!r} and {key!r}; use one convention",
            )
        elif key in rk.MEANINGFUL_TURN and not rk.empty(value):
            code, fix = rk.MEANINGFUL_TURN[key]
            raise Reject(code, f"{where} has {key!r}: {fix}")
        elif key in rk.INERT_TURN or key in opts.ignore or rk.empty(value):
            opts.ignored.append(f"{field}[].{key}")
        else:
            raise Reject(
                "unknown-key",
                f"{where} has key {key!r}, which prep does not know, so it cannot tell whether it "
                f"changes what the turn teaches; if it does not, pass --ignore-key {key}",
            )
    return flag


def _turns(
    seq: Any, field: str, role_key: str, text_key: str, opts: Opts
) -> list[dict[str, Any]]:
    """A list of turn dicts -> [{"role", "content"[, "train"]}]; ``train``
    only where a per-turn weight differs from the role's default
    (assistant trained, others not)."""
    if not isinstance(seq, list):
        raise Reject("bad-shape", f"{field} is {jtype(seq)}, expected a list of turns")
    out = []
    for i, turn in enumerate(seq):
        where = f"{field}[{i}]"
        if not isinstance(turn, dict):
            raise Reject("bad-shape", f"{where} is {jtype(turn)}, expected an object")
        if role_key not in turn:
            # accept the other convention in the same record
            alt = ("role", "content") if role_key == "from" else ("from", "value")
            if alt[0] in turn:
                role_key, text_key = alt
            else:
                raise Reject("bad-shape", f"{where} has no {role_key!r}")
        flag = None
        if len(turn) > 2 or text_key not in turn:
            flag = _turn_extras(turn, role_key, text_key, field, where, opts)
        role = _role(turn[role_key], where, opts.tool_roles)
        t = {"role": role, "content": _text(turn.get(text_key), where)}
        if flag is not None and flag != (role == "assistant"):
            t["train"] = flag
            opts.flagged = True
        out.append(t)
    return out


def _one_turn(value: Any, field: str, opts: Opts) -> dict[str, str]:
    """A chosen/rejected answer given as {"from","value"} or {"role","content"}."""
    if isinstance(value, dict):
        return _turns(
            [value],
            field,
            "role" if "role" in value else "from",
            "content" if "role" in value else "value",
            opts,
        )[0]
    return {"role": "assistant", "content": _text(value, field)}


def _prompt(value: Any, opts: Opts) -> list[dict[str, str]]:
    if type(value) is str:
        return [{"role": "user", "content": value}]
    if isinstance(value, dict):
        return [_one_turn(value, "prompt", opts)]
    if isinstance(value, list):
        if value and all(type(v) is str for v in value):
            return [{"role": "user", "content": "".join(value)}]
        return _turns(value, "prompt", "role", "content", opts)
    raise Reject(
        "bad-shape",
        f"prompt is {jtype(value)}, expected a string or a list of turns",
    )


def _answer(
    value: Any, field: str, prompt: list[dict[str, str]], opts: Opts
) -> list[dict[str, str]]:
    """chosen/rejected -> exactly one turn (role checks come later)."""
    if isinstance(value, list) and not (value and all(type(v) is str for v in value)):
        turns = _turns(value, field, "role", "content", opts)
        # TRL's "implicit prompt" layout: chosen = prompt + answer
        if len(turns) > len(prompt) and turns[: len(prompt)] == prompt:
            turns = turns[len(prompt) :]
        if len(turns) != 1:
            raise Reject(
                "bad-shape",
                f"{field} has {len(turns)} turns after the prompt; expected one assistant turn",
            )
        return turns
    return [_one_turn(value, field, opts)]


def _alpaca_user(rec: dict[str, Any]) -> str:
    instruction = _text(rec.get("instruction"), "instruction")
    extra = rec.get("input")
    if extra is None or extra == "":
        return instruction
    return instruction + "\n" + _text(extra, "input")


def _alpaca_head(rec: dict[str, Any]) -> list[dict[str, str]]:
    turns = []
    system = rec.get("system")
    if system is not None and system != "":
        turns.append({"role": "system", "content": _text(system, "system")})
    history = rec.get("history")
    if history:
        if not isinstance(history, list):
            raise Reject(
                "bad-shape",
                f"history is {jtype(history)}, expected [[query, response], ...]",
            )
        for i, pair in enumerate(history):
            if not (isinstance(pair, list) and len(pair) == 2):
                raise Reject(
                    "bad-shape", f"history[{i}] is not a [query, response] pair"
                )
            turns.append(
                {"role": "user", "content": _text(pair[0], f"history[{i}][0]")}
            )
            turns.append(
                {"role": "assistant", "content": _text(pair[1], f"history[{i}][1]")}
            )
    return turns


def _with_system(turns: list[dict[str, str]], system: Any) -> list[dict[str, str]]:
    """Put a top-level ``system`` value first, unless ``turns`` (possibly
    empty) already start with a system turn. A non-text system value is a
    reject, never silently ignored."""
    if (
        system is not None
        and system != ""
        and not (turns and turns[0]["role"] == "system")
    ):
        turns.insert(0, {"role": "system", "content": _text(system, "system")})
    return turns


def _sharegpt_head(rec: dict[str, Any], opts: Opts) -> list[dict[str, str]]:
    turns = _turns(rec["conversations"], "conversations", "from", "value", opts)
    return _with_system(turns, rec.get("system"))


def _norm_turn(t: dict[str, Any]) -> tuple:
    """A turn as compared when splitting a conversation pair (line ends and
    outer whitespace do not count, as prep's cleaning drops them)."""
    return t["role"], t["content"].replace("\r\n", "\n").strip(), t.get("train")


def _split_pair(
    chosen: Any, rejected: Any, cf: str, rf: str, opts: Opts
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Two whole conversations -> (shared prompt, [chosen answer], [rejected
    answer]). They must be equal up to their final turn.

    Raises:
        Reject: ``pair-diverges`` naming the first differing turn.
    """
    c = _turns(chosen, cf, "role", "content", opts)
    r = _turns(rejected, rf, "role", "content", opts)
    i = 0
    while i < len(c) and i < len(r) and _norm_turn(c[i]) == _norm_turn(r[i]):
        i += 1
    if i == len(c) - 1 == len(r) - 1:
        return c[:-1], c[-1:], r[-1:]
    if i == len(c) == len(r):
        return c[:-1], c[-1:], r[-1:]  # identical: chosen-equals-rejected later
    fix = "a DPO pair shares every turn before its final answer: cut both conversations at the first difference"
    if i >= len(c) or i >= len(r):
        longer, lf, n_short, sf = (
            (c, cf, len(r), rf) if i < len(c) else (r, rf, len(c), cf)
        )
        raise Reject(
            "pair-diverges",
            f"{lf}[{i}] ({longer[i]['role']}) has no counterpart: {sf} ends after {n_short} turns; {fix}",
        )
    roles = (
        c[i]["role"]
        if c[i]["role"] == r[i]["role"]
        else f"{c[i]['role']} vs {r[i]['role']}"
    )
    raise Reject(
        "pair-diverges",
        f"{cf}[{i}] and {rf}[{i}] ({roles}) differ, and turn {i} is not the final answer of both; {fix}",
    )


def _fix_flags(turns: list[dict[str, Any]], field: str, trained: bool) -> None:
    """Preference data trains only the answers: drop train flags that agree
    (``trained`` for answers, not for prompt turns); a flag that disagrees
    is a reject."""
    for i, t in enumerate(turns):
        flag = t.pop("train", None)
        if flag is not None and flag != trained:
            state = "trained" if flag else "not trained"
            raise Reject(
                "loss-weight",
                f"{field}[{i}] is marked {state}, but preference training "
                f"{'trains' if trained else 'never trains'} {'the answers' if trained else 'prompt turns'}: "
                "remove the weight",
            )


def detect(rec: dict[str, Any]) -> str:
    """The format name of one record (see :data:`FORMATS`), or raise Reject."""
    if "chosen_messages" in rec or "rejected_messages" in rec:
        return "dpo-messages"
    if "chosen" in rec or "rejected" in rec:
        if "conversations" in rec:
            return "sharegpt-dpo"
        if "instruction" in rec:
            return "alpaca-dpo"
        return "dpo"
    if "messages" in rec:
        return "messages"
    if "conversations" in rec:
        return "sharegpt"
    if "instruction" in rec:
        return "alpaca"
    if "completion" in rec:
        return "prompt-completion"
    keys = ", ".join(sorted(map(str, rec))[:6]) or "none"
    if "text" in rec:
        raise Reject(
            "unknown-format",
            f"plain text (keys: {keys}), not a chat: prep makes chat examples; train a text corpus "
            "with Axolotl's `type: completion` dataset directly, or speaker-tagged dialogue with axpack script",
        )
    raise Reject(
        "unknown-format",
        f"no known fields (keys: {keys}); expected messages, conversations, "
        "instruction/output, prompt/chosen/rejected, chosen_messages/rejected_messages "
        "or prompt/completion",
    )


_PAIR_FORMATS = frozenset({"dpo", "sharegpt-dpo", "alpaca-dpo", "dpo-messages"})


def _is_conversation(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(t, dict) for t in value)
    )


def _pair(rec: dict[str, Any], fmt: str, opts: Opts) -> dict[str, list[dict[str, Any]]]:
    """A preference record of any DPO shape -> prompt/chosen/rejected."""
    if fmt == "dpo-messages":
        for key in ("chosen_messages", "rejected_messages"):
            if key not in rec:
                raise Reject("bad-shape", f"DPO record has no {key!r}")
        prompt, chosen, rejected = _split_pair(
            rec["chosen_messages"],
            rec["rejected_messages"],
            "chosen_messages",
            "rejected_messages",
            opts,
        )
        prompt = _with_system(prompt, rec.get("system"))
    elif (
        fmt == "dpo"
        and "prompt" not in rec
        and "question" not in rec
        and _is_conversation(rec.get("chosen"))
        and _is_conversation(rec.get("rejected"))
    ):
        prompt, chosen, rejected = _split_pair(
            rec["chosen"], rec["rejected"], "chosen", "rejected", opts
        )
        prompt = _with_system(prompt, rec.get("system"))
    else:
        if fmt == "dpo":
            if "prompt" in rec:
                prompt = _prompt(rec["prompt"], opts)
            elif "question" in rec:
                prompt = _prompt(rec["question"], opts)
            else:
                raise Reject(
                    "bad-shape",
                    "DPO record has no prompt (and chosen/rejected are not whole conversations)",
                )
            prompt = _with_system(prompt, rec.get("system"))
        elif fmt == "sharegpt-dpo":
            prompt = _sharegpt_head(rec, opts)
        else:  # alpaca-dpo
            prompt = _alpaca_head(rec)
            prompt.append({"role": "user", "content": _alpaca_user(rec)})
        for key in ("chosen", "rejected"):
            if key not in rec:
                raise Reject("bad-shape", f"DPO record has no {key!r}")
        chosen = _answer(rec["chosen"], "chosen", prompt, opts)
        rejected = _answer(rec["rejected"], "rejected", prompt, opts)
    if opts.flagged:
        _fix_flags(prompt, "prompt", False)
        _fix_flags(chosen, "chosen", True)
        _fix_flags(rejected, "rejected", True)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _prompt_completion(rec: dict[str, Any], opts: Opts) -> list[dict[str, Any]]:
    """TRL's prompt/completion (strings or turn lists) -> one conversation.
    Without ``prompt``, ``completion`` is the whole conversation (Argilla's
    KTO layout); a completion list that repeats the prompt first has the
    repeat removed."""
    comp = rec["completion"]
    if "prompt" not in rec:
        return _turns(comp, "completion", "role", "content", opts)
    prompt = _prompt(rec["prompt"], opts)
    if isinstance(comp, list) and not (comp and all(type(v) is str for v in comp)):
        turns = _turns(comp, "completion", "role", "content", opts)
        if len(turns) > len(prompt) and turns[: len(prompt)] == prompt:
            turns = turns[len(prompt) :]
    else:
        turns = [_one_turn(comp, "completion", opts)]
    return _with_system(prompt + turns, rec.get("system"))


def _check_keys(rec: dict[str, Any], fmt: str, opts: Opts) -> None:
    """Top-level keys beyond the shape (see :mod:`axpack.record_keys`)."""
    shape = rk.SHAPE_KEYS[fmt]
    for key, value in rec.items():
        if key in shape or key in rk.HONOURED_TOP:
            continue
        if key in rk.MEANINGFUL_TOP and not rk.empty(value):
            code, fix = rk.MEANINGFUL_TOP[key]
            n = (
                f" ({len(value)} item{'s' * (len(value) != 1)})"
                if isinstance(value, list)
                else ""
            )
            raise Reject(code, f"record has {key!r}{n}: {fix}")
        if key in rk.INERT_TOP or key in opts.ignore or rk.empty(value):
            opts.ignored.append(key)
            continue
        if any(key in keys for keys in rk.SHAPE_KEYS.values()):
            raise Reject(
                "unknown-key",
                f"key {key!r} is not part of the {fmt} shape this record was read as; "
                "check --format, or remove the key",
            )
        raise Reject(
            "unknown-key",
            f"key {key!r} is not one prep knows, so it cannot tell whether it changes what the "
            f"record teaches ({fmt} record); if it does not, pass --ignore-key {key}",
        )


def _label(
    value: Any, kind: str, ex: dict[str, Any], opts: Opts
) -> tuple[str, dict[str, Any]]:
    """A record's desirability ``label`` under ``opts.labels`` -> (kind, example)."""
    if type(value) is not bool:
        raise Reject(
            "label",
            f"label is {jtype(value)} {_js(value)}; expected true (desirable) or false",
        )
    said = "true" if value else "false"
    if kind != SFT:
        raise Reject(
            "label",
            f"a preference pair with label: {said}; a label marks one answer (KTO), a pair already says "
            "which answer is better: remove the label",
        )
    if opts.labels == "reject":
        raise Reject(
            "label",
            f"label: {said} marks this answer {'desirable' if value else 'undesirable'}, and prep does not "
            "make labelled answers SFT targets by default: pass --labels kto to write kto.jsonl "
            "(KTO learns from both), or --labels keep-true to keep only label: true records as SFT",
        )
    if opts.labels == "keep-true":
        if value:
            return SFT, ex
        raise Reject(
            "undesirable",
            "label: false marks this answer undesirable; --labels keep-true keeps only label: true "
            "records (--labels kto trains on both)",
        )
    turns = ex["messages"]
    _fix_flags(turns[:-1], "completion", False)
    _fix_flags(turns[-1:], "completion", True)
    return KTO, {"completion": turns, "label": value}


def to_example(
    rec: Any, fmt: str = "auto", tool_roles: str = "reject", opts: Opts | None = None
) -> tuple[str, dict[str, Any]]:
    """One raw record -> (kind, example) with kind ``"sft"``, ``"dpo"`` or ``"kto"``.

    Args:
        rec: the decoded JSON value.
        fmt: one of :data:`FORMATS`; ``auto`` detects per record.
        tool_roles: ``"reject"`` (default) or ``"map"`` for ShareGPT
            function_call/observation turns (used when ``opts`` is None).
        opts: every reading option (:class:`Opts`); its ``ignored`` list
            receives the inert keys this record held.

    Returns:
        ``("sft", {"messages": [...]})``, ``("dpo", {"prompt": [...],
        "chosen": [turn], "rejected": [turn]})`` or ``("kto",
        {"completion": [turns], "label": bool})``; contents are raw strings
        (whitespace and role order are checked by the caller); a turn may
        carry ``"train": bool``.

    Raises:
        Reject: the record is not one of the shapes above, or holds a key
            whose meaning prep cannot keep (see :mod:`axpack.record_keys`).
    """
    if opts is None:
        opts = Opts(tool_roles=tool_roles)
    opts.flagged = False
    if not isinstance(rec, dict):
        raise Reject(
            "not-object", f"record is a JSON {jtype(rec)}, expected an object"
        )
    if fmt == "auto":
        fmt = detect(rec)
    try:  # the record's shape keys, read as fmt (one flat chain: this is per record)
        if fmt == "messages":
            turns = _turns(rec["messages"], "messages", "role", "content", opts)
            kind, ex = SFT, {"messages": _with_system(turns, rec.get("system"))}
        elif fmt in _PAIR_FORMATS:
            kind, ex = DPO, _pair(rec, fmt, opts)
        elif fmt == "sharegpt":
            kind, ex = SFT, {"messages": _sharegpt_head(rec, opts)}
        elif fmt == "alpaca":
            turns = _alpaca_head(rec)
            turns.append({"role": "user", "content": _alpaca_user(rec)})
            turns.append(
                {"role": "assistant", "content": _text(rec.get("output"), "output")}
            )
            kind, ex = SFT, {"messages": turns}
        elif fmt == "prompt-completion":
            kind, ex = SFT, {"messages": _prompt_completion(rec, opts)}
        else:
            raise Reject("unknown-format", f"unknown --format {fmt!r}")
    except KeyError as err:  # a field the format needs is absent
        raise Reject("bad-shape", f"{fmt} record has no {err.args[0]!r}") from None
    if not rec.keys() <= rk.SHAPE_KEYS[fmt]:
        _check_keys(rec, fmt, opts)
    if "label" in rec:
        kind, ex = _label(rec["label"], kind, ex, opts)
    return kind, ex
