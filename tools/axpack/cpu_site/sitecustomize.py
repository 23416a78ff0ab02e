"""Imported at start-up by CPU child processes only: axpack puts this folder
first on ``PYTHONPATH`` for ``smoke --cpu`` and the twin chains
(:func:`axpack.cpu.cpu_child_env`), never for a GPU run.

It hides the ``fla`` package (flash-linear-attention, installed with Axolotl):
its Triton kernels make Qwen3.5's Gated DeltaNet forward fail on a machine
without a GPU ("0 active drivers"). With ``sys.modules["fla"] = None``,
``import fla`` raises ImportError and ``importlib.util.find_spec("fla")``
returns None, so transformers' ``use_kernel_func_from_hub_with_fallback``
picks its PyTorch reference kernels (torch_chunk_gated_delta_rule, ...).
"""

import sys

sys.modules.setdefault("fla", None)
