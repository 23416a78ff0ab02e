"""Run llama.cpp work in a child process, so a native crash is one clear line.

llama.cpp is C++ loaded into Python by llama-cpp-python: a segfault inside it
(issue #11: the AMX kernels on Sapphire-Rapids-class Xeons) kills the whole
interpreter, and ``make`` prints a bare ``Segmentation fault``. ``probe`` and
``verify`` therefore load and run each GGUF through :func:`run_isolated`: the
work runs in ``python -m axpack.llama_child``, its llama.cpp log (verbose, with
the buffer types it chose) goes to a log file, and a signal there becomes
:class:`LlamaCrash` — ``demo-q4_k_m.gguf: llama.cpp crashed (SIGSEGV) while
decoding; see runs/demo/logs/probe-demo-q4_k_m.log`` — while the caller goes
on with the other GGUFs.

Transport without pickle (the project loads no pickles): arguments are JSON;
results are JSON plus ``.npy`` files for numpy arrays (``allow_pickle=False``).

The work function calls :func:`phase` (``"loading"``, ``"decoding"``, …) so a
crash names what it was doing. ``AXPACK_FAULT_PHASE=decoding`` (optionally
with ``AXPACK_FAULT_GGUF=<substring of the file name>``) makes the child
segfault for real at that phase: the fault-injection hook the tests use, as
``tests/test_faults.py`` uses SIGKILL.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from . import env
from .errors import AxpackError

_PHASE_FILE = "AXPACK_CHILD_PHASE_FILE"
_GGUF = "AXPACK_CHILD_GGUF"


class LlamaCrash(AxpackError):
    """llama.cpp died in the child (a signal or an unexpected exit); the message is the one line."""


def phase(name: str) -> None:
    """Record what the child is doing (read by the parent after a crash); no-op in the parent.

    Also the fault-injection point: with ``AXPACK_FAULT_PHASE == name`` (and
    ``AXPACK_FAULT_GGUF`` in the GGUF's name, when set) the child dereferences
    NULL — a real SIGSEGV, as llama.cpp's would be.
    """
    path = os.environ.get(_PHASE_FILE)
    if not path:
        return
    Path(path).write_text(name)
    gguf = os.environ.get(_GGUF, "")
    if os.environ.get("AXPACK_FAULT_PHASE") == name and os.environ.get("AXPACK_FAULT_GGUF", "") in gguf:
        import ctypes

        ctypes.string_at(0)


def _save(result: dict[str, Any], out: Path) -> None:
    """Write ``result``: numpy arrays (or lists of them) as .npy files, the rest as JSON."""
    import numpy as np

    doc: dict[str, Any] = {}
    for key, value in result.items():
        if isinstance(value, np.ndarray):
            np.save(out / f"{key}.npy", value, allow_pickle=False)
            doc[key] = {"__npy__": f"{key}.npy"}
        elif isinstance(value, list) and value and all(isinstance(v, np.ndarray) for v in value):
            for i, v in enumerate(value):
                np.save(out / f"{key}.{i}.npy", v, allow_pickle=False)
            doc[key] = {"__npy_list__": [f"{key}.{i}.npy" for i in range(len(value))]}
        else:
            doc[key] = value
    (out / "result.json").write_text(json.dumps(doc))


def _load(out: Path) -> dict[str, Any]:
    """Read what :func:`_save` wrote."""
    import numpy as np

    doc = json.loads((out / "result.json").read_text())
    for key, value in doc.items():
        if isinstance(value, dict) and "__npy__" in value:
            doc[key] = np.load(out / value["__npy__"], allow_pickle=False)
        elif isinstance(value, dict) and "__npy_list__" in value:
            doc[key] = [np.load(out / f, allow_pickle=False) for f in value["__npy_list__"]]
    return doc


def run_isolated(target: str, kwargs: dict[str, Any], *, gguf: Path, log: Path) -> dict[str, Any]:
    """Call ``target`` (``"package.module:function"``) with ``kwargs`` in a child process.

    Args:
        target: the work function; it returns a dict (JSON values and numpy arrays).
        kwargs: JSON-serialisable keyword arguments (paths as strings).
        gguf: the GGUF being run (named in the error line).
        log: file that receives the child's stdout/stderr (llama.cpp's log).

    Returns:
        The function's dict (JSON object keys come back as strings).

    Raises:
        LlamaCrash: the child died from a signal or exited without a result;
            the message names the GGUF, the signal, the phase and the log.
        AxpackError: the function raised one (same message).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="axpack-llama-") as tmp:
        work = Path(tmp)
        (work / "kwargs.json").write_text(json.dumps(kwargs))
        phase_file = work / "phase"
        phase_file.write_text("starting")
        with open(log, "wb") as logf:
            proc = subprocess.run([sys.executable, "-m", "axpack.llama_child", target, str(work)],
                                  stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, check=False,
                                  env=env.child_env({_PHASE_FILE: str(phase_file), _GGUF: Path(gguf).name,
                                                     "PYTHONFAULTHANDLER": "1"}))
        where = phase_file.read_text().strip() or "starting"
        if proc.returncode < 0:
            try:
                sig = signal.Signals(-proc.returncode).name
            except ValueError:
                sig = f"signal {-proc.returncode}"
            raise LlamaCrash(f"{Path(gguf).name}: llama.cpp crashed ({sig}) while {where}; see {log}")
        error = work / "error.json"
        if proc.returncode != 0 and error.is_file():
            raise AxpackError(json.loads(error.read_text())["message"])
        if proc.returncode != 0 or not (work / "result.json").is_file():
            raise LlamaCrash(f"{Path(gguf).name}: llama.cpp child exited {proc.returncode} while {where}; "
                             f"see {log}")
        return _load(work)


def _main(argv: list[str]) -> int:
    """Child entry: ``python -m axpack.llama_child MODULE:FUNC WORKDIR``."""
    target, work = argv[0], Path(argv[1])
    mod_name, func_name = target.split(":", 1)
    func = getattr(importlib.import_module(mod_name), func_name)
    kwargs = json.loads((work / "kwargs.json").read_text())
    try:
        result = func(**kwargs)
    except AxpackError as e:
        (work / "error.json").write_text(json.dumps({"message": str(e)}))
        return 1
    _save(result, work)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
