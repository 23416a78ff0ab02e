"""``python -m axpack.cpu_shim CONFIG``: ``python -m axolotl.cli.train CONFIG``
for one rank of a multi-process run on a machine WITHOUT a GPU.

Why: Axolotl 0.21's ``prepare_optim_env`` (axolotl/utils/trainer.py) calls
``check_cuda_p2p_ib_support`` -> ``check_cuda_p2p_support``
(axolotl/utils/environment.py), which calls
``torch.cuda.can_device_access_peer`` whenever ``WORLD_SIZE > 1``. A CUDA
build of torch on a machine with no driver raises ``RuntimeError: Found no
NVIDIA driver`` there, before any process group exists, so no multi-rank run
can start on CPU. On CPU there is no peer-to-peer path to probe: both probes
answer True ("nothing to disable"), which leaves ``NCCL_P2P_DISABLE`` /
``NCCL_IB_DISABLE`` alone, exactly what Axolotl does on GPUs with working
P2P; the ranks then talk over gloo (accelerate's backend for CPU ranks).

Second CPU-only gap, measured once the probes pass: ``normalize_config``
(axolotl/utils/config/__init__.py) sets ``device_map = {"": LOCAL_RANK}``
for every run with ``WORLD_SIZE > 1``; an integer device is ``cuda:N`` to
transformers, so loading the weights fails with the same "no NVIDIA driver"
error. On CPU ranks the wrapper below turns that one value into ``{"":
"cpu"}`` (what ``choose_device`` itself picks on CPU) right after
``normalize_config`` returns; every other key is left as Axolotl set it.

Scope, on purpose narrow:

- used only when this process sees no CUDA device (``axpack train --nproc N``
  picks this module only then, and :func:`main` checks again): with a GPU it
  patches nothing and runs Axolotl unchanged, so GPU runs never see it;
- replaces the two probe functions and wraps ``normalize_config`` in the
  modules that hold them (the defining module and every Axolotl module that
  imported them by name), nothing else;
- everything after that is ``axolotl.cli.train`` run as ``__main__``
  (``runpy``), with the same ``sys.argv``.
"""

from __future__ import annotations

import runpy
import sys

TRAIN_MODULE = "axolotl.cli.train"
PROBES = ("check_cuda_p2p_support", "check_cuda_p2p_ib_support")
# Axolotl modules that bind the probes / normalize_config at import (``from ...
# import``); tests/test_scale.py checks them against the installed Axolotl.
HOLDERS = ("axolotl.utils.environment", "axolotl.utils.trainer")
NORMALIZE_HOLDERS = ("axolotl.utils.config", "axolotl.cli.config")


def _no_p2p_to_probe() -> bool:
    """CPU ranks: no GPU pair exists, so there is no P2P/IB path to disable."""
    return True


def has_gpu() -> bool:
    """True when this process sees at least one CUDA device."""
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.device_count() > 0)


def _cpu_device_map(normalize):
    """Wrap Axolotl's ``normalize_config``: a rank's integer ``device_map``
    (``{"": LOCAL_RANK}``, i.e. ``cuda:N``) becomes ``{"": "cpu"}``."""

    def normalize_config(cfg, *args, **kwargs):
        out = normalize(cfg, *args, **kwargs)
        dm = cfg.get("device_map") if hasattr(cfg, "get") else None
        if isinstance(dm, dict) and set(dm) == {""} and isinstance(dm[""], int):
            cfg["device_map"] = {"": "cpu"}
        return out

    normalize_config.__wrapped__ = normalize
    return normalize_config


def neutralise_probes() -> list[str]:
    """Replace Axolotl's CUDA p2p probes with :func:`_no_p2p_to_probe`;
    return the ``module.function`` names replaced.

    Raises:
        RuntimeError: called in a process that sees a GPU (never patch GPU runs).
    """
    if has_gpu():
        raise RuntimeError("axpack.cpu_shim: a CUDA device is visible; the p2p probes stay as they are on GPUs")
    import importlib

    done = []
    for name in HOLDERS:
        mod = importlib.import_module(name)
        for probe in PROBES:
            if hasattr(mod, probe):
                setattr(mod, probe, _no_p2p_to_probe)
                done.append(f"{name}.{probe}")
    for name in NORMALIZE_HOLDERS:
        mod = importlib.import_module(name)
        current = getattr(mod, "normalize_config", None)
        if current is not None and not hasattr(current, "__wrapped__"):
            mod.normalize_config = _cpu_device_map(current)
            done.append(f"{name}.normalize_config")
    return done


def cpu_rank_setup() -> dict[str, str]:
    """Process settings of a CPU rank (see :func:`axpack.distributed.cpu_rank_env`
    for why), applied here too so every launcher that starts this module (train,
    smoke, a hand-written torchrun line) gets them: ``ACCELERATE_USE_CPU=true``
    unless set, and one torch thread per rank's share of the cores unless
    ``OMP_NUM_THREADS`` is set. Returns what it set."""
    import os

    import torch

    done = {}
    if "ACCELERATE_USE_CPU" not in os.environ:
        os.environ["ACCELERATE_USE_CPU"] = done["ACCELERATE_USE_CPU"] = "true"
    if "OMP_NUM_THREADS" not in os.environ:
        ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
        threads = max(1, (os.cpu_count() or 1) // max(1, ranks))
        torch.set_num_threads(threads)
        done["torch.set_num_threads"] = str(threads)
    return done


def main() -> None:
    """Run ``axolotl.cli.train`` with ``sys.argv[1:]``; on a process without a
    GPU first set up the CPU rank and neutralise the probes."""
    if not has_gpu():
        cpu_rank_setup()
        neutralise_probes()
    sys.argv[0] = TRAIN_MODULE
    runpy.run_module(TRAIN_MODULE, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
