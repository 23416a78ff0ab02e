"""The GPUs ``axpack plan`` prices a run on, and the one a config's file name names.

VRAM: what ``nvidia-smi`` reports (MiB / 1024). TFLOPS: dense BF16
tensor-core peak with FP32 accumulate, no sparsity, from NVIDIA's datasheets
and architecture whitepapers (GA102 whitepaper appendix: RTX 3070 40.6, the
8 GB card the ops recipe ran on; L4 datasheet 121; Ada whitepaper RTX 4090
165.2; Blackwell RTX whitepaper RTX 5090 209.5; A100 datasheet 312; H100 SXM
and H200 datasheets 989.4). USD/h: indicative on-demand rates of specialty
and community clouds (mercatus-ai.com "Cloud GPU pricing" May 2026: A100
80GB $1.10–1.50, H100 $2.50–3.50, H200 $3.50–4.50; gputracker.dev Mar 2026:
RTX 4090 ~$0.34); L4, RTX 5090 and A100 40GB rates are assumptions. Users
pass their own with ``--price GPU=USD``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

GIB = float(2**30)


@dataclass(frozen=True)
class Gpu:
    """One device row: VRAM in GiB, dense bf16 TFLOP/s, on-demand USD per hour."""

    key: str
    name: str
    vram_gib: float
    tflops: float  # dense bf16, or effective FLOP/s / 1e12 for a measured device
    usd_per_hour: float | None
    mfu_fixed: float | None = None  # measured effective throughput: MFU already folded in


GPUS: dict[str, Gpu] = {
    g.key: g
    for g in (
        Gpu("RTX3070", "RTX 3070 8GB", 8.0, 40.6, None),  # a user's own 8 GB card: no hourly price
        Gpu("L4", "NVIDIA L4 24GB", 22.5, 121.0, 0.70),
        Gpu("RTX4090", "RTX 4090 24GB", 23.99, 165.2, 0.35),
        Gpu("RTX5090", "RTX 5090 32GB", 31.84, 209.5, 0.70),
        Gpu("A100-40", "A100 40GB", 40.0, 312.0, 1.20),
        Gpu("A100-80", "A100 80GB", 80.0, 312.0, 1.50),
        Gpu("H100", "H100 80GB SXM", 79.65, 989.4, 2.50),
        Gpu("H200", "H200 141GB", 140.4, 989.4, 3.50),
    )
}
REFERENCE_GPU = "A100-80"
# A config whose file name carries one of these words is named for that GPU
# (configs/README.md: `sft-qlora-8gb.yaml` is the ops recipe on an 8 GB card);
# plan shows that GPU's row first, as "named for".
NAMED_GPUS = {"8gb": "RTX3070", "a100": "A100-40", "l4": "L4", "4090": "RTX4090", "5090": "RTX5090",
              "h100": "H100", "h200": "H200"}

# The project's CI box: ~9.5 s per 1,024-token step on SmolLM2-135M (LoRA, fp32,
# 2 cores; measured, see the brief). Its effective FLOP/s is derived from that
# step with the same FLOPs formula (axpack.plan.flops.cpu_flops), so CPU
# estimates are self-consistent.
CPU_SECONDS_PER_1K_STEP = 9.5
CPU_RAM_GIB = 24.0


def named_gpu(config_path: str | Path) -> str | None:
    """The :data:`GPUS` key a config's file name names (``sft-qlora-8gb.yaml`` -> ``RTX3070``), or None."""
    words = re.split(r"[-_.]", Path(str(config_path)).stem.lower()) if config_path else []
    return next((NAMED_GPUS[w] for w in words if w in NAMED_GPUS), None)
