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

Role checks live in :mod:`axpack.prep`; this module only maps shapes.
"""

from __future__ import annotations

from typing import Any

SFT = "sft"
DPO = "dpo"

FORMATS = (
    "auto",
    "messages",
    "sharegpt",
    "alpaca",
    "dpo",
    "sharegpt-dpo",
    "alpaca-dpo",
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


def _jtype(value: Any) -> str:
    """The JSON name of a decoded value's type (for reasons users can act on)."""
    return _JSON_TYPES.get(type(value), type(value).__name__)


class Reject(Exception):
    """A record that cannot become a training example.

    Attributes:
        code: short machine-readable category (``invalid-json``, ``role-order``, ...),
            counted in summary.json ``reject_reasons``.
        detail: the human reason (what is wrong and, where useful, what to do).
    """

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail

    @property
    def reason(self) -> str:
        return f"{self.code}: {self.detail}"


def _text(value: Any, where: str) -> str:
    """Content -> str. A list of text parts is joined with no separator
    (OpenAI's multi-part content); anything else non-string is a reject."""
    if type(value) is str:
        return value
    if isinstance(value, list):
        parts = []
        for i, part in enumerate(value):
            if type(part) is str:
                parts.append(part)
            elif (
                isinstance(part, dict)
                and part.get("type", "text") == "text"
                and type(part.get("text")) is str
            ):
                parts.append(part["text"])
            else:
                kind = part.get("type") if isinstance(part, dict) else _jtype(part)
                raise Reject(
                    "content-type",
                    f"{where}: content part {i} is {kind!r}, only text parts are supported",
                )
        return "".join(parts)
    if value is None:
        raise Reject("empty-content", f"{where}: content is missing or null")
    raise Reject(
        "content-type",
        f"{where}: content is {_jtype(value)}, expected a string or text parts",
    )


def _role(name: Any, where: str, tool_roles: str) -> str:
    if type(name) is not str:
        raise Reject("bad-role", f"{where}: role is {_jtype(name)}, expected a string")
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


def _turns(
    seq: Any, field: str, role_key: str, text_key: str, tool_roles: str
) -> list[dict[str, str]]:
    """A list of turn dicts -> [{"role", "content"}]."""
    if not isinstance(seq, list):
        raise Reject("bad-shape", f"{field} is {_jtype(seq)}, expected a list of turns")
    out = []
    for i, turn in enumerate(seq):
        where = f"{field}[{i}]"
        if not isinstance(turn, dict):
            raise Reject("bad-shape", f"{where} is {_jtype(turn)}, expected an object")
        if role_key not in turn:
            # accept the other convention in the same record
            alt = ("role", "content") if role_key == "from" else ("from", "value")
            if alt[0] in turn:
                role_key, text_key = alt
            else:
                raise Reject("bad-shape", f"{where} has no {role_key!r}")
        if turn.get("tool_calls"):
            raise Reject("tool-role", f"{where}: tool_calls are not supported")
        role = _role(turn[role_key], where, tool_roles)
        out.append({"role": role, "content": _text(turn.get(text_key), where)})
    return out


def _one_turn(value: Any, field: str, tool_roles: str) -> dict[str, str]:
    """A chosen/rejected answer given as {"from","value"} or {"role","content"}."""
    if isinstance(value, dict):
        return _turns(
            [value],
            field,
            "role" if "role" in value else "from",
            "content" if "role" in value else "value",
            tool_roles,
        )[0]
    return {"role": "assistant", "content": _text(value, field)}


def _prompt(value: Any, tool_roles: str) -> list[dict[str, str]]:
    if type(value) is str:
        return [{"role": "user", "content": value}]
    if isinstance(value, dict):
        return [_one_turn(value, "prompt", tool_roles)]
    if isinstance(value, list):
        if value and all(type(v) is str for v in value):
            return [{"role": "user", "content": "".join(value)}]
        return _turns(value, "prompt", "role", "content", tool_roles)
    raise Reject(
        "bad-shape",
        f"prompt is {_jtype(value)}, expected a string or a list of turns",
    )


def _answer(
    value: Any, field: str, prompt: list[dict[str, str]], tool_roles: str
) -> list[dict[str, str]]:
    """chosen/rejected -> exactly one turn (role checks come later)."""
    if isinstance(value, list) and not (value and all(type(v) is str for v in value)):
        turns = _turns(value, field, "role", "content", tool_roles)
        # TRL's "implicit prompt" layout: chosen = prompt + answer
        if len(turns) > len(prompt) and turns[: len(prompt)] == prompt:
            turns = turns[len(prompt) :]
        if len(turns) != 1:
            raise Reject(
                "bad-shape",
                f"{field} has {len(turns)} turns after the prompt; expected one assistant turn",
            )
        return turns
    return [_one_turn(value, field, tool_roles)]


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
                f"history is {_jtype(history)}, expected [[query, response], ...]",
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


def _sharegpt_head(rec: dict[str, Any], tool_roles: str) -> list[dict[str, str]]:
    turns = _turns(rec["conversations"], "conversations", "from", "value", tool_roles)
    return _with_system(turns, rec.get("system"))


def detect(rec: dict[str, Any]) -> str:
    """The format name of one record (see :data:`FORMATS`), or raise Reject."""
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
    keys = ", ".join(sorted(map(str, rec))[:6]) or "none"
    raise Reject(
        "unknown-format",
        f"no known fields (keys: {keys}); expected messages, conversations, "
        "instruction/output or prompt/chosen/rejected",
    )


def to_example(
    rec: Any, fmt: str = "auto", tool_roles: str = "reject"
) -> tuple[str, dict[str, list[dict[str, str]]]]:
    """One raw record -> (kind, example) with kind ``"sft"`` or ``"dpo"``.

    Args:
        rec: the decoded JSON value.
        fmt: one of :data:`FORMATS`; ``auto`` detects per record.
        tool_roles: ``"reject"`` (default) or ``"map"`` for ShareGPT
            function_call/observation turns.

    Returns:
        ``("sft", {"messages": [...]})`` or ``("dpo", {"prompt": [...],
        "chosen": [turn], "rejected": [turn]})``; contents are raw strings
        (whitespace and role order are checked by the caller).

    Raises:
        Reject: the record is not one of the shapes above.
    """
    if not isinstance(rec, dict):
        raise Reject(
            "not-object", f"record is a JSON {_jtype(rec)}, expected an object"
        )
    if fmt == "auto":
        fmt = detect(rec)
    try:
        if fmt == "messages":
            return SFT, {
                "messages": _turns(
                    rec.get("messages"), "messages", "role", "content", tool_roles
                )
            }
        if fmt == "sharegpt":
            return SFT, {"messages": _sharegpt_head(rec, tool_roles)}
        if fmt == "alpaca":
            turns = _alpaca_head(rec)
            turns.append({"role": "user", "content": _alpaca_user(rec)})
            turns.append(
                {"role": "assistant", "content": _text(rec.get("output"), "output")}
            )
            return SFT, {"messages": turns}
        if fmt == "dpo":
            if "prompt" in rec:
                prompt = _prompt(rec["prompt"], tool_roles)
            elif "question" in rec:
                prompt = _prompt(rec["question"], tool_roles)
            else:
                raise Reject("bad-shape", "DPO record has no prompt")
            prompt = _with_system(prompt, rec.get("system"))
        elif fmt == "sharegpt-dpo":
            prompt = _sharegpt_head(rec, tool_roles)
        elif fmt == "alpaca-dpo":
            prompt = _alpaca_head(rec)
            prompt.append({"role": "user", "content": _alpaca_user(rec)})
        else:
            raise Reject("unknown-format", f"unknown --format {fmt!r}")
        for key in ("chosen", "rejected"):
            if key not in rec:
                raise Reject("bad-shape", f"DPO record has no {key!r}")
        return DPO, {
            "prompt": prompt,
            "chosen": _answer(rec["chosen"], "chosen", prompt, tool_roles),
            "rejected": _answer(rec["rejected"], "rejected", prompt, tool_roles),
        }
    except KeyError as err:  # a field the format needs is absent
        raise Reject("bad-shape", f"{fmt} record has no {err.args[0]!r}") from None
