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

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import click

from . import env
from .config import parse_overrides, resolve, stage_of, write_resolved
from .errors import AxpackError
from .fsutil import atomic_write_json, sha256_file

DONE_FILE = "axpack-done.json"
RESOLVED_FILE = "axpack-config.yaml"
CPU_SHIM = "axpack.cpu_shim"


def dataset_paths(cfg: dict[str, Any]) -> list[Path]:
    """Local files named by ``datasets`` and ``test_datasets`` (hub ids skipped)."""
    out = []
    for key in ("datasets", "test_datasets"):
        for ds in cfg.get(key) or []:
            if isinstance(ds, dict) and ds.get("path"):
                p = Path(str(ds["path"]))
                if p.suffix in {".json", ".jsonl", ".parquet", ".csv", ".txt"} or p.exists():
                    out.append(p)
    return out


def fingerprint(cfg: dict[str, Any]) -> str:
    """sha256 over the resolved config (canonical JSON) and its local data files."""
    h = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode())
    for p in dataset_paths(cfg):
        if p.is_file():
            h.update(sha256_file(p).encode())
    return h.hexdigest()


def _complete(ckpt: Path) -> bool:
    """True when ``ckpt/trainer_state.json`` parses: HF Trainer's
    ``_save_checkpoint`` writes it last (after weights, optimizer, scheduler
    and RNG state), so a run killed while saving leaves a folder without it."""
    try:
        return isinstance(json.loads((ckpt / "trainer_state.json").read_text()), dict)
    except (OSError, ValueError):
        return False


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The complete ``checkpoint-N`` folder with the largest N, or None.

    A half-written checkpoint (the process was killed while saving it) is
    skipped: resuming from it would fail or load partial weights.
    """
    ckpts = [p for p in output_dir.glob("checkpoint-*")
             if p.is_dir() and p.name.split("-")[-1].isdigit() and _complete(p)]
    return max(ckpts, key=lambda p: int(p.name.split("-")[-1])) if ckpts else None


def prepare(
    config: str | Path,
    overrides: dict[str, Any] | None = None,
    stage: str | None = None,
    max_steps: int | None = None,
    resume: bool = False,
    trust_remote_code: bool = False,
) -> tuple[dict[str, Any], Path]:
    """Resolve ``config`` for training and write it; return (cfg, resolved path).

    Raises:
        AxpackError: wrong stage, missing ``output_dir``, missing dataset file,
            nothing to resume from, ``trust_remote_code: true`` without
            ``trust_remote_code=True`` (the ``--trust-remote-code`` flag).
    """
    overrides = dict(overrides or {})
    if max_steps is not None:
        if int(max_steps) < 1:  # HF Trainer reads max_steps <= 0 as "unset": the full num_epochs would run
            raise AxpackError(f"--max-steps {max_steps}: expected at least 1 optimizer step")
        # Written into the YAML: a CLI --max_steps is dropped by Axolotl under
        # strict: true when the YAML has no max_steps key.
        overrides["max_steps"] = int(max_steps)
    cfg = resolve(config, overrides)
    actual = stage_of(cfg)
    if stage and actual != stage:
        want = "rl: dpo" if stage == "dpo" else "no rl key"
        raise AxpackError(
            f"{config}: this is a {actual.upper()} config but the {stage} step needs {want}; "
            f"use make {actual} CONFIG={config}"
        )
    if cfg.get("trust_remote_code") and not trust_remote_code:
        # Axolotl would import and run Python files shipped beside the model
        # (its config's auto_map); a config copied from elsewhere must not do that silently.
        raise AxpackError(
            f"{config}: trust_remote_code: true runs Python code shipped with the model; "
            "read that code, then pass --trust-remote-code (or remove the key)"
        )
    if not cfg.get("output_dir"):
        raise AxpackError(f"{config}: output_dir: missing; set it to runs/<run>/{actual}")
    for p in dataset_paths(cfg):
        if not p.exists():
            raise AxpackError(
                f"{config}: datasets: {p} not found; run axpack prep (make prep) first, or fix the path"
            )
    out = Path(cfg["output_dir"])
    if resume:
        ckpt = latest_checkpoint(out)
        if ckpt is None:
            raise AxpackError(f"{out}: no checkpoint-N folder to resume from; run without RESUME=1")
        cfg["resume_from_checkpoint"] = str(ckpt)
    path = write_resolved(cfg, out / RESOLVED_FILE)
    return cfg, path


def is_done(cfg: dict[str, Any]) -> bool:
    """True when ``output_dir`` holds a finished run with the same fingerprint."""
    done = Path(cfg["output_dir"]) / DONE_FILE
    if not done.is_file():
        return False
    try:
        return json.loads(done.read_text()).get("fingerprint") == fingerprint(cfg)
    except (OSError, ValueError):
        return False


def axolotl_command(resolved: Path, nproc: int = 1) -> list[str]:
    """The argument list that trains ``resolved`` (never a shell string).

    One process: ``python -m axolotl.cli.train CFG``. ``nproc > 1``:
    ``torchrun --standalone --nnodes 1 --nproc-per-node N -m
    axolotl.cli.train CFG`` (the one-node form of ``axpack launch``'s
    ``torchrun.sh``; Axolotl's ``--launcher torchrun`` runs the same line).
    On a machine without CUDA devices each rank starts ``-m axpack.cpu_shim``
    instead (gloo; Axolotl's CUDA p2p probes neutralised, see that module).

    Raises:
        AxpackError: ``nproc`` exceeds the GPUs of a machine that has some.
    """
    if nproc > 1:
        from .distributed import local_train_argv

        try:
            return local_train_argv(resolved, nproc, env.venv_bin())[0]
        except ValueError as err:
            raise AxpackError(str(err)) from None
    return [sys.executable, "-m", "axolotl.cli.train", str(resolved)]


def preprocess(config: str | Path, resolved: Path) -> None:
    """Tokenize ``resolved``'s datasets once, in one process, before the ranks
    start: ``python -m axolotl.cli.preprocess CFG`` (``axolotl preprocess``)
    writes them to ``dataset_prepared_path`` and every rank then only loads
    the Arrow files.

    Why not let the ranks do it: Axolotl 0.21 prepares data inside a file
    lock (axolotl/utils/data/lock.py ``FileLockLoader``) that one rank holds
    while it tokenizes with a ``fork``-ed process pool
    (utils/data/work_queue.py) — after the process group's threads exist; a
    fork from a multi-threaded process can leave a worker blocked forever on a
    lock some other thread held, and the other ranks wait on the file lock
    behind it. That matches the hang first seen with two CPU ranks (rank 1
    logs "Loading raw datasets", then nothing for 8 min); it did not recur in
    3 later two-rank runs here, as an intermittent fork deadlock would not.
    Axolotl itself warns to pre-process before multi-process training.

    Raises:
        AxpackError: the preprocess step exited non-zero.
    """
    cmd = [sys.executable, "-m", "axolotl.cli.preprocess", str(resolved)]
    click.echo("axpack: " + " ".join(cmd), err=True)
    proc = subprocess.run(cmd, env=env.child_env(), check=False)
    if proc.returncode != 0:
        raise AxpackError(f"{config}: axolotl preprocess exited with code {proc.returncode}; its log is above "
                          f"(resolved config: {resolved})")


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
        AxpackError: see :func:`prepare`; the first validation problem
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
        click.echo(f"axpack: no CUDA device: {nproc} CPU ranks over gloo, each started through {CPU_SHIM} "
                   "(Axolotl's CUDA p2p probes neutralised)", err=True)
    if nproc > 1:
        preprocess(config, resolved)
    click.echo("axpack: " + " ".join(cmd), err=True)
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
    from .validate import validate_config

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
