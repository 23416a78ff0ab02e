"""``axpack launch CONFIG --nodes N --gpus-per-node G --scheduler S [--dry-run]``:
the files that start one Axolotl run on several machines, checked first.

Schedulers (one folder each, ``<output_dir>/launch/<scheduler>/`` unless
``--out``; every form starts ``-m axolotl.cli.train config.yaml`` in each rank):

==============  ==================  ===========================================
scheduler       file                how it is used
==============  ==================  ===========================================
torchrun        ``torchrun.sh``     run the same script on every node
                                    (``MASTER_ADDR`` = head node); c10d rendezvous
accelerate      ``accelerate.yaml`` ``accelerate launch --config_file F
                                    --machine_rank K -m axolotl.cli.train CFG``
slurm           ``sbatch.sh``       ``sbatch`` it from the repo root
ray             ``ray.sh``          on the Ray head node: ``axolotl train CFG
                                    --use-ray`` with ``use_ray``/``ray_num_workers``
                                    /``resources_per_worker`` in the config
==============  ==================  ===========================================

Beside it, ``config.yaml``: the config as given plus what the launch changes
(``--eff-batch B`` rewrites ``gradient_accumulation_steps`` to ``B / (micro ×
world)``; Ray adds its keys). Each change is printed and written as a comment.

Preflight (``axpack.distributed.preflight``; rules and sources there):
``--eff-batch`` not divisible by ``micro × world`` and fixed DeepSpeed batch
sizes that disagree; a multi-node run without ``NCCL_SOCKET_IFNAME``
(``--env``); multi-node Ray with an ``output_dir`` not on shared storage
(``--shared-dir``). Each failure is one line on stderr; exit 1, nothing
written. ``--dry-run`` prints the files instead of writing them (the golden
files in ``tests/golden/launch/`` are that output).

One machine is simpler: ``axpack train CONFIG --nproc N`` (``make sft
NPROC=N``) runs the same torchrun line as ``torchrun.sh`` for one node.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from .config import parse_overrides, resolve
from .errors import AxpackError
from .fsutil import atomic_write_text


def _env_pairs(items: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not key.strip().replace("_", "").isalnum():
            raise AxpackError(f"--env {item}: expected NAME=VALUE, e.g. --env NCCL_SOCKET_IFNAME=eth0")
        out[key.strip()] = value
    return out


def plan_launch(config: str | Path, nodes: int, gpus_per_node: int, scheduler: str, out: Path | None = None,
                env: dict[str, str] | None = None, eff_batch: int | None = None, port: int = 29500,
                shared_dirs: tuple[str, ...] = (), partition: str | None = None, time_limit: str | None = None,
                overrides: dict | None = None):
    """Build the launch of ``config``: ``(spec, files, changes, problems)``.

    Raises:
        AxpackError: the config does not load, an override names a missing
            parent key, or there is no ``output_dir``.
    """
    from .distributed import LaunchSpec, preflight, render

    cfg = resolve(config, overrides)
    if not cfg.get("output_dir"):
        raise AxpackError(f"{config}: output_dir: missing; set it to runs/<run>/<stage>")
    spec = LaunchSpec(config=str(config), cfg=cfg, nodes=nodes, gpus_per_node=gpus_per_node, scheduler=scheduler,
                      out=out or Path(str(cfg["output_dir"])) / "launch" / scheduler, port=port, env=env or {},
                      eff_batch=eff_batch, shared_dirs=shared_dirs, partition=partition, time_limit=time_limit)
    files, changes = render(spec)
    return spec, files, changes, preflight(spec)


@click.command("launch")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--nodes", type=click.IntRange(min=1), default=1, show_default=True, help="Machines.")
@click.option("--gpus-per-node", type=click.IntRange(min=1), required=True, help="GPUs (ranks) per machine.")
@click.option("--scheduler", type=click.Choice(["torchrun", "accelerate", "slurm", "ray"]), default="torchrun",
              show_default=True, help="How the ranks are started.")
@click.option("--dry-run", is_flag=True, help="Print the files instead of writing them.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the files [default: <output_dir>/launch/<scheduler>].")
@click.option("--eff-batch", type=click.IntRange(min=1), default=None,
              help="Keep this effective batch: GA = B / (micro × world).")
@click.option("--env", "envs", multiple=True, metavar="NAME=VALUE",
              help="Exported on every node (NCCL_SOCKET_IFNAME=eth0, ...).")
@click.option("--shared-dir", "shared_dirs", multiple=True, type=click.Path(file_okay=False),
              help="A folder every node mounts (multi-node Ray: output_dir must be under one).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a config key (dotted), e.g. output_dir=/shared/runs/ops/sft.")
@click.option("--port", type=click.IntRange(1, 65535), default=29500, show_default=True, help="Rendezvous port.")
@click.option("--partition", default=None, help="Slurm partition.")
@click.option("--time", "time_limit", default=None, help="Slurm time limit, e.g. 12:00:00.")
def command(config, nodes, gpus_per_node, scheduler, dry_run, out, eff_batch, envs, shared_dirs, sets, port,
            partition, time_limit):
    """Render and check the launch files of CONFIG for NODES × GPUS-PER-NODE ranks."""
    spec, files, changes, problems = plan_launch(config, nodes, gpus_per_node, scheduler, out, _env_pairs(envs),
                                                 eff_batch, port, tuple(shared_dirs), partition, time_limit,
                                                 parse_overrides(sets))
    if problems:
        for p in problems[:-1]:
            click.echo(f"axpack: error: {config}: {p}", err=True)
        raise AxpackError(f"{config}: {problems[-1]}")
    click.echo(f"axpack launch: {config}: {spec.nodes} node(s) × {spec.gpus_per_node} GPU(s) = {spec.world} ranks, "
               f"{spec.scheduler}")
    for c in changes:
        click.echo(f"  changed {c}")
    if dry_run:
        cfg_file, *launchers = files
        click.echo(f"==> {cfg_file.path} <== ({config}" + (" with the changes above)" if changes else ", unchanged)"))
        for f in launchers:
            click.echo(f"==> {f.path} <==")
            click.echo(f.text, nl=False)
        return
    for f in files:
        atomic_write_text(f.path, f.text)
        if f.executable:
            os.chmod(f.path, 0o755)
        click.echo(f"  wrote {f.path}")
