"""The one place that sets the environment for child processes and imports.

- ``AXOLOTL_DO_NOT_TRACK=1`` always: with no network, Axolotl's telemetry
  flush at exit hangs 12+ minutes (measured on this project's CI machine).
- Offline variables (``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE``,
  ``HF_DATASETS_OFFLINE``, ``WANDB_MODE=disabled``) only when
  ``AXPACK_OFFLINE=1``, which ``make demo``, ``make test`` and CI set: a user's
  real run must still reach the Hub.
- The venv's ``bin/`` goes first on ``PATH`` (``axolotl train`` execs
  ``accelerate``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

OFFLINE_VARS = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "WANDB_MODE": "disabled",
}
ALWAYS_VARS = {
    "AXOLOTL_DO_NOT_TRACK": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def project_root() -> Path:
    """The axpack checkout: the folder holding ``configs/`` and ``tools/``.

    Found from this file (editable install, ``tools/axpack/env.py``), else the
    current directory, so commands work from the repo root either way.
    """
    here = Path(__file__).resolve().parents[2]
    if (here / "tools" / "axpack").is_dir() and (here / "pyproject.toml").is_file():
        return here
    return Path.cwd()


def offline() -> bool:
    """True when ``AXPACK_OFFLINE=1`` (demo, tests, CI)."""
    return os.environ.get("AXPACK_OFFLINE", "") == "1"


def venv_bin() -> Path:
    """The ``bin/`` folder of the interpreter running axpack."""
    return Path(sys.executable).parent


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a child process (Axolotl, the converter, ...).

    Returns a copy of ``os.environ`` with the telemetry switches, the offline
    switches when :func:`offline`, the venv ``bin/`` first on ``PATH`` and
    ``extra`` applied last.
    """
    env = dict(os.environ)
    env.update(ALWAYS_VARS)
    if offline():
        env.update(OFFLINE_VARS)
    env["PATH"] = os.pathsep.join([str(venv_bin()), env.get("PATH", "")])
    if extra:
        env.update(extra)
    return env


def apply_to_process() -> None:
    """Set the same switches in this process (before importing transformers)."""
    for key, value in ALWAYS_VARS.items():
        os.environ.setdefault(key, value)
    if offline():
        for key, value in OFFLINE_VARS.items():
            os.environ[key] = value


def cache_dir() -> Path:
    """Git-ignored cache for fetched tools (``.cache/`` under the root)."""
    return Path(os.environ.get("AXPACK_CACHE", project_root() / ".cache"))


def llama_cpp_dir() -> Path:
    """The pinned llama.cpp converter folder (``convert_hf_to_gguf.py``,
    ``conversion/``, ``gguf-py/`` side by side), fetched by ``make setup``."""
    return Path(os.environ.get("AXPACK_LLAMA_CPP_DIR", cache_dir() / "llama.cpp"))


def demo_model_dir() -> Path:
    """The embedded SmolLM2-135M-Instruct HF folder built by ``axpack demo-model``."""
    return project_root() / "models" / "smollm2-135m-instruct"
