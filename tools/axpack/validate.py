"""``axpack validate CONFIG...``: Axolotl's schema, the pack's pitfalls, names and data files
(the checks: :mod:`axpack.validation`)."""

from __future__ import annotations

import click

from .errors import AxpackError
from .validation import validate_paths


@click.command("validate")
@click.argument("configs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--no-data", is_flag=True,
              help="Skip inputs made by earlier steps (prep's dataset files, merge's runs/ base model).")
def command(configs, no_data):
    """Check CONFIGs: Axolotl's schema (offline, GPU-free), unknown keys, names, pitfalls, files."""
    results = validate_paths(list(configs), check_data=not no_data)
    bad = 0
    total = 0
    for path, problems in results.items():
        for p in problems:
            click.echo(str(p))
        total += len(problems)
        bad += bool(problems)
        if not problems:
            click.echo(f"{path}: ok")
    if total:
        raise AxpackError(f"validate: {total} problem(s) in {bad} of {len(results)} config(s); "
                          "each line above names the key and the fix")
