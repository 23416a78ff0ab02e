"""``axpack verify EXPORT_DIR``: prove each GGUF is the model that was trained
(the checks: :mod:`axpack.verification`; the tables: :mod:`axpack.verify_tables`)."""

from __future__ import annotations

from typing import Any

import click

from .errors import AxpackError
from .verification import verify_export
from .verify_tables import COLUMNS, QUALITY_COLUMNS, quality_rows, result_row


def print_table(doc: dict[str, Any]) -> None:
    """The per-quant table on the terminal (rich)."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"axpack verify: {doc['export_dir']} vs {doc['reference']} "
                    f"({doc['positions']} decisive answer positions of {doc.get('raw_positions')})")
    for i, col in enumerate(COLUMNS):
        t.add_column(col, justify="left" if i in (0, 1, 8) else "right")
    for r in doc["results"]:
        t.add_row(*result_row(r))
    Console(width=160).print(t)


def print_quality(doc: dict[str, Any]) -> None:
    """The KLD table (and drift) on the terminal (rich)."""
    from rich.console import Console
    from rich.table import Table

    rows = quality_rows(doc)
    if rows:
        t = Table(title=f"KL divergence vs {doc['reference']} (gates: mean KLD / p99 KLD / same top-1 / PPL ratio)")
        for i, col in enumerate(QUALITY_COLUMNS):
            t.add_column(col, justify="left" if i in (0, 1, 2, 9) else "right")
        for row in rows:
            t.add_row(*row)
        Console(width=180).print(t)
    d = doc.get("drift")
    if d:
        for name in ("text", "conversations"):
            q = d.get(name)
            if q and q.get("tokens"):
                click.echo(f"drift {name}: tuned vs base mean KLD {q['mean_kld']:.4f}, same top-1 {q['top1']:.1f} %, "
                           f"PPL tuned {q['ppl_ref']:.2f} / base {q['ppl']:.2f} ({q['tokens']} tokens)")


@click.command("verify")
@click.argument("export_dir", type=click.Path(file_okay=False))
@click.option("--reference", type=click.Path(file_okay=False), default=None,
              help="HF model to compare against [default: the merged model the GGUFs were made from].")
@click.option("--threads", type=int, default=None,
              help="CPU threads for llama.cpp and torch [default: all cores; on a busy machine 1 is faster, "
                   "llama.cpp's spinning threads slow down ~20x when cores are oversubscribed].")
@click.option("--types", default=None, help="Only these GGUF types, e.g. f16,q8_0 [default: all].")
@click.option("--eval-text", type=click.Path(dir_okay=False), default=None,
              help="General text for the KLD gates [default: the shipped axpack/data/eval-text.txt].")
@click.option("--conversations", type=click.Path(dir_okay=False), default=None,
              help="messages JSONL scored with the chat template [default: the run's data/sft.val.jsonl, "
                   "else data/sft.jsonl].")
@click.option("--drift/--no-drift", default=True, show_default=True,
              help="Also measure the tuned model's KLD to its base model (found through axpack-merge.json).")
@click.option("--drift-base", type=click.Path(file_okay=False), default=None,
              help="The base model for --drift [default: the start of the reference's merge chain].")
@click.option("--force", is_flag=True, help="Verify again even when verify.json records the same inputs.")
def command(export_dir, reference, threads, types, eval_text, conversations, drift, drift_base, force):
    """Check every GGUF in EXPORT_DIR against the trained model (metadata, logits, KLD, stops).

    Writes EXPORT_DIR/verify.json when checking every GGUF against the default reference.
    """
    doc = verify_export(export_dir, reference, threads,
                        types=[t.strip().lower() for t in types.split(",") if t.strip()] if types else None,
                        eval_text=eval_text, conversations=conversations,
                        drift=(drift_base or True) if drift else False, force=force)
    print_table(doc)
    print_quality(doc)
    if not doc["pass"]:
        bad = [r for r in doc["results"] if not r["pass"]]
        raise AxpackError(f"verify: {len(bad)} of {len(doc['results'])} GGUFs failed against {doc['reference']}: "
                          + "; ".join(f"{r['file']}: {', '.join(r['failures'])}" for r in bad))
    click.echo(f"axpack: all {len(doc['results'])} GGUFs pass against {doc['reference']}")
