"""Markdown tables of a verify document (``verify.json``): the per-quant table, the KLD
table and drift, for ``axpack report``, the model card and ``axpack verify``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .verification import TIE_GAP


def result_row(r: dict[str, Any]) -> list[str]:
    """One row of the per-quant table (:data:`COLUMNS`) for a ``verify.json`` result."""
    if "crashed" in r:
        return [r["file"], r["type"], f"{r['size'] / 2**20:.1f}", "-", "-", "-", "-", "-", "FAIL: " + r["crashed"]]
    need = f" (≥ {r['threshold']:g} %)" if r.get("threshold") is not None else ""
    return [r["file"], r["type"], f"{r['size'] / 2**20:.1f}", f"{r['agreement']:.1f} %{need}",
            f"{r['raw_agreement']:.1f} %", f"{r['max_abs_dlogit']:.3f}", f"{r['tokens_per_s']:.1f}",
            f"{r['stopped']}/{r['stop_prompts']}",
            ("pass" + (" (no agreement threshold)" if r.get("threshold") is None else "")) if r["pass"]
            else "FAIL: " + "; ".join(r["failures"])]


COLUMNS = ("GGUF", "type", "size (MiB)", "argmax agreement", "incl. near-ties", "max |Δlogit|", "tokens/s",
           "stops at EOT", "result")


def table_markdown(doc: dict[str, Any]) -> list[str]:
    """The per-quant table as Markdown lines (used by axpack report and the model card)."""
    head = (f"Reference: `{doc['reference']}`; {doc['conversations']} prompts answered greedily "
            f"(by {doc.get('answers_from', 'the reference')}), "
            f"{doc['positions']} answer positions with a top-2 logit gap ≥ {doc.get('tie_gap', TIE_GAP):g} "
            f"({doc.get('raw_positions', doc['positions'])} incl. near-ties).")
    lines = [head, "",
             "| " + " | ".join(c.replace("|", "\\|") for c in COLUMNS) + " |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in doc["results"]:
        lines.append("| " + " | ".join(c.replace("|", "/") for c in result_row(r)) + " |")
    return lines


QUALITY_COLUMNS = ("GGUF", "type", "set", "tokens", "mean KLD", "p99 KLD", "same top-1", "PPL ratio", "RMS Δp",
                   "gates")


def _gate_text(g: dict[str, float] | None) -> str:
    if not g:
        return "no gate"
    return f"≤ {g['mean_kld']:g} / ≤ {g['p99_kld']:g} / ≥ {g['top1']:g} % / ≤ {g['ppl_ratio']:g}"


def quality_rows(doc: dict[str, Any]) -> list[list[str]]:
    """Rows of the KLD table: one per GGUF and scored set (verify.json ``results[].quality``)."""
    rows = []
    for r in doc["results"]:
        qs = r.get("quality") or {}
        for name in sorted(qs, key=lambda n: (n != "text", n != "conversations", n)):  # verify.json sorts keys
            q = qs[name]
            if not q.get("tokens"):
                continue
            rows.append([r["file"], r["type"] + (" + imatrix" if r.get("imatrix") else ""), name, str(q["tokens"]),
                         f"{q['mean_kld']:.4f}", f"{q['p99_kld']:.3f}",
                         f"{q['top1']:.1f} %", f"{q['ppl_ratio']:.3f}", f"{q['rms_dp']:.2f} %",
                         _gate_text(r.get("quality_gates"))])
    return rows


def quality_markdown(doc: dict[str, Any]) -> list[str]:
    """The KLD table (and drift, when measured) of a verify document as Markdown lines; [] for an old verify.json."""
    qd = doc.get("quality")
    rows = quality_rows(doc)
    if not qd or not rows:
        return []
    lines = [f"KL divergence to the reference, llama.cpp's statistics (`llama-perplexity --kl-divergence`): "
             f"reference {qd['reference']}; `text` = `{Path(qd['eval_text']).name}` "
             f"(sha256 {qd['eval_text_sha256'][:12]}…), `conversations` = "
             + (f"`{qd['conversations']}` rendered with the chat template" if qd.get("conversations") else "none")
             + f"; windows of {qd['window']} tokens. Gates: mean KLD / p99 KLD / same top-1 / PPL ratio."
             + (" The conversations are also the importance matrix's calibration data: for the `+ imatrix` "
                "quants only the `text` rows are held out." if qd.get("calibration_overlap") else ""), "",
             "| " + " | ".join(QUALITY_COLUMNS) + " |", "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
    return lines


def drift_markdown(doc: dict[str, Any]) -> list[str]:
    """How far fine-tuning moved the model from its base (verify.json ``drift``) as Markdown lines."""
    d = doc.get("drift")
    if not d:
        return []
    lines = [(f"KL divergence of the tuned model (`{d['reference']}`) to its base (`{d['base']}`), per token, "
             "tuned as the reference distribution. General text is what the fine-tune should not change; "
             "its own conversations are what it should."), "",
             "| set | tokens | mean KLD | p99 KLD | same top-1 | PPL tuned | PPL base |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name in ("text", "conversations"):
        q = d.get(name)
        if q and q.get("tokens"):
            lines.append(f"| {name} | {q['tokens']} | {q['mean_kld']:.4f} | {q['p99_kld']:.3f} | {q['top1']:.1f} % | "
                         f"{q['ppl_ref']:.2f} | {q['ppl']:.2f} |")
    return lines
