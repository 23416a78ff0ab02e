"""Merge a trained LoRA adapter into its base model.

``axpack merge CONFIG`` reads the config Axolotl trained (``output_dir`` holds
the adapter) and writes the merged HF folder next to it: an SFT config merges
into ``runs/<run>/sft-merged/`` (the base for DPO, "Plan C"), a DPO config into
``runs/<run>/merged/`` (the final model).

The work is :func:`axpack.merging.run_merge`; this module is the click
command (progress on stderr, the outcome on stdout). The merge is axpack's
own streaming merge (:mod:`axpack.lora_merge`): one tensor in memory at a
time, bit-identical to PEFT's ``merge_and_unload``.
Axolotl's ``merge-lora`` measured 961 MB above its import baseline where a
tensor-at-a-time merge needs ~390 MB on the same 1.1 GB model, too much for the
memory goal of a 7-9B merge on a 24 GB machine. ``--engine axolotl`` still runs
Axolotl's merge-lora for what axpack refuses (DoRA, resized embeddings).

For QLoRA configs (``adapter: qlora`` / ``load_in_4bit``) the delta is folded
into the NF4 round trip of the base by default — the weights the adapter was
trained against — and ``--qlora-base pristine`` folds it into the original
weights; the choice and its reason are printed and recorded.

The tokenizer files come from the training output, so the merged folder
carries exactly the chat template and special tokens the model was trained
with. The folder appears atomically with ``axpack-merge.json`` (a fingerprint
of the adapter, base and settings); a rerun with the same fingerprint is
skipped.
"""

from __future__ import annotations

import click

from .config import parse_overrides
from .merging import ENGINES, run_merge


@click.command("merge")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Same overrides as at training.")
@click.option("--out", type=click.Path(file_okay=False), help="Target folder [default: sft-merged/ or merged/].")
@click.option("--force", is_flag=True, help="Merge again even if the target holds this merge.")
@click.option("--engine", type=click.Choice(ENGINES), default="axpack", show_default=True,
              help="axpack's streaming merge, or Axolotl's merge-lora (for DoRA / resized embeddings).")
@click.option("--qlora-base", type=click.Choice(["nf4", "pristine"]), default="nf4", show_default=True,
              help="QLoRA only: fold the delta into the NF4 round trip of the base (the trained model) "
                   "or into the original weights.")
def command(config, sets, out, force, engine, qlora_base):
    """Merge CONFIG's trained LoRA adapter into its base model."""
    res = run_merge(config, parse_overrides(sets), out, force, engine, qlora_base,
                    log=lambda m: click.echo(m, err=True))
    click.echo(f"axpack: {res.path} already holds this merge; skipping (--force merges again)" if res.skipped
               else f"axpack: merged -> {res.path}")
