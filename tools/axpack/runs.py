"""The run folder: file names, markers and fingerprints every step agrees on.

Foundation layer (imports only other foundation modules). One run lives in
``runs/<run>/``::

    runs/<run>/
      data/                 axpack prep's output (sft.jsonl, dpo.jsonl, summary.json)
      sft/  dpo/            a stage's output_dir: the adapter, checkpoint-N/,
                            axpack-config.yaml (RESOLVED_FILE), axpack-done.json (DONE_FILE)
      sft-merged/ merged/   axpack merge's output, stamped axpack-merge.json (MERGE_FILE)
      gguf/                 axpack export's GGUFs, manifest.json (MANIFEST_FILE), verify.json

A marker is written last and atomically (:func:`axpack.fsutil.atomic_write_json`),
so its presence means the step finished; its fingerprint says over which inputs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .config import stage_of
from .fsutil import sha256_file

DONE_FILE = "axpack-done.json"          # in output_dir: axpack train/smoke finished this fingerprint
RESOLVED_FILE = "axpack-config.yaml"    # in output_dir: the exact YAML Axolotl ran
MERGE_FILE = "axpack-merge.json"        # in a merged folder: axpack merge finished this fingerprint
MANIFEST_FILE = "manifest.json"         # in gguf/: the GGUFs with checksums and input fingerprints
VERIFY_FILE = "verify.json"             # in gguf/: axpack verify's results
ADAPTER_WEIGHTS = "adapter_model.safetensors"
DATA_SUFFIXES = frozenset({".json", ".jsonl", ".parquet", ".csv", ".txt"})


def dataset_paths(cfg: dict[str, Any]) -> list[Path]:
    """Local files named by ``datasets`` and ``test_datasets`` (Hub ids skipped).

    A ``path`` counts as local when it has a data-file suffix (so a missing
    prep output is still reported) or exists on disk.
    """
    from .config import dataset_entries

    out = []
    for _key, _i, ds in dataset_entries(cfg):
        if ds.get("path"):
            p = Path(str(ds["path"]))
            if p.suffix in DATA_SUFFIXES or p.exists():
                out.append(p)
    return out


def fingerprint(cfg: dict[str, Any]) -> str:
    """sha256 (hex) over the resolved config (canonical JSON, sorted keys) and
    the bytes of its local data files (:func:`dataset_paths`; absent files skipped)."""
    h = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode())
    for p in dataset_paths(cfg):
        if p.is_file():
            h.update(sha256_file(p).encode())
    return h.hexdigest()


def is_done(cfg: dict[str, Any]) -> bool:
    """True when ``cfg["output_dir"]`` holds a finished run (:data:`DONE_FILE`)
    with the same :func:`fingerprint`; an unreadable marker counts as not done."""
    done = Path(cfg["output_dir"]) / DONE_FILE
    if not done.is_file():
        return False
    try:
        return json.loads(done.read_text()).get("fingerprint") == fingerprint(cfg)
    except (OSError, ValueError):
        return False


def checkpoint_complete(ckpt: Path) -> bool:
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
    ckpts = [p for p in Path(output_dir).glob("checkpoint-*")
             if p.is_dir() and p.name.split("-")[-1].isdigit() and checkpoint_complete(p)]
    return max(ckpts, key=lambda p: int(p.name.split("-")[-1])) if ckpts else None


def merged_dir_for(cfg: dict[str, Any]) -> Path:
    """``runs/<run>/sft-merged`` for an SFT config, ``runs/<run>/merged`` for DPO
    (siblings of the config's ``output_dir``; the SFT merge is DPO's base, "Plan C").

    Raises:
        KeyError: ``cfg`` has no ``output_dir``.
    """
    out = Path(cfg["output_dir"])
    return out.parent / ("sft-merged" if stage_of(cfg) == "sft" else "merged")
