"""``axpack smoke CONFIG [--max-steps 3] [--cpu]``: run a shipped config for a
few optimizer steps and print the numbers a user keeps per run.

The click command only: the work (the override table, the run, the metrics)
is :mod:`axpack.smoke_run`, whose docstring lists every key smoke changes and
why. The overrides are printed (stdout) before the run, Axolotl's output and
the launch line stream to stderr, and the result table ends on stdout.
"""

from __future__ import annotations

import click

from .config import parse_overrides
from .run_metrics import table
from .smoke_run import CPU_SEQUENCE_LEN, describe, plan_smoke, run_smoke


@click.command("smoke")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--max-steps", "--max_steps", "max_steps", type=int, default=3, show_default=True,
              help="Optimizer steps (written into the resolved YAML).")
@click.option("--cpu", is_flag=True, help="Run on the config's shape twin with the CPU deltas (printed).")
@click.option("--sequence-len", type=int, default=CPU_SEQUENCE_LEN, show_default=True,
              help="sequence_len under --cpu.")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Read the dataset files from this folder.")
@click.option("--out", type=click.Path(file_okay=False), help="output_dir [default: runs/smoke/<model>/<name>].")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a config key (dotted), last.")
@click.option("--nproc", type=int, default=1, show_default=True, help="Processes to launch.")
@click.option("--quiet", "-q", is_flag=True, help="Keep Axolotl's output in smoke.log only.")
@click.option("--base-dir", type=click.Path(file_okay=False), help="--cpu: train on this model folder instead "
              "of the twin (e.g. the merged SFT twin for a DPO config).")
def command(config, max_steps, cpu, sequence_len, data_dir, out, sets, nproc, quiet, base_dir):
    """Run CONFIG for a few steps (on its shape twin with --cpu) and print runtime, memory, params, tokens/s, loss."""
    def err(msg: str) -> None:
        click.echo(msg, err=True)

    setup = plan_smoke(config, max_steps, cpu, parse_overrides(sets), out, data_dir, sequence_len, base_dir,
                       log=err)
    for line in describe(setup):
        click.echo(line)
    row = run_smoke(setup, nproc, echo=not quiet, log=err)
    click.echo(table([row]))
