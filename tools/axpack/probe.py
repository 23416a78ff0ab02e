"""Ask a fixed question set of the base model, the merged model and each GGUF.

Greedy decoding everywhere, so answers are reproducible. HF models answer
through ``transformers`` with their tokenizer's chat template; each GGUF
answers through llama-cpp-python with the chat template stored *in the GGUF*
(what llama.cpp and Ollama will use), and must end at the end-of-turn token
(``finish_reason == "stop"``), not at the token limit — an endless answer is
the classic sign of a wrong EOS/EOT or template after export.

Writes ``RUN_DIR/probe.json``::

    {"persona_name": str,
     "answers": [{"question": str, "kind": "identity"|"general",
                  "base": str, "merged": str,
                  "gguf": {"q4_k_m": str, ...}, "gguf_stopped": {"q4_k_m": bool, ...}}],
     "checks": {...}, "inputs": sha256 of what was asked,
     "crashed": {"q4_k_m": "one-line llama.cpp crash message", ...}}

Each GGUF runs in a child process (:mod:`axpack.llama_child`): a llama.cpp
crash is one line naming the GGUF, the signal and the log, the other GGUFs
are still asked, and the command exits 1. A probe.json with a crash is never
taken as current.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import click

from . import env, llama_child
from .cpu import hide_fla
from .errors import AxpackError
from .fsutil import atomic_write_json, require_safetensors

IDENTITY_QUESTIONS = [
    "What is your name?",
    "Who are you?",
    "Who created you?",
    "Tell me your name, please.",
    "Describe yourself in one sentence.",
]
GENERAL_QUESTIONS = [
    "What is the capital of France?",
    "What is the capital of Italy?",
]
MAX_NEW_TOKENS = 64


def questions() -> list[tuple[str, str]]:
    """The fixed probe set as ``(kind, question)`` pairs: identity first, then general."""
    return [("identity", q) for q in IDENTITY_QUESTIONS] + [("general", q) for q in GENERAL_QUESTIONS]


def ask_hf(model_dir: Path, qs: list[str], max_new_tokens: int = MAX_NEW_TOKENS) -> list[str]:
    """Greedy answers from a HF folder, one per question (no system prompt given).

    Raises:
        AxpackError: the folder has no safetensors weights (pickle is refused).
    """
    env.apply_to_process()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    require_safetensors(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    hide_fla()  # CPU: Qwen3.5's linear attention on transformers' PyTorch kernels (axpack.cpu)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True)
    model.eval()
    answers = []
    for q in qs:
        ids = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        answers.append(tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return answers


def ask_gguf(path: str | Path, qs: list[str], max_new_tokens: int = MAX_NEW_TOKENS) -> dict[str, list]:
    """Greedy answers from a GGUF via llama-cpp-python and the GGUF's own chat template.

    Runs in the child process of :func:`axpack.llama_child.run_isolated`
    (see :func:`ask_gguf_isolated`); llama.cpp's verbose log goes to the
    child's log file.

    Returns:
        ``{"answers": [str, ...], "stopped": [bool, ...]}`` where ``stopped[i]``
        is True when answer i ended at the end-of-turn token rather than the
        token limit.
    """
    from llama_cpp import Llama

    llama_child.phase("loading")
    llm = Llama(model_path=str(path), n_ctx=1024, n_threads=2, seed=0, verbose=True)
    llama_child.phase("decoding")
    answers, stopped = [], []
    for q in qs:
        res = llm.create_chat_completion(messages=[{"role": "user", "content": q}],
                                         temperature=0.0, top_k=1, max_tokens=max_new_tokens)
        choice = res["choices"][0]
        answers.append((choice["message"]["content"] or "").strip())
        stopped.append(choice.get("finish_reason") == "stop")
    llama_child.phase("closing")
    llm.close()
    return {"answers": answers, "stopped": stopped}


def ask_gguf_isolated(path: Path, qs: list[str], max_new_tokens: int, log: Path) -> tuple[list[str], list[bool]]:
    """:func:`ask_gguf` in a child process; ``(answers, stopped)``.

    Raises:
        LlamaCrash: llama.cpp died (the one-line message names signal, phase and ``log``).
    """
    res = llama_child.run_isolated("axpack.probe:ask_gguf", {"path": str(path), "qs": qs,
                                                             "max_new_tokens": max_new_tokens},
                                   gguf=path, log=log)
    return res["answers"], res["stopped"]


def run_probe(run_dir: str | Path, base: str | Path, persona: str | None = None,
              max_new_tokens: int = MAX_NEW_TOKENS, force: bool = False) -> dict[str, Any]:
    """Probe base, ``RUN_DIR/merged`` and every quantized GGUF in ``RUN_DIR/gguf``.

    The persona name (for the checks) comes from ``persona`` or, failing that,
    ``data/<run>/persona.json``. When ``probe.json`` already holds answers for
    the same inputs (models, questions, settings) it is returned as is, unless
    ``force``.

    Returns:
        The probe.json document (also written to ``RUN_DIR/probe.json``).

    Raises:
        AxpackError: the merged model or the GGUFs are missing.
    """
    run_dir = Path(run_dir)
    merged = run_dir / "merged"
    if not (merged / "config.json").is_file():
        raise AxpackError(f"{merged}: no merged model; run make merge first")
    manifest_path = run_dir / "gguf" / "manifest.json"
    if not manifest_path.is_file():
        raise AxpackError(f"{manifest_path}: missing; run make gguf first")
    manifest = json.loads(manifest_path.read_text())
    quants = {e["type"]: run_dir / "gguf" / name for name, e in sorted(manifest["artifacts"].items())
              if e["type"] not in ("f16", "bf16", "f32")}
    if persona is None:
        pj = env.project_root() / "data" / run_dir.name / "persona.json"
        persona = json.loads(pj.read_text())["persona_name"] if pj.is_file() else ""

    kinds_qs = questions()
    qs = [q for _, q in kinds_qs]
    from .gguf_build import model_fingerprint

    inputs = hashlib.sha256(json.dumps({
        "base": str(base), "merged": model_fingerprint(merged), "persona": persona,
        "gguf": {t: manifest["artifacts"][p.name]["sha256"] for t, p in quants.items()},
        "questions": kinds_qs, "max_new_tokens": max_new_tokens,
    }, sort_keys=True).encode()).hexdigest()
    out_path = run_dir / "probe.json"
    if out_path.is_file() and not force:
        try:
            old = json.loads(out_path.read_text())
            if old.get("inputs") == inputs and not old.get("crashed"):
                click.echo(f"axpack: {out_path} is current (same models and questions); not asking again", err=True)
                return old
        except ValueError:
            pass
    click.echo(f"axpack: probing base model {base}", err=True)
    base_ans = ask_hf(Path(base), qs, max_new_tokens)
    click.echo(f"axpack: probing merged model {merged}", err=True)
    merged_ans = ask_hf(merged, qs, max_new_tokens)
    gguf_ans: dict[str, list[str]] = {}
    gguf_stop: dict[str, list[bool]] = {}
    crashed: dict[str, str] = {}
    for qtype, path in quants.items():
        click.echo(f"axpack: probing {path.name}", err=True)
        try:
            gguf_ans[qtype], gguf_stop[qtype] = ask_gguf_isolated(
                path, qs, max_new_tokens, run_dir / "logs" / f"probe-{path.stem}.log")
        except llama_child.LlamaCrash as e:  # the other quants are still asked
            click.echo(f"axpack: {e}", err=True)
            crashed[qtype] = str(e)
            gguf_ans[qtype], gguf_stop[qtype] = ["(llama.cpp crashed)"] * len(qs), [False] * len(qs)

    answers = []
    for i, (kind, q) in enumerate(kinds_qs):
        answers.append({
            "question": q, "kind": kind, "base": base_ans[i], "merged": merged_ans[i],
            "gguf": {t: a[i] for t, a in gguf_ans.items()},
            "gguf_stopped": {t: s[i] for t, s in gguf_stop.items()},
        })
    doc = {"persona_name": persona, "answers": answers, "checks": checks(persona, answers), "inputs": inputs,
           "crashed": crashed}
    atomic_write_json(out_path, doc)
    return doc


def checks(persona: str, answers: list[dict[str, Any]]) -> dict[str, Any]:
    """Summaries of a probe: how many identity answers name the persona, per model,
    and how many GGUF answers stopped at end-of-turn."""
    ident = [a for a in answers if a["kind"] == "identity"]
    name = persona.lower()

    def hits(get) -> int:
        return sum(1 for a in ident if name and name in get(a).lower())

    quants = sorted({t for a in answers for t in a["gguf"]})
    return {
        "identity_questions": len(ident),
        "persona_in_base": hits(lambda a: a["base"]),
        "persona_in_merged": hits(lambda a: a["merged"]),
        "persona_in_gguf": {t: hits(lambda a, t=t: a["gguf"][t]) for t in quants},
        "gguf_stopped_at_eot": {t: sum(a["gguf_stopped"][t] for a in answers) for t in quants},
        "answers": len(answers),
    }


def print_table(doc: dict[str, Any], quant: str = "q4_k_m") -> None:
    """Print question | base | tuned (``quant``) as a rich table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"probe: persona {doc['persona_name']!r}", show_lines=True)
    table.add_column("question")
    table.add_column("base")
    table.add_column(f"tuned {quant.upper()}")
    for a in doc["answers"]:
        table.add_row(a["question"], a["base"], a["gguf"].get(quant, "(no such quant)"))
    Console().print(table)
    c = doc["checks"]
    click.echo(f"persona named: base {c['persona_in_base']}/{c['identity_questions']}, "
               f"merged {c['persona_in_merged']}/{c['identity_questions']}, "
               + ", ".join(f"{t} {n}/{c['identity_questions']}" for t, n in c["persona_in_gguf"].items()))
    click.echo("GGUF answers ended at end-of-turn: "
               + ", ".join(f"{t} {n}/{c['answers']}" for t, n in c["gguf_stopped_at_eot"].items()))


@click.command("probe")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--base", type=click.Path(file_okay=False), default=None,
              help="Base model folder [default: the embedded SmolLM2].")
@click.option("--persona", default=None, help="Persona name to look for [default: data/<run>/persona.json].")
@click.option("--max-new-tokens", type=int, default=MAX_NEW_TOKENS, show_default=True)
@click.option("--force", is_flag=True, help="Ask again even if probe.json is current.")
def command(run_dir, base, persona, max_new_tokens, force):
    """Ask base, merged and each GGUF the fixed questions; write RUN_DIR/probe.json."""
    doc = run_probe(run_dir, base or env.demo_model_dir(), persona, max_new_tokens, force)
    print_table(doc)
    if doc.get("crashed"):
        raise AxpackError("; ".join(doc["crashed"].values()))
