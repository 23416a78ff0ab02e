"""Engine: turn a config into the exact YAML and argument list Axolotl trains.

Used by ``axpack train`` (the whole run, with its skip/validate policy) and
``axpack smoke`` (a few steps on shrunk settings): both resolve the config
through :func:`prepare` (so ``max_steps`` is written into the YAML: Axolotl
drops a command-line ``--max_steps`` under ``strict: true`` when the YAML has
no ``max_steps`` key) and launch :func:`axolotl_command`. Progress lines go to
the ``log`` callback (default: this module's :mod:`logging` logger).
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import env
from .config import resolve, stage_of, write_resolved
from .errors import AxpackError
from .runs import RESOLVED_FILE, dataset_paths, latest_checkpoint

CPU_SHIM = "axpack.cpu_shim"
LOG = logging.getLogger(__name__)


def prepare(
    config: str | Path,
    overrides: dict[str, Any] | None = None,
    stage: str | None = None,
    max_steps: int | None = None,
    resume: bool = False,
    trust_remote_code: bool = False,
) -> tuple[dict[str, Any], Path]:
    """Resolve ``config`` for training and write it; return (cfg, resolved path).

    The resolved YAML is ``<output_dir>/axpack-config.yaml``
    (:data:`axpack.runs.RESOLVED_FILE`); ``max_steps`` (>= 1 optimizer steps)
    and, with ``resume``, ``resume_from_checkpoint`` (the latest complete
    ``checkpoint-N``) are written into it.

    Raises:
        AxpackError: ``max_steps`` < 1, wrong stage, missing ``output_dir``,
            missing dataset file, nothing to resume from, ``trust_remote_code:
            true`` without ``trust_remote_code=True`` (the ``--trust-remote-code`` flag).
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


def preprocess(config: str | Path, resolved: Path, log: Callable[[str], None] | None = None) -> None:
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
    (log or LOG.info)("axpack: " + " ".join(cmd))
    proc = subprocess.run(cmd, env=env.child_env(), check=False)
    if proc.returncode != 0:
        raise AxpackError(f"{config}: axolotl preprocess exited with code {proc.returncode}; its log is above "
                          f"(resolved config: {resolved})")
