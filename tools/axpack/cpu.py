"""CPU-only runtime switches, in one place (foundation: no axpack imports).

On a machine without a GPU the ``fla`` package (flash-linear-attention, a
dependency Axolotl installs) breaks Qwen3.5's forward: its Triton kernels
fail with "0 active drivers". Hiding it makes transformers fall back to its
PyTorch reference kernels for the Gated DeltaNet layers (measured: a
32M-parameter Qwen3.5 twin's forward in ~1 s on 2 cores). GPU runs never
get this: :func:`cpu_child_env` is only called for ``--cpu`` runs and
:func:`hide_fla` does nothing when CUDA is available.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

CPU_SITE = Path(__file__).resolve().parent / "cpu_site"


def hide_fla(force: bool = False) -> bool:
    """Hide ``fla`` from this process (before transformers imports a Qwen3.5 model).

    Does nothing when CUDA is available, unless ``force``. Returns True when hidden.
    """
    if not force:
        try:
            import torch

            if torch.cuda.is_available():
                return False
        except ImportError:
            pass
    sys.modules.setdefault("fla", None)
    return sys.modules.get("fla", 0) is None


def cpu_child_env() -> dict[str, str]:
    """Extra environment for a CPU child process: ``PYTHONPATH`` starts with
    ``cpu_site/`` (its ``sitecustomize.py`` hides ``fla``)."""
    old = os.environ.get("PYTHONPATH", "")
    return {"PYTHONPATH": os.pathsep.join([str(CPU_SITE), *([old] if old else [])])}
