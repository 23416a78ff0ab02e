"""Serving files next to the GGUFs: an Ollama Modelfile and the llama-server command.

Both must prompt the model exactly as it was trained, or it rambles past the
end of its turn. llama-server gets ``--jinja``: it then renders the Jinja chat
template stored in the GGUF (the training tokenizer's, checked by ``axpack
verify``) and stops at the GGUF's EOS/EOT tokens. Ollama uses Go templates, so
the Modelfile's ``TEMPLATE`` is derived from the training template: the
template is rendered with sentinel messages and cut into its literal pieces
(begin, per-role prefix/suffix, generation prompt, a default system prompt the
template inserts when none is given), and those pieces are reassembled as a Go
template. :func:`render_parts` renders the same pieces in Python, and the tests
check it against the Jinja template on several conversations. ``PARAMETER
stop`` lists the EOS token and the special tokens that close an assistant turn
and open a user turn.

A template that cannot be cut this way (content rewritten per message, tools,
reasoning blocks) gets no ``TEMPLATE`` line and a comment saying so: Ollama
then falls back to the GGUF's own template detection.

Per-system export and serving settings live in the config's header comment,
one ``# axpack:`` line each (Axolotl never sees comments):

    # axpack: export --outtype f16 --quants q4_k_m,q5_k_m
    # axpack: serve --port 8081 --n-gpu-layers 99 --ctx-size 4096 --flash-attn on

``export`` takes ``axpack export``'s ``--quants`` / ``--outtype`` / ``--ctx``
(the command line still wins); ``serve`` is the complete llama-server flag
list after ``-m MODEL`` (``-c`` is added only when it sets no context). The
template is rendered with the config's ``chat_template_kwargs`` (e.g.
``enable_thinking: false``), so the Modelfile prompts as training did; a
persona trained without thinking serves with ``--reasoning off``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import AxpackError
from .fsutil import atomic_write_text

SENT = {"sys": "AXPSYS7q", "u1": "AXPUSR1q", "a1": "AXPAST1q", "u2": "AXPUSR2q"}
DEFAULT_PORT = 8080


@dataclass
class TemplateParts:
    """Literal pieces of a chat template (all strings, possibly empty).

    Rendering a conversation = ``begin`` + (if no system message and
    ``default_system`` is not None: ``sys_prefix + default_system + sys_suffix``)
    + per message ``<role>_prefix + content + <role>_suffix`` + ``gen_prompt``
    when a reply is wanted.
    """

    begin: str
    sys_prefix: str | None
    sys_suffix: str | None
    default_system: str | None
    user_prefix: str
    user_suffix: str
    asst_prefix: str
    asst_suffix: str
    gen_prompt: str


_DIRECTIVE = re.compile(r"^#\s*axpack:\s*(?P<kind>\S+)(?:\s+(?P<args>.*?))?\s*$")
EXPORT_OPTIONS = ("--quants", "--outtype", "--ctx")
CTX_FLAGS = ("-c", "--ctx-size")


@dataclass
class Directives:
    """A config's ``# axpack:`` header: export options and llama-server flags (``None``: not set)."""

    quants: str | None = None
    outtype: str | None = None
    ctx: int | None = None
    serve: list[str] | None = None


def read_directives(config: str | Path) -> Directives:
    """Parse the ``# axpack: export ...`` / ``# axpack: serve ...`` lines of a config file.

    Only comment lines are read; each kind may appear once.

    Raises:
        AxpackError: ``file:line`` with an unknown kind, an unknown or valueless
            export option, unbalanced quotes, or a repeated kind.
    """
    from .gguf_build import OUTTYPES, parse_quants

    path = Path(config)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise AxpackError(f"{path}: cannot read the config ({err}); pass a UTF-8 Axolotl YAML") from None
    d = Directives()
    seen: set[str] = set()
    for no, line in enumerate(lines, 1):
        m = _DIRECTIVE.match(line)
        if not m:
            continue
        kind, where = m.group("kind"), f"{path}:{no}"
        if kind not in ("export", "serve"):
            raise AxpackError(f"{where}: '# axpack: {kind}': unknown; use '# axpack: export --quants ...' or "
                              "'# axpack: serve <llama-server flags>'")
        if kind in seen:
            raise AxpackError(f"{where}: a second '# axpack: {kind}' line; merge them into one")
        seen.add(kind)
        try:
            args = shlex.split(m.group("args") or "")
        except ValueError as err:
            raise AxpackError(f"{where}: '# axpack: {kind}': {err}; fix the quoting") from None
        if kind == "serve":
            if args and args[0] == "llama-server":
                args = args[1:]
            if any(a in ("-m", "--model") for a in args):
                raise AxpackError(f"{where}: '# axpack: serve' names no model (-m): export adds its own GGUF")
            d.serve = args
            continue
        it = iter(args)
        for opt in it:
            key, eq, val = opt.partition("=")
            if key not in EXPORT_OPTIONS:
                raise AxpackError(f"{where}: '# axpack: export {opt}': unknown option; use "
                                  + ", ".join(EXPORT_OPTIONS))
            if not eq:
                val = next(it, "")
            if not val:
                raise AxpackError(f"{where}: '# axpack: export {key}': needs a value")
            if key == "--quants":
                try:
                    parse_quants(val)
                except AxpackError as err:
                    raise AxpackError(f"{where}: '# axpack: export': {err}") from None
                d.quants = val
            elif key == "--outtype":
                if val not in OUTTYPES:
                    raise AxpackError(f"{where}: '# axpack: export --outtype {val}': use one of {', '.join(OUTTYPES)}")
                d.outtype = val
            else:
                if not val.isdigit() or int(val) < 1:
                    raise AxpackError(f"{where}: '# axpack: export --ctx {val}': expected a positive integer")
                d.ctx = int(val)
    return d


def _render(tok, messages: list[dict[str, str]], gen: bool, kwargs: dict[str, Any] | None = None) -> str:
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen, **(kwargs or {}))


def _strip_prefix(text: str, prefix: str, what: str) -> str:
    if not text.startswith(prefix):
        raise ValueError(f"{what}: {text!r} does not start with {prefix!r}")
    return text[len(prefix):]


def _strip_suffix(text: str, suffix: str, what: str) -> str:
    if suffix and not text.endswith(suffix):
        raise ValueError(f"{what}: {text!r} does not end with {suffix!r}")
    return text[: len(text) - len(suffix)] if suffix else text


def template_parts(tok, kwargs: dict[str, Any] | None = None, serving_only: bool = False) -> TemplateParts:
    """Cut ``tok``'s chat template into :class:`TemplateParts` by rendering sentinel messages.

    ``kwargs`` are extra template variables, as training passed them
    (Axolotl's ``chat_template_kwargs``, e.g. ``{"enable_thinking": False}``).
    ``serving_only`` checks the pieces only on what a server renders
    (conversations ending in a user turn, with the generation prompt): a
    template such as Qwen3.5's, which puts an empty ``<think></think>`` only
    before the *final* assistant turn of a training example, cuts then, and
    its history turns and generation prompt are exact.

    Raises:
        ValueError: the template is not a plain per-message concatenation
            (the caller then writes no TEMPLATE).
    """
    s = SENT
    u1, a1 = {"role": "user", "content": s["u1"]}, {"role": "assistant", "content": s["a1"]}
    u2 = {"role": "user", "content": s["u2"]}
    # user/assistant pieces from conversations without a system message
    two = _render(tok, [u1, a1, u2], gen=True, kwargs=kwargs)
    i_u1, i_a1, i_u2 = two.index(s["u1"]), two.index(s["a1"]), two.index(s["u2"])
    no_gen = _render(tok, [u1, a1], gen=False, kwargs=kwargs)
    asst_suffix = no_gen[no_gen.index(s["a1"]) + len(s["a1"]):]
    u_only = _render(tok, [u1], gen=False, kwargs=kwargs)
    user_suffix = u_only[u_only.index(s["u1"]) + len(s["u1"]):]
    asst_prefix = _strip_prefix(two[i_u1 + len(s["u1"]):i_a1], user_suffix, "user suffix")
    user_prefix = _strip_prefix(two[i_a1 + len(s["a1"]):i_u2], asst_suffix, "assistant suffix")
    gen_prompt = _strip_prefix(two[i_u2 + len(s["u2"]):], user_suffix, "generation prompt")
    lead = _strip_suffix(two[:i_u1], user_prefix, "first user turn")  # begin (+ default system block)
    sys_prefix = sys_suffix = default_system = None
    begin = lead
    try:
        with_sys = _render(tok, [{"role": "system", "content": s["sys"]}, u1], gen=False, kwargs=kwargs)
    except Exception:  # noqa: BLE001 - a template that rejects system turns
        with_sys = None
    if with_sys is not None and s["sys"] in with_sys:
        i_s = with_sys.index(s["sys"])
        before = with_sys[:i_s]
        sys_suffix = _strip_suffix(with_sys[i_s + len(s["sys"]):with_sys.index(s["u1"])], user_prefix, "system turn")
        if lead.startswith(before) and lead.endswith(sys_suffix) and len(lead) >= len(before) + len(sys_suffix):
            # no system message -> the template inserts its own system block
            default_system = lead[len(before):len(lead) - len(sys_suffix)] if sys_suffix else lead[len(before):]
            begin, sys_prefix = "", before
        elif before.startswith(lead):
            begin, sys_prefix = lead, before[len(lead):]
        else:
            raise ValueError(f"system turn: cannot align {before!r} with {lead!r}")
    parts = TemplateParts(begin, sys_prefix, sys_suffix, default_system, user_prefix, user_suffix,
                          asst_prefix, asst_suffix, gen_prompt)
    # the pieces must reproduce the template on conversations they were not cut from
    for msgs, gen in _check_conversations(sys_prefix is not None):
        if serving_only and not gen:
            continue
        want = _render(tok, msgs, gen, kwargs)
        got = render_parts(parts, msgs, gen)
        if got != want:
            raise ValueError(f"pieces do not reproduce the template: {got!r} != {want!r}")
    return parts


def _check_conversations(with_system: bool) -> list[tuple[list[dict[str, str]], bool]]:
    c = [
        ([{"role": "user", "content": "Hi there"}], True),
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
          {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}], False),
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
          {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}, {"role": "user", "content": "e"}],
         True),
    ]
    if with_system:
        c.append(([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "x"},
                   {"role": "assistant", "content": "y"}, {"role": "user", "content": "z"}], True))
    return c


def render_parts(p: TemplateParts, messages: list[dict[str, str]], gen: bool) -> str:
    """Render ``messages`` from the pieces (the Python twin of :func:`go_template`)."""
    out = [p.begin]
    has_sys = any(m["role"] == "system" for m in messages)
    if not has_sys and p.default_system is not None:
        out.append(f"{p.sys_prefix}{p.default_system}{p.sys_suffix}")
    for m in messages:
        pre, suf = {"system": (p.sys_prefix, p.sys_suffix), "user": (p.user_prefix, p.user_suffix),
                    "assistant": (p.asst_prefix, p.asst_suffix)}[m["role"]]
        out.append(f"{pre or ''}{m['content']}{suf or ''}")
    if gen:
        out.append(p.gen_prompt)
    return "".join(out)


def _go_literal(text: str | None) -> str:
    """Literal text for a Go template ({{ would open an action)."""
    return (text or "").replace("{{", '{{ "{{" }}')


def go_template(p: TemplateParts) -> str:
    """The Ollama (Go text/template) form of the pieces; no trim markers, so every
    newline of the pieces survives exactly."""
    L = _go_literal
    t = ""
    if p.default_system is not None:
        t += ('{{ $sys := false }}{{ range .Messages }}{{ if eq .Role "system" }}{{ $sys = true }}{{ end }}{{ end }}'
              f'{L(p.begin)}{{{{ if not $sys }}}}{L(p.sys_prefix)}{L(p.default_system)}{L(p.sys_suffix)}{{{{ end }}}}')
    else:
        t += L(p.begin)
    t += "{{ range $i, $m := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}"
    if p.sys_prefix is not None:
        t += (f'{{{{ if eq $m.Role "system" }}}}{L(p.sys_prefix)}{{{{ $m.Content }}}}{L(p.sys_suffix)}'
              f'{{{{ else if eq $m.Role "user" }}}}')
    else:
        t += '{{ if eq $m.Role "user" }}'
    t += (f'{L(p.user_prefix)}{{{{ $m.Content }}}}{L(p.user_suffix)}'
          f'{{{{ else if eq $m.Role "assistant" }}}}{L(p.asst_prefix)}{{{{ $m.Content }}}}{L(p.asst_suffix)}'
          f'{{{{ end }}}}'
          f'{{{{ if and $last (ne $m.Role "assistant") }}}}{L(p.gen_prompt)}{{{{ end }}}}{{{{ end }}}}')
    return t


def stop_tokens(tok, p: TemplateParts | None) -> list[str]:
    """Stop strings: the EOS token, plus every special token that ends an assistant
    turn or opens a user turn in the template (e.g. ``<|im_end|>``, ``<|im_start|>``, ``<|eot_id|>``)."""
    special = sorted({str(t) for t in tok.all_special_tokens} | {
        str(t.content) for t in getattr(tok, "added_tokens_decoder", {}).values() if getattr(t, "special", False)},
        key=len, reverse=True)
    out: list[str] = []
    if tok.eos_token:
        out.append(str(tok.eos_token))
    if p is not None:
        for piece in (p.asst_suffix, p.user_prefix):
            for s in special:
                if s and s in piece and s not in out:
                    out.append(s)
    return out


def _quote(text: str) -> str:
    if '"""' in text:
        raise AxpackError('chat template piece contains """, which an Ollama Modelfile cannot quote')
    return f'"""{text}"""'


def modelfile_text(gguf_name: str, tok, parts: TemplateParts | None, why_no_template: str = "",
                   notes: list[str] | None = None) -> str:
    """The Ollama Modelfile for ``gguf_name`` (a file beside it); ``notes`` become comment lines."""
    lines = [f"# Ollama Modelfile written by axpack: ollama create <name> -f {Path('Modelfile')}",
             "# TEMPLATE and stop tokens come from the training tokenizer's chat template.",
             *(f"# {n}" for n in notes or []),
             f"FROM ./{gguf_name}"]
    if parts is not None:
        lines.append(f"TEMPLATE {_quote(go_template(parts))}")
        if parts.default_system is not None:
            lines.append("# the training template's default system prompt (used when a chat has none)")
            lines.append(f"SYSTEM {_quote(parts.default_system)}")
    else:
        lines.append(f"# no TEMPLATE: {why_no_template}; Ollama uses the template stored in the GGUF")
    for s in stop_tokens(tok, parts):
        lines.append("PARAMETER stop " + json.dumps(s, ensure_ascii=False))
    lines.append("PARAMETER temperature 0.7")
    return "\n".join(lines) + "\n"


def server_command(gguf: Path, ctx: int, port: int = DEFAULT_PORT, flags: list[str] | None = None) -> list[str]:
    """llama-server argv.

    Default: the GGUF's own Jinja template (``--jinja``), context ``ctx``,
    OpenAI API on ``127.0.0.1:port``. With ``flags`` (a config's ``# axpack:
    serve`` line): ``-m GGUF`` + exactly those flags, plus ``-c ctx`` only
    when they set no context.
    """
    if flags is not None:
        extra = [] if any(f in CTX_FLAGS or f.startswith("--ctx-size=") for f in flags) else ["-c", str(ctx)]
        return ["llama-server", "-m", str(gguf), *flags, *extra]
    return ["llama-server", "-m", str(gguf), "--jinja", "-c", str(ctx), "--host", "127.0.0.1", "--port", str(port)]


def write_serving_files(model_dir: str | Path, gguf_dir: str | Path, gguf_name: str,
                        ctx: int = 4096, flags: list[str] | None = None,
                        template_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``Modelfile`` and ``llama-server.sh`` into ``gguf_dir`` for ``gguf_name``.

    Args:
        model_dir: the merged HF folder (its tokenizer is the training tokenizer).
        gguf_dir: the export folder.
        gguf_name: the GGUF file the files serve (e.g. ``demo-q4_k_m.gguf``).
        ctx: context length for llama-server (``-c``).
        flags: llama-server flags from the config's ``# axpack: serve`` line
            (:func:`server_command`); ``None``: axpack's defaults.
        template_kwargs: the config's ``chat_template_kwargs`` (the Modelfile's
            TEMPLATE is cut from the template rendered with them).

    Returns:
        ``{"modelfile": Path, "server_script": Path, "server_command": str,
        "stop": [...], "template": "derived" | reason}``.
    """
    from transformers import AutoTokenizer

    gguf_dir = Path(gguf_dir)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    try:
        parts, why = template_parts(tok, template_kwargs), ""
    except (ValueError, KeyError, TypeError) as err:
        try:  # e.g. Qwen3.5: an empty think block before the final assistant turn of training rows only
            parts, why = template_parts(tok, template_kwargs, serving_only=True), ""
        except (ValueError, KeyError, TypeError):
            parts, why = None, f"the chat template could not be cut into per-role pieces ({str(err)[:120]})"
    notes = []
    if (template_kwargs or {}).get("enable_thinking") is False:
        notes.append("Trained with enable_thinking=false: serve without thinking (ollama run --think=false, "
                     'API "think": false; llama-server --reasoning off).')
    mf = atomic_write_text(gguf_dir / "Modelfile", modelfile_text(gguf_name, tok, parts, why, notes))
    cmd = server_command(Path(gguf_name), ctx, flags=flags)
    why_flags = ("# Flags from the config's '# axpack: serve' line (the system's recipe).\n" if flags is not None else
                 "# --jinja renders the chat template stored in the GGUF (the training template) and\n"
                 "# stops at the GGUF's EOS/EOT tokens.\n")
    script = ("#!/bin/sh\n"
              "# llama.cpp's OpenAI-compatible server for this export (written by axpack).\n"
              + why_flags +
              "# Extra arguments are passed on (e.g. -ngl 99).\n"
              'cd "$(dirname "$0")" || exit 1\n'
              f'exec {shlex.join(cmd)} "$@"\n')
    sh = atomic_write_text(gguf_dir / "llama-server.sh", script)
    os.chmod(sh, 0o755)
    return {"modelfile": mf, "server_script": sh, "server_command": shlex.join(cmd),
            "stop": stop_tokens(tok, parts), "template": "derived" if parts else why,
            "parts": asdict(parts) if parts else None}
