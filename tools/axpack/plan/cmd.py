"""The ``axpack plan`` click command: options, ``--price`` parsing, output format.

The only command module of the package. The CLI asks the package for
``axpack.plan.command``, which the package resolves lazily to this module's
:func:`command` (the module is not named ``command`` so that importing it
cannot rebind the package attribute). The work is
:func:`axpack.plan.compute.plan_config`.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import EXIT_USAGE, AxpackError
from .compute import plan_config
from .gpus import GPUS
from .render import render_markdown, render_terminal


def parse_prices(items: tuple[str, ...]) -> dict[str, float]:
    """``("A100-80=1.9",)`` -> ``{"A100-80": 1.9}``.

    Raises:
        AxpackError: not ``GPU=USD`` or an unknown GPU key (exit 2).
    """
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        if key not in GPUS or not value:
            raise AxpackError(f"--price {item}: expected GPU=USD with GPU one of {', '.join(GPUS)}", EXIT_USAGE)
        try:
            out[key] = float(value)
        except ValueError:
            raise AxpackError(f"--price {item}: {value!r} is not a number", EXIT_USAGE) from None
    return out


@click.command("plan")
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="prep output folder (summary.json, sft.jsonl, dpo.jsonl); stage from the config's rl key")
@click.option("--num-examples", type=click.IntRange(min=0), default=None,
              help="examples (or pairs) to plan for: all of them when val_set_size holds some out, the training "
                   "examples when validation is its own file (test_datasets)")
@click.option("--tokens-per-example", type=click.FloatRange(min=1), default=None,
              help="mean tokens per example (per pair for DPO), e.g. from `axpack stats`")
@click.option("--world-size", type=click.IntRange(min=1), default=1, show_default=True, help="GPUs (DDP/DeepSpeed)")
@click.option("--card", default=None, help="model card id or configs/ folder name, when base_model is not recognised")
@click.option("--price", "prices", multiple=True, help="USD per GPU-hour, e.g. --price A100-80=1.89")
@click.option("--tokenizer", "tokenizer_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="model folder whose tokenizer + chat template count the tokens")
@click.option("--no-tokenizer", is_flag=True, help="estimate tokens as chars/4 even when a local tokenizer exists")
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "json"]), default="table", show_default=True)
def command(config: Path, data_dir: Path | None, num_examples: int | None, tokens_per_example: float | None,
            world_size: int, card: str | None, prices: tuple[str, ...], tokenizer_dir: Path | None,
            no_tokenizer: bool, fmt: str) -> None:
    """Training math of CONFIG: steps, tokens, LoRA scale, memory, time and cost per GPU.

    Steps follow what Axolotl 0.21 + transformers 5.20.1 run; memory is within
    ~10% of measured runs, time ±50%. Formulas and their sources:
    `python -m pydoc axpack.plan`.
    """
    if data_dir is not None and num_examples is not None:
        raise click.UsageError("pass --data or --num-examples, not both")
    p = plan_config(config, data_dir=data_dir, num_examples=num_examples, tokens_per_example=tokens_per_example,
                    world_size=world_size, card=card, prices=parse_prices(prices), tokenize=not no_tokenizer,
                    tokenizer_dir=tokenizer_dir)
    if fmt == "json":
        click.echo(json.dumps(p.to_dict(), indent=2, ensure_ascii=False, default=str))
    elif fmt == "markdown":
        click.echo(render_markdown(p), nl=False)
    else:
        render_terminal(p)
