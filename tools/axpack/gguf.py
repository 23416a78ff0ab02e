"""``axpack gguf MODEL_DIR``: convert once to GGUF, quantize to each type (engine:
:mod:`axpack.gguf_build`)."""

from __future__ import annotations

import click

from .gguf_build import OUTTYPES, build_ggufs, parse_quants


@click.command("gguf")
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Folder for the GGUFs.")
@click.option("--name", required=True, help="File stem: {name}-{type}.gguf.")
@click.option("--quants", default="q4_k_m,q8_0", show_default=True, help="Comma-separated quant types.")
@click.option("--outtype", type=click.Choice(OUTTYPES), default="f16", show_default=True,
              help="Type of the one converted intermediate.")
@click.option("--llama-cpp-dir", type=click.Path(file_okay=False), help="Your own llama.cpp checkout.")
@click.option("--imatrix", "imatrix", type=click.Path(dir_okay=False), default=None,
              help="Quantize with an importance matrix: the run's conversations (a prep JSONL, e.g. "
                   "runs/<run>/data/sft.jsonl) to compute {name}-imatrix.gguf from, or an imatrix .gguf.")
@click.option("--imatrix-tokens", type=click.IntRange(min=16), default=None,
              help="Calibration token budget [default: 8192].")
def command(model_dir, out, name, quants, outtype, llama_cpp_dir, imatrix, imatrix_tokens):
    """Convert MODEL_DIR to GGUF once, then quantize it to each type."""
    paths = build_ggufs(model_dir, out, name, parse_quants(quants), outtype, llama_cpp_dir,
                        imatrix=imatrix, imatrix_tokens=imatrix_tokens)
    for t, p in paths.items():
        click.echo(f"axpack: {t:>7}  {p}")
