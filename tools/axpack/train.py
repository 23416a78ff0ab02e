"""Run Axolotl training on a resolved config.

``axpack train CONFIG`` loads the YAML, applies overrides (``--set``,
``--max-steps``/``--max_steps``), refuses a config of the wrong stage for the
Make target (``make sft`` with a DPO config), writes the resolved YAML to
``<output_dir>/axpack-config.yaml`` and runs ``python -m axolotl.cli.train``
on it in the project's environment (telemetry off always; offline only under
``AXPACK_OFFLINE=1``). Axolotl's own progress bars stream through.

A finished run leaves ``<output_dir>/axpack-done.json`` with a fingerprint of
the resolved config and the dataset files; a rerun with the same fingerprint
is skipped (``--force`` trains again).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import click

from . import env
from .config import parse_overrides
from .errors import AxpackError
from .fsutil import atomic_write_json
from .runs import DONE_FILE, fingerprint, is_done
from .training import CPU_SHIM, axolotl_command, prepare, preprocess


def _err(msg: str) -> None:
    click.echo(msg, err=True)


def run_training(
    config: str | Path,
    overrides: dict[str, Any] | None = None,
    stage: str | None = None,
    max_steps: int | None = None,
    resume: bool = False,
    force: bool = False,
    nproc: int = 1,
    trust_remote_code: bool = False,
    check: bool = True,
) -> Path:
    """Train ``config`` with Axolotl; return its ``output_dir``.

    Before Axolotl starts, the resolved config goes through ``axpack
    validate`` (Axolotl's schema, unknown keys, referenced files) and the
    file itself through the duplicate-key check: Axolotl would silently drop
    an unknown key, or fail with a traceback on a wrong type. ``check=False``
    (``--no-validate``) skips that for keys axpack does not know yet.

    Skips (and says so) when the output already holds a finished run with the
    same fingerprint, unless ``force``.

    Raises:
        AxpackError: see :func:`axpack.training.prepare`; the first validation problem
            (``file:line: key: what; todo``); Axolotl exited non-zero.
    """
    cfg, resolved = prepare(config, overrides, stage, max_steps, resume, trust_remote_code)
    out = Path(cfg["output_dir"])
    cmd = axolotl_command(resolved, nproc)  # refuses NPROC > GPUs before anything else
    if CPU_SHIM in cmd:
        sharded = [k for k in ("fsdp_version", "fsdp_config", "fsdp", "deepspeed") if cfg.get(k)]
        if sharded:
            # accelerate 1.15 makes ACCELERATE_USE_FSDP/DEEPSPEED a sharded state only on top of a
            # multi-GPU/XPU/NPU one (accelerate/state.py), never MULTI_CPU: CPU ranks would
            # silently run plain DDP with every weight on every rank.
            raise AxpackError(
                f"{config}: {sharded[0]}: FSDP/DeepSpeed shard only across GPUs; this machine has none, so "
                f"{nproc} CPU ranks would each hold the whole model (plain DDP); run it on GPUs, or check it "
                "on CPU with axpack smoke --cpu (one process, sharding keys removed)")
    if not force and not resume and is_done(cfg):
        click.echo(f"axpack: {out} already holds this run (same config and data); skipping. --force retrains.")
        return out
    if check:
        check_config(config, resolved)
    (out / DONE_FILE).unlink(missing_ok=True)
    extra = None
    if nproc > 1 and CPU_SHIM in cmd:
        from .distributed import cpu_rank_env

        extra = cpu_rank_env(nproc)
        _err(f"axpack: no CUDA device: {nproc} CPU ranks over gloo, each started through {CPU_SHIM} "
             "(Axolotl's CUDA p2p probes neutralised)")
    if nproc > 1:
        preprocess(config, resolved, log=_err)
    _err("axpack: " + " ".join(cmd))
    proc = subprocess.run(cmd, env=env.child_env(extra), check=False)
    if proc.returncode != 0:
        raise AxpackError(
            f"{config}: Axolotl exited with code {proc.returncode}; its log is above "
            f"(resolved config: {resolved})"
        )
    atomic_write_json(out / DONE_FILE, {"fingerprint": fingerprint(cfg), "config": str(config)})
    return out


def check_config(config: str | Path, resolved: Path) -> None:
    """Raise the first ``axpack validate`` problem of ``resolved`` (placed on
    the line of the key in the user's ``config``) or of a key written twice
    in ``config``; one line, with the count of further problems."""
    from .config import duplicate_keys, key_lines, line_of
    from .validation import validate_config

    dups = [f"{config}:{second}: {key}: written twice (line {first} and {second}); delete one of them"
            for key, first, second in duplicate_keys(config)]
    # Rules for *shipped* configs (relative paths, so a clone can share them)
    # don't stop a user's own run; everything else does.
    found = [p for p in validate_config(resolved, check_data=True) if not p.todo.startswith("configs are shared")]
    lines = key_lines(config)
    problems = dups + [f"{config}:{line_of(lines, p.key)}: {p.key}: {p.what}; {p.todo}" for p in found]
    if problems:
        more = f" (+{len(problems) - 1} more: axpack validate {config})" if len(problems) > 1 else ""
        raise AxpackError(problems[0] + more)


@click.command("train")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--stage", type=click.Choice(["sft", "dpo"]), help="Refuse a config of the other stage.")
@click.option("--max-steps", "--max_steps", "max_steps", type=int, help="Stop after N optimizer steps.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a config key (dotted).")
@click.option("--resume", is_flag=True, help="Resume from the last checkpoint-N in output_dir.")
@click.option("--force", is_flag=True, help="Train even if output_dir holds this finished run.")
@click.option("--nproc", type=int, default=1, show_default=True, help="Processes (GPUs) to launch.")
@click.option("--trust-remote-code", is_flag=True,
              help="Allow a config with trust_remote_code: true (runs the model's own Python files).")
@click.option("--no-validate", is_flag=True, help="Skip axpack validate before launching Axolotl.")
def command(config, stage, max_steps, sets, resume, force, nproc, trust_remote_code, no_validate):
    """Train CONFIG with Axolotl (SFT or DPO, by the config's rl key)."""
    out = run_training(config, parse_overrides(sets), stage, max_steps, resume, force, nproc, trust_remote_code,
                       check=not no_validate)
    click.echo(f"axpack: trained -> {out}")
