"""Cleaning: one decoded record -> one clean, checked, canonical example line.

The engine of ``axpack prep`` (no I/O here): :func:`convert` maps a record's
shape (:mod:`axpack.formats`), then :func:`clean_example` cleans every
content (CRLF -> LF, placeholders, outer whitespace, NUL rejected), applies
the system-prompt policy (:func:`apply_system`) and checks the role order.
The fast paths (:func:`fast_messages`, :func:`fast_sharegpt`) return
exactly what the general path would for clean common records, faster; the
tests hold the two to each other. :func:`digest` is the dedupe key,
:func:`is_val` the content-hash split, :class:`NearDup` the near-duplicate
filter.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

import orjson
from xxhash import xxh3_128_digest

from .formats import DPO, KTO, SFT, Opts, Reject, detect, to_example

SYSTEM_POLICIES = ("strip", "keep", "default")
# --format name -> the output it feeds
KIND_OF = {
    "messages": SFT,
    "sharegpt": SFT,
    "alpaca": SFT,
    "dpo": DPO,
    "sharegpt-dpo": DPO,
    "alpaca-dpo": DPO,
    "dpo-messages": DPO,
    "prompt-completion": SFT,
}


# a line end: LF after any number of CRs ("\r\r\n" is what a second CRLF
# conversion leaves; one replace("\r\n", "\n") would leave a CRLF in it)
_CRLF = re.compile(r"\r+\n")


def _clean(text: str, where: str, replace: dict[str, str]) -> str:
    """One content string: NUL rejected, placeholders replaced, CR+LF line
    ends -> LF, outer whitespace stripped. Idempotent: cleaning the result
    again changes nothing, so prep's output preps to itself."""
    if "\x00" in text:
        raise Reject("nul-char", f"{where}: content holds a NUL character")
    for key, value in replace.items():
        text = text.replace(key, value)
    if "\r" in text:
        text = _CRLF.sub("\n", text)
    return text.strip()


def _norm(text: str) -> str:
    """Comparison form of an (already stripped, LF-only) text: Unicode NFC."""
    return text if text.isascii() else unicodedata.normalize("NFC", text)


def digest(data: bytes) -> bytes:
    """16-byte dedupe key of one example: XXH3-128 (seed 0, stable across
    runs and machines) over its output line ``data``, NFC-normalized when
    not ASCII.

    The output line is canonical (cleaned contents: outer whitespace
    stripped, CRLF -> LF; system policy applied; fixed key order; SFT and
    DPO lines differ in their first key), so "exact duplicate" means equal
    after those steps and NFC; spacing inside a text still counts
    (``--near-dup`` is for looser matches). XXH3 rather than a
    cryptographic hash: ~40x faster here (0.06 vs 2.5 us per 850-byte line,
    measured), and 128 bits make an accidental collision negligible
    (~1e-27 for a million examples); the data is not adversarial.
    """
    if not data.isascii():
        data = unicodedata.normalize("NFC", data.decode()).encode()
    return xxh3_128_digest(data)


def apply_system(
    turns: list[dict[str, str]], policy: str, text: str | None
) -> list[dict[str, str]]:
    """System-prompt policy on one turn list (SFT messages or a DPO prompt).

    ``strip`` drops every system turn; ``keep`` leaves them (role checks then
    allow one, first); ``default`` inserts ``text`` as the first turn when the
    record has no system turn, and keeps an existing one.
    """
    if policy == "strip":
        return [t for t in turns if t["role"] != "system"]
    if policy == "default" and not any(t["role"] == "system" for t in turns):
        return [{"role": "system", "content": text or ""}, *turns]
    return turns


def _check_order(turns: list[dict[str, str]], field: str, last: str) -> None:
    """system only first; then user, assistant alternating (a tool turn may
    follow an assistant turn and precede another assistant turn); the final
    turn's role must be ``last``."""
    if not turns:
        raise Reject("empty", f"{field} has no turns")
    body = turns
    for i, t in enumerate(turns):
        if not t["content"]:
            raise Reject("empty-content", f"{field}[{i}] ({t['role']}) is empty")
        if t["role"] == "system" and i:
            raise Reject(
                "system-position",
                f"{field}[{i}] is a system turn; system is allowed only as the first turn",
            )
    if turns[0]["role"] == "system":
        body = turns[1:]
        if not body:
            raise Reject("empty", f"{field} has only a system turn")
    prev = None
    for i, t in enumerate(body):
        role = t["role"]
        if prev is None:
            ok = role == "user"
        elif prev == "user":
            ok = role == "assistant"
        elif prev == "assistant":
            ok = role in ("user", "tool")
        else:  # tool
            ok = role in ("tool", "assistant")
        if not ok:
            n = i + (len(turns) - len(body))
            after = f"after {prev!r}" if prev else "as the first non-system turn"
            raise Reject(
                "role-order",
                f"{field}[{n}] is {role!r} {after}; turns must go user, assistant, user, ...",
            )
        prev = role
    if prev != last:
        raise Reject(
            "role-order", f"{field} ends with {prev!r}; it must end with {last!r}"
        )


def clean_example(
    kind: str,
    ex: dict[str, list[dict[str, str]]],
    system: str,
    system_text: str | None,
    replace: dict[str, str],
) -> dict[str, list[dict[str, str]]]:
    """Clean and check one example (in place); return it.

    Content: CRLF -> LF, ``{{key}}`` placeholders replaced, outer whitespace
    stripped, NUL rejected; then the system policy and the role checks.

    Raises:
        Reject: empty content, role order, DPO chosen == rejected, ...
    """
    for field, turns in ex.items():
        if field == "label":  # KTO's one non-turn field
            continue
        for i, t in enumerate(turns):
            t["content"] = _clean(t["content"], f"{field}[{i}]", replace)
    if kind == SFT:
        ex["messages"] = msgs = apply_system(ex["messages"], system, system_text)
        _check_order(msgs, "messages", "assistant")
        return ex
    if kind == KTO:
        ex["completion"] = turns = apply_system(ex["completion"], system, system_text)
        _check_order(turns, "completion", "assistant")
        return ex
    ex["prompt"] = apply_system(ex["prompt"], system, system_text)
    _check_order(ex["prompt"], "prompt", "user")
    for field in ("chosen", "rejected"):
        turns = ex[field]
        if len(turns) != 1 or turns[0]["role"] != "assistant":
            raise Reject("role-order", f"{field} must be one assistant turn")
        if not turns[0]["content"]:
            raise Reject("empty-content", f"{field} is empty")
    if _norm(ex["chosen"][0]["content"]) == _norm(ex["rejected"][0]["content"]):
        raise Reject(
            "chosen-equals-rejected",
            "chosen and rejected answers are the same text",
        )
    return ex


def fast_messages(
    msgs: Any, system: str, system_text: str | None
) -> dict[str, list[dict[str, str]]] | None:
    """The common case, fast: a clean OpenAI ``messages`` list (exact roles
    system/user/assistant, string content, system only first, alternating,
    ending with assistant; no CR or NUL in any content). The caller has
    made sure there is nothing to replace.

    Returns exactly what ``to_example`` + :func:`clean_example` would, or
    None for anything else (the general path then decides and explains);
    ``tests/test_prep_formats.py`` checks the two agree on generated input.
    """
    if type(msgs) is not list:
        return None
    out = []
    append = out.append
    prev = None
    has_system = False
    for t in msgs:
        if type(t) is not dict or len(t) != 2:
            return None
        role = t.get("role")
        c = t.get("content")
        if type(c) is not str or "\r" in c or "\x00" in c:
            return None
        if role == "assistant":
            if prev != "user":
                return None
            prev = role
        elif role == "user":
            if prev == "user":
                return None
            prev = role
        elif role == "system" and prev is None and not has_system:
            has_system = True
            if system == "strip":
                continue
        else:
            return None
        c = c.strip()
        if not c:
            return None
        append({"role": role, "content": c})
    if prev != "assistant":
        return None
    if system == "default" and not has_system:
        out.insert(0, {"role": "system", "content": system_text or ""})
    return {"messages": out}


# ShareGPT speaker -> role on the fast path: the exact common spellings only
# (anything else, e.g. "Human" or "model", takes the general path)
_SHAREGPT_ROLES = {
    "human": "user",
    "gpt": "assistant",
    "user": "user",
    "assistant": "assistant",
    "system": "system",
}


def fast_sharegpt(
    rec: dict[str, Any], system: str, system_text: str | None
) -> dict[str, list[dict[str, str]]] | None:
    """:func:`fast_messages` for a clean ShareGPT record: ``conversations``
    of exactly ``{"from", "value"}`` with from in human/gpt/system (or
    user/assistant), string values, an optional top-level ``system`` string;
    the same role order and content rules. The caller has made sure there is nothing to
    replace.

    Returns exactly what ``to_example(rec, "sharegpt")`` +
    :func:`clean_example` would, or None for anything else (the general path
    then decides and explains); ``tests/test_prep_formats.py`` checks the
    two agree on generated input.
    """
    # The turn loop below repeats fast_messages' on purpose: one shared
    # helper (keys and role map as arguments) measured 5-10 % slower on
    # `make bench-prep` (messages 0.55-0.61 -> 0.51-0.56), the margin the
    # >= 0.5 goal has. tests/test_prep_formats.py holds both to the general path.
    convs = rec.get("conversations")
    if type(convs) is not list:
        return None
    top = rec.get("system")
    if top is not None and top != "":  # LLaMA-Factory's top-level system prompt
        if type(top) is not str:
            return None
        if not (convs and type(convs[0]) is dict and convs[0].get("from") == "system"):
            convs = [{"from": "system", "value": top}, *convs]
    roles = _SHAREGPT_ROLES
    out = []
    append = out.append
    prev = None
    has_system = False
    for t in convs:
        if type(t) is not dict or len(t) != 2:
            return None
        speaker = t.get("from")
        c = t.get("value")
        if type(speaker) is not str or type(c) is not str or "\r" in c or "\x00" in c:
            return None
        role = roles.get(speaker)
        if role == "assistant":
            if prev != "user":
                return None
            prev = role
        elif role == "user":
            if prev == "user":
                return None
            prev = role
        elif role == "system" and prev is None and not has_system:
            has_system = True
            if system == "strip":
                continue
        else:
            return None
        c = c.strip()
        if not c:
            return None
        append({"role": role, "content": c})
    if prev != "assistant":
        return None
    if system == "default" and not has_system:
        out.insert(0, {"role": "system", "content": system_text or ""})
    return {"messages": out}


def is_val(digest: bytes, fraction: float) -> bool:
    """Deterministic split: the first 8 digest bytes as a fraction of 2**64,
    so an example's split depends only on its content, not on input order."""
    return int.from_bytes(digest[:8], "big") < fraction * (1 << 64)


def fast_shape(value: dict[str, Any], fmt: str) -> str | None:
    """Which fast path a decoded record may take: ``"messages"`` (only a
    ``messages`` key), ``"sharegpt"`` (only ``conversations`` and perhaps
    ``system``), else None: any other key (a label, an id, images, ...) is
    the general path's to decide (:mod:`axpack.record_keys`)."""
    n = len(value)
    if n == 1 and "messages" in value and fmt in ("auto", "messages"):
        return "messages"
    if (
        fmt in ("auto", "sharegpt")
        and "conversations" in value
        and (n == 1 or (n == 2 and "system" in value))
    ):
        return "sharegpt"
    return None


def convert(
    value: Any,
    fmt: str,
    system: str,
    system_text: str | None,
    subs: dict[str, str],
    opts: Opts,
) -> tuple[str, dict[str, Any], bytes, bytes]:
    """One decoded record -> (kind, clean example, output line, digest).

    The output line is ``orjson.dumps(example)`` plus a newline; the digest
    is :func:`digest` of it. ``opts`` says how records are read; its
    ``ignored`` list is reset, then holds the inert keys of this record, and
    ``flagged`` says whether a turn got a ``train`` flag.

    Raises:
        Reject: with ``.kind`` set to ``"sft"``/``"dpo"``/``"kto"`` when the
            record's shape was recognised before it failed, else None.
    """
    if opts.ignored:
        opts.ignored.clear()
    opts.flagged = False
    kind = None
    try:
        ex = None
        if type(value) is dict:
            f = detect(value) if fmt == "auto" else fmt
            kind = KIND_OF[f]
            if kind == SFT and not subs:
                # fast_shape()'s rule, inline (hot): only the shape's own keys
                n = len(value)
                # .get: --format messages may force this on a record without it
                if f == "messages" and n == 1:
                    ex = fast_messages(value.get("messages"), system, system_text)
                elif f == "sharegpt" and (n == 1 or (n == 2 and "system" in value)):
                    ex = fast_sharegpt(value, system, system_text)
            if kind == SFT and ex is None and "label" in value and opts.labels == "kto":
                kind = KTO  # a reject of a labelled record counts in kto's output
        else:
            f = fmt
        if ex is None:
            kind, ex = to_example(value, f, opts=opts)
            ex = clean_example(kind, ex, system, system_text, subs)
    except Reject as rej:
        rej.kind = kind
        raise
    data = orjson.dumps(ex, option=orjson.OPT_APPEND_NEWLINE)
    return kind, ex, data, digest(data)


class NearDup:
    """Near-duplicate filter: MinHash over word 3-gram shingles of the
    example's whole text, LSH index at the given Jaccard threshold
    (datasketch ``MinHashLSH``; 128 permutations, its default)."""

    def __init__(self, threshold: float) -> None:
        from datasketch import MinHash, MinHashLSH

        self._mh = MinHash
        self.lsh = {
            k: MinHashLSH(threshold=threshold, num_perm=128) for k in (SFT, DPO, KTO)
        }
        self.where: dict[str, tuple[str, int]] = {}

    def check(
        self, kind: str, ex: dict[str, list[dict[str, str]]], where: tuple[str, int]
    ) -> tuple[str, int] | None:
        """``where`` (file, line) of an earlier example of ``kind`` whose text
        is a near-duplicate of ``ex``'s; else None, and ``ex`` is indexed
        under ``where`` for later checks."""
        words = (
            " ".join(
                t["content"]
                for turns in ex.values()
                if type(turns) is list
                for t in turns
            )
            .lower()
            .split()
        )
        shingles = {" ".join(words[i : i + 3]) for i in range(max(1, len(words) - 2))}
        m = self._mh(num_perm=128)
        m.update_batch([s.encode("utf-8", "surrogatepass") for s in shingles])
        hits = self.lsh[kind].query(m)
        if hits:
            return self.where[min(hits)]
        key = f"{len(self.where):012d}"
        self.where[key] = where
        self.lsh[kind].insert(key, m)
        return None
