"""Importance matrix (imatrix) from the run's own conversations, in llama.cpp's format.

An imatrix holds, per weight matrix ``W`` (``[n_out, n_in]``) that a matmul
``W @ x`` applies, the per-input-column sum of ``x_j**2`` over every calibration
token and the token count: ``E[x_j**2]`` tells the k-/i-quant search which
columns' rounding errors cost most (llama.cpp PR #4861, ``tools/imatrix``).

llama.cpp collects it with ``llama-imatrix`` from a GGUF's matmuls; axpack
collects the same sums in Python with forward pre-hooks on the merged HF
model's ``nn.Linear`` layers (float32), which are the inputs the GGUF's
``blk.*`` matmuls see up to f16 rounding. It keeps ``llama-imatrix``'s rules:
only ``blk.*`` tensors (``output.weight`` is left out unless asked for, as
without ``--process-output``), windows of :data:`CHUNK` tokens, and windows
under 16 tokens ignored (``imatrix.cpp``: ``if (src1->ne[1] < 16) return``).
Names map HF -> GGUF through gguf-py's ``TensorNameMap``; an entry whose
column count differs from the GGUF tensor's ``ne[0]`` is dropped and counted,
so llama.cpp never aborts on it ("imatrix size ... is different from tensor
size").

The file is llama.cpp's GGUF imatrix format (``imatrix.cpp: save_imatrix``):
``general.type = imatrix``, ``imatrix.datasets``, ``imatrix.chunk_count``,
``imatrix.chunk_size``, and per tensor ``<name>.in_sum2`` (f32 ``[n_in, 1]``) and
``<name>.counts`` (f32 ``[1, 1]``), so ``llama-quantize --imatrix`` reads it too.
Quantizing with it goes through the pinned llama-cpp-python's
``llama_model_quantize_params.imatrix`` (a ``llama_model_imatrix_data`` array:
name, ``E[x**2]`` per column, size; ``tools/quantize/quantize.cpp`` builds the
same array from the same file), with the ``quantize.imatrix.*`` metadata
``llama-quantize`` writes.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cpu import hide_fla
from .errors import AxpackError
from .fsutil import new_tmp, require_safetensors, sha256_file

log = logging.getLogger(__name__)

CHUNK = 512  # tokens per window: llama-imatrix's default -c 512
MIN_WINDOW = 16  # imatrix.cpp ignores matmuls over fewer than 16 tokens
DEFAULT_TOKENS = 8192  # calibration budget; measured on the demo (README: imatrix)
# llama.cpp's metadata keys (tools/quantize/quantize.cpp: LLM_KV_QUANTIZE_IMATRIX_*)
KV_FILE, KV_DATASET = "quantize.imatrix.file", "quantize.imatrix.dataset"
KV_ENTRIES, KV_CHUNKS = "quantize.imatrix.entries_count", "quantize.imatrix.chunks_count"


@dataclass
class Imatrix:
    """An importance matrix as llama.cpp stores it.

    Attributes:
        sums: GGUF tensor name -> per-column sum of ``x**2`` (float64 ``[n_in]``).
        counts: GGUF tensor name -> tokens summed.
        datasets: what it was computed from (file names, as ``imatrix.datasets``).
        chunk_count, chunk_size: windows evaluated and their length (tokens).
    """

    sums: dict[str, Any]
    counts: dict[str, int]
    datasets: list[str]
    chunk_count: int
    chunk_size: int

    def importance(self) -> dict[str, Any]:
        """Name -> ``E[x**2]`` per column (float32), what quantize weighs errors by
        (``quantize.cpp: load_imatrix`` divides the sums by the counts)."""
        import numpy as np

        return {n: (s / c if c else np.ones_like(s)).astype(np.float32)
                for n, s in self.sums.items() for c in [self.counts[n]]}


def gguf_tensor_columns(gguf_path: Path) -> tuple[str, int, dict[str, int]]:
    """(architecture, block count, ``{matrix name: ne[0]}``) of a GGUF, via gguf-py; only
    tensors of 2+ dimensions (the ones an imatrix can weigh).

    Raises:
        AxpackError: the file has no ``general.architecture``.
    """
    from gguf import GGUFReader

    r = GGUFReader(str(gguf_path))
    arch_f = r.fields.get("general.architecture")
    if arch_f is None:
        raise AxpackError(f"{gguf_path}: no general.architecture; not a model GGUF")
    arch = arch_f.contents()
    blocks_f = r.fields.get(f"{arch}.block_count")
    n_blocks = int(blocks_f.contents()) if blocks_f is not None else 0
    return arch, n_blocks, {t.name: int(t.shape[0]) for t in r.tensors if len(t.shape) >= 2}


def _gguf_name(tmap, hf_name: str) -> str | None:
    """The GGUF tensor an HF ``nn.Linear`` becomes (``None``: not mapped). Multimodal
    checkpoints store the text model under ``model.language_model.`` (Qwen3.5), which
    the converter strips."""
    for cand in (hf_name, hf_name.replace("model.language_model.", "model."),
                 hf_name.replace("language_model.model.", "model.")):
        got = tmap.get_name(cand + ".weight", try_suffixes=(".weight",))
        if got:
            return got
    return None


def collect(model_dir: Path, windows: list[list[int]], gguf_path: Path,
            process_output: bool = False, datasets: list[str] | None = None) -> tuple[Imatrix, dict[str, int]]:
    """Run the merged HF model over ``windows`` and sum each ``blk.*`` matmul input's squares.

    Args:
        model_dir: merged HF model folder (what was converted to ``gguf_path``).
        windows: token id windows, each at most :data:`CHUNK` long; shorter than
            :data:`MIN_WINDOW` are skipped.
        gguf_path: the converted GGUF (names and column counts are checked against it).
        process_output: also collect ``output.weight`` (llama-imatrix ``--process-output``).
        datasets: recorded as ``imatrix.datasets``.

    Returns:
        (the imatrix, ``{"mapped": n, "dropped_size": n, "unmapped": n, "tensors": n}``)
        where ``tensors`` counts the GGUF's 2-D ``blk.*`` weights.

    Raises:
        AxpackError: no window is long enough, or no layer maps to the GGUF.
    """
    import gguf
    import torch
    from transformers import AutoModelForCausalLM

    arch, n_blocks, cols = gguf_tensor_columns(gguf_path)
    try:
        tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], n_blocks)
    except KeyError:
        raise AxpackError(f"{gguf_path}: gguf-py has no tensor map for architecture {arch!r}; "
                          "quantize without --imatrix") from None
    use = [w for w in windows if len(w) >= MIN_WINDOW]
    if not use:
        raise AxpackError(f"imatrix: no calibration window has {MIN_WINDOW}+ tokens; pass more conversations")
    hide_fla()  # CPU: Qwen3.5's linear attention on transformers' PyTorch kernels (axpack.cpu)
    require_safetensors(model_dir)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, use_safetensors=True)
    model.eval()
    sums: dict[str, Any] = {}
    counts: dict[str, int] = {}
    stats = {"mapped": 0, "dropped_size": 0, "unmapped": 0,
             "tensors": sum(1 for n in cols if n.startswith("blk.") and n.endswith(".weight"))}
    hooks = []

    def hook_for(gname: str):
        def hook(_mod, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float64)
            sums[gname] += (x * x).sum(0)
            counts[gname] += x.shape[0]
        return hook

    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear):
            continue
        gname = _gguf_name(tmap, name)
        if gname is None or not (gname.startswith("blk.") or (process_output and gname == "output.weight")):
            stats["unmapped"] += gname is None
            continue
        if cols.get(gname) != mod.in_features:
            stats["dropped_size"] += 1
            continue
        sums[gname] = torch.zeros(mod.in_features, dtype=torch.float64)
        counts[gname] = 0
        hooks.append(mod.register_forward_pre_hook(hook_for(gname)))
    stats["mapped"] = len(sums)
    if not sums:
        raise AxpackError(f"{model_dir}: no linear layer maps to a blk.* tensor of {gguf_path.name}; "
                          "quantize without --imatrix")
    try:
        with torch.no_grad():
            for ids in use:
                model(torch.tensor([ids]))
    finally:
        for h in hooks:
            h.remove()
    im = Imatrix({n: s.numpy() for n, s in sums.items()}, counts, list(datasets or []),
                 len(use), CHUNK)
    return im, stats


def write(im: Imatrix, dest: Path) -> None:
    """Write ``im`` atomically to ``dest`` in llama.cpp's GGUF imatrix format."""
    import numpy as np
    from gguf import GGUFWriter

    fd, name = new_tmp(dest)  # .NAME.XXXX.tmp: what gguf_build's stale-temp cleanup removes
    os.close(fd)
    tmp = Path(name)
    try:
        w = GGUFWriter(str(tmp), arch="imatrix")
        w.add_type("imatrix")
        w.add_array("imatrix.datasets", im.datasets)
        w.add_uint32("imatrix.chunk_count", im.chunk_count)
        w.add_uint32("imatrix.chunk_size", im.chunk_size)
        for name in sorted(im.sums):
            w.add_tensor(f"{name}.in_sum2", np.asarray(im.sums[name], dtype=np.float32).reshape(1, -1))
            w.add_tensor(f"{name}.counts", np.array([[im.counts[name]]], dtype=np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def read(path: Path) -> Imatrix:
    """Read a GGUF imatrix (axpack's or ``llama-imatrix``'s).

    Raises:
        AxpackError: not a GGUF imatrix (``general.type`` is not ``imatrix``, or a
            ``.in_sum2`` without its ``.counts``); the legacy ``.dat`` format is refused
            with the conversion to use.
    """
    from gguf import GGUFReader

    try:
        r = GGUFReader(str(path))
    except (ValueError, OSError) as e:
        raise AxpackError(f"{path}: not a GGUF imatrix ({e}); a legacy .dat converts with "
                          "llama-imatrix --in-file X.dat -o X.gguf") from None
    kind = r.fields.get("general.type")
    if kind is None or kind.contents() != "imatrix":
        raise AxpackError(f"{path}: general.type is not 'imatrix'; pass an importance matrix GGUF")

    def val(key, default):
        f = r.fields.get(key)
        return f.contents() if f is not None else default

    sums, counts = {}, {}
    tensors = {t.name: t for t in r.tensors}
    for tname, t in tensors.items():
        if not tname.endswith(".in_sum2"):
            continue
        name = tname[: -len(".in_sum2")]
        c = tensors.get(name + ".counts")
        if c is None:
            raise AxpackError(f"{path}: {tname} has no {name}.counts; the file is damaged")
        if len(c.data.reshape(-1)) != 1:
            raise AxpackError(f"{path}: {name}: per-expert counts (MoE) are not supported by axpack's quantize; "
                              "use llama-quantize --imatrix")
        sums[name] = t.data.reshape(-1).astype("float64")
        counts[name] = round(float(c.data.reshape(-1)[0]))
    return Imatrix(sums, counts, list(val("imatrix.datasets", [])), int(val("imatrix.chunk_count", 0)),
                   int(val("imatrix.chunk_size", 0)))


class QuantizeImatrix:
    """``llama_model_quantize_params`` fields for an imatrix: the ``imatrix`` array and
    the ``quantize.imatrix.*`` kv overrides. Keep the object alive while quantizing
    (ctypes owns the buffers)."""

    def __init__(self, path: Path):
        import llama_cpp
        import numpy as np

        im = read(path)
        self.n = len(im.sums)
        self._arrays = {n: np.ascontiguousarray(v) for n, v in im.importance().items()}
        self._names = {n: n.encode() for n in self._arrays}
        arr = (llama_cpp.llama_model_imatrix_data * (self.n + 1))()
        for i, (n, v) in enumerate(sorted(self._arrays.items())):
            arr[i].name = self._names[n]
            arr[i].data = v.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            arr[i].size = v.size
        arr[self.n].name = None  # the terminator quantize stops at
        self.imatrix = arr
        kvs = [(KV_FILE, path.name), (KV_ENTRIES, self.n), (KV_CHUNKS, im.chunk_count)]
        if im.datasets:
            kvs.append((KV_DATASET, im.datasets[0]))
        ov = (llama_cpp.llama_model_kv_override * (len(kvs) + 1))()
        for o, (k, v) in zip(ov, kvs):
            o.key = k.encode()[:127]
            if isinstance(v, str):
                o.tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
                o.value.val_str = v.encode()[:127]
            else:
                o.tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT
                o.value.val_i64 = int(v)
        ov[len(kvs)].key = b""  # terminator: an empty key
        self.kv_overrides = ov

    def apply(self, params) -> None:
        """Point ``params`` (a ``llama_model_quantize_params``) at this imatrix."""
        params.imatrix = ctypes.cast(self.imatrix, type(params.imatrix))
        params.kv_overrides = ctypes.cast(self.kv_overrides, type(params.kv_overrides))


def calibration_fingerprint(data: Path, tokens: int, chunk: int = CHUNK) -> str:
    """sha256 of the calibration file's bytes and the budget: what the manifest records."""
    h = hashlib.sha256()
    h.update(json.dumps({"data_sha256": sha256_file(data), "tokens": tokens, "chunk": chunk}).encode())
    return h.hexdigest()


def build(model_dir: Path, gguf_path: Path, data: Path, dest: Path, tokens: int = DEFAULT_TOKENS) -> dict[str, Any]:
    """Compute the imatrix of ``model_dir`` on ``data`` (a prep JSONL of ``messages``) and write ``dest``.

    The conversations are rendered with the model's own chat template
    (:func:`axpack.quant_quality.build_sequences`: one window per conversation,
    cut at :data:`CHUNK`) until ``tokens`` tokens are taken.

    Returns:
        the manifest record: file, sha256, calibration (data, its sha256, token
        budget, tokens used, windows), coverage (see :func:`collect`).

    Raises:
        AxpackError: ``data`` missing or holding no conversations, or from :func:`collect`.
    """
    from transformers import AutoTokenizer

    from . import quant_quality as qq

    if not data.is_file():
        raise AxpackError(f"{data}: no such calibration file; pass a prep output JSONL (sft.jsonl)")
    convs = qq.read_conversations(data)
    if not convs:
        raise AxpackError(f"{data}: no 'messages' conversations to calibrate on; pass a prep SFT output")
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    windows = qq.build_sequences(tok, "", convs, chunk=CHUNK, conv_tokens=tokens)["conversations"]
    im, coverage = collect(model_dir, windows, gguf_path, datasets=[data.name])
    write(im, dest)
    return {"file": dest.name, "sha256": sha256_file(dest),
            "calibration": {"data": str(data), "data_sha256": sha256_file(data), "token_budget": tokens,
                            "tokens": sum(len(w) for w in windows if len(w) >= MIN_WINDOW),
                            "windows": im.chunk_count, "chunk": CHUNK,
                            "fingerprint": calibration_fingerprint(data, tokens)},
            "coverage": coverage}
