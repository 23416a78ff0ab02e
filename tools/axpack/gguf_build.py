"""Engine: convert a merged HF model to GGUF once, then quantize it to each type
(the ``axpack gguf`` / ``export`` / ``twin`` work; the command is :mod:`axpack.gguf`).

The converter is llama.cpp's ``convert_hf_to_gguf.py`` from the pinned
``llama-cpp-python`` source package (``make setup`` fetches it into
``.cache/llama.cpp`` with its ``conversion/`` package and ``gguf-py/``);
``--llama-cpp-dir`` points at a user's own checkout instead (its
``build/bin/llama-quantize`` is then used too, when built). Otherwise
quantization calls ``llama_cpp.llama_model_quantize`` (the same C function as
the ``llama-quantize`` tool; measured byte-identical output).

Outputs in ``OUT``: ``{name}-{outtype}.gguf`` (the one intermediate, f16 by
default), ``{name}-{type}.gguf`` per quant type, and ``manifest.json`` with,
per artifact, sha256, size, type, the source config, what it was made from
(file -> sha256) and its settings, and ``inputs``: the sha256 of those two —
the input fingerprint. Every file is written to a hidden temp name and renamed,
so a killed run never leaves a finished-looking GGUF (stale temps are removed
by the next run); a rerun skips an artifact only when its checksum *and* input
fingerprint match. Free disk is checked before anything is written.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import env
from .errors import AxpackError
from .fsutil import (
    atomic_write_json,
    remove_stale_temps,
    require_safetensors,
    sha256_file,
)

LOG = logging.getLogger(__name__)
MANIFEST = "manifest.json"
OUTTYPES = ("f16", "bf16", "f32", "q8_0")
UNQUANTIZED = ("f16", "bf16", "f32")
# GGUF file types by name -> llama_ftype (llama.h: enum llama_ftype)
QUANT_TYPES: dict[str, int] = {
    "q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9, "q2_k": 10,
    "q3_k_s": 11, "q3_k_m": 12, "q3_k_l": 13, "q4_k_s": 14, "q4_k_m": 15,
    "q5_k_s": 16, "q5_k_m": 17, "q6_k": 18, "iq4_nl": 25, "iq4_xs": 30,
}
# Types whose quantization weighs errors by an imatrix (ggml-quants.c: the k- and
# i-quants and Q4_0..Q5_1 take quant_weights; Q8_0's quantize_row_q8_0 does not)
IMATRIX_TYPES = tuple(t for t in QUANT_TYPES if t != "q8_0")
# Bits per weight, from llama.cpp's tools/quantize README table (LLaMA-3-8B);
# only for the free-disk estimate (x1.3 margin: small models fall back to
# bigger types on rows not divisible by 256).
BITS_PER_WEIGHT: dict[str, float] = {
    "f32": 32, "f16": 16, "bf16": 16, "q8_0": 8.5, "q6_k": 6.56, "q5_k_m": 5.7, "q5_k_s": 5.54,
    "q5_0": 5.54, "q5_1": 6.0, "q4_k_m": 4.89, "q4_k_s": 4.58, "q4_0": 4.55, "q4_1": 5.0,
    "q3_k_l": 4.27, "q3_k_m": 3.91, "q3_k_s": 3.5, "q2_k": 2.96, "iq4_xs": 4.25, "iq4_nl": 4.5,
}
MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
               "generation_config.json", "special_tokens_map.json", "tokenizer.model")


def parse_quants(text: str) -> list[str]:
    """``"q4_k_m,Q8_0"`` -> ``["q4_k_m", "q8_0"]``.

    Raises:
        AxpackError: an unknown type name (lists the known ones).
    """
    out = []
    for q in (t.strip().lower() for t in text.split(",")):
        if not q:
            continue
        if q not in QUANT_TYPES:
            raise AxpackError(f"--quants {q}: unknown type; use one of {', '.join(sorted(QUANT_TYPES))}")
        if q not in out:
            out.append(q)
    return out


def _stat_sig(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def model_files(model_dir: Path, cache: dict[str, Any] | None = None) -> dict[str, str]:
    """``{file name: sha256}`` for the weights and config/tokenizer files of a HF folder
    (everything the converter reads).

    ``cache`` (the manifest's ``input_cache``: path -> {sig, sha256}) reuses a
    file's checksum while its size, mtime and inode are unchanged — any write or
    replacement changes them — so a rerun does not re-read gigabytes of inputs.
    Artifacts (the GGUFs) are always re-hashed before they are trusted.
    """
    files = sorted(model_dir.glob("*.safetensors")) + [model_dir / n for n in MODEL_FILES]
    files += [model_dir / "model.safetensors.index.json"]
    out = {}
    for f in files:
        if not f.is_file():
            continue
        key, sig = str(f.resolve()), _stat_sig(f)
        hit = (cache or {}).get(key)
        if hit and hit.get("sig") == sig:
            out[f.name] = hit["sha256"]
        else:
            out[f.name] = sha256_file(f)
            if cache is not None:
                cache[key] = {"sig": sig, "sha256": out[f.name]}
    return out


def model_fingerprint(model_dir: Path) -> str:
    """sha256 over :func:`model_files` of a HF folder."""
    h = hashlib.sha256()
    for name, sha in sorted(model_files(model_dir).items()):
        h.update(name.encode() + b"\0" + sha.encode())
    return h.hexdigest()


def count_params(model_dir: Path) -> int:
    """Number of weights in a HF folder's safetensors shards (from the headers, no loading)."""
    from .lora_merge import read_header

    n = 0
    for f in sorted(model_dir.glob("*.safetensors")):
        header, _, _ = read_header(f)
        for k, v in header.items():
            if k != "__metadata__":
                size = 1
                for d in v["shape"]:
                    size *= int(d)
                n += size
    return n


def converter_path(llama_cpp_dir: Path, user_dir: bool = False) -> Path:
    """``convert_hf_to_gguf.py`` inside ``llama_cpp_dir``.

    ``user_dir``: the folder came from ``--llama-cpp-dir`` (the error then names
    the option instead of suggesting make setup).

    Raises:
        AxpackError: the folder has no converter.
    """
    script = llama_cpp_dir / "convert_hf_to_gguf.py"
    if not script.is_file():
        if user_dir:
            raise AxpackError(f"--llama-cpp-dir {llama_cpp_dir}: no convert_hf_to_gguf.py there; point it at a "
                              "llama.cpp checkout (or leave it out to use the pinned converter of make setup)")
        raise AxpackError(f"{script}: llama.cpp converter not found; run make setup (or pass --llama-cpp-dir)")
    return script


def converter_id(llama_cpp_dir: Path, user_dir: bool = False) -> str:
    """Identifies the converter: the PINNED line when axpack fetched it, else the script's sha256.

    Raises:
        AxpackError: the folder has no converter (see :func:`converter_path`).
    """
    script = converter_path(llama_cpp_dir, user_dir)
    pinned = llama_cpp_dir / "PINNED"
    if pinned.is_file():
        return pinned.read_text().strip()
    return "convert_hf_to_gguf.py sha256:" + sha256_file(script)


def quantize_tool(llama_cpp_dir: Path | None) -> tuple[str, Path | None]:
    """(tool id, path of an external ``llama-quantize`` or None for the in-process binding).

    A user's own llama.cpp build (``--llama-cpp-dir``) is used when it has
    ``build/bin/llama-quantize``; otherwise llama-cpp-python's bundled library.
    """
    if llama_cpp_dir is not None:
        for cand in (llama_cpp_dir / "build" / "bin" / "llama-quantize", llama_cpp_dir / "llama-quantize"):
            if cand.is_file() and os.access(cand, os.X_OK):
                return f"llama-quantize sha256:{sha256_file(cand)}", cand
    from importlib.metadata import version

    return f"llama-cpp-python=={version('llama-cpp-python')} llama_model_quantize", None


def load_manifest(out: Path) -> dict[str, Any]:
    """The manifest in ``out`` (``{"artifacts": {file: entry}}``), empty if absent or unreadable."""
    try:
        data = json.loads((out / MANIFEST).read_text())
        if isinstance(data, dict) and isinstance(data.get("artifacts"), dict):
            return data
    except (OSError, ValueError):
        pass
    return {"artifacts": {}}


def inputs_fingerprint(made_from: dict[str, str], settings: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of (made_from, settings): the artifact's input fingerprint."""
    return hashlib.sha256(json.dumps({"made_from": made_from, "settings": settings},
                                     sort_keys=True).encode()).hexdigest()


def is_current(out: Path, manifest: dict[str, Any], name: str, inputs: str) -> bool:
    """True when ``out/name`` exists, its size and sha256 match the manifest and so do its inputs."""
    entry = manifest["artifacts"].get(name)
    path = out / name
    return bool(entry and path.is_file() and entry.get("inputs") == inputs
                and entry.get("size") == path.stat().st_size and entry.get("sha256") == sha256_file(path))


def check_free_disk(out: Path, need_bytes: int) -> None:
    """Raise AxpackError when ``out``'s filesystem has less than ``need_bytes`` free."""
    free = shutil.disk_usage(out).free
    if free < need_bytes:
        raise AxpackError(f"{out}: {free / 2**30:.2f} GiB free, the GGUFs need ~{need_bytes / 2**30:.2f} GiB; "
                          "free some disk or export fewer --quants")


def estimate_bytes(n_params: int, gtype: str) -> int:
    """Expected size of a GGUF of ``gtype`` with ``n_params`` weights (x1.3 margin, +16 MiB metadata)."""
    return int(n_params * BITS_PER_WEIGHT.get(gtype, 16) / 8 * 1.3) + (16 << 20)


def _tmp_beside(dest: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    return Path(tmp)


def mtp_decision(model_dir: Path) -> tuple[list[str], str | None]:
    """Whether the GGUF keeps the model's multi-token-prediction (MTP) head.

    Qwen3.5 declares ``mtp_num_hidden_layers`` and ships ``mtp.*`` tensors
    that transformers drops on load. The pinned converter then writes them as
    an extra NextN block (``nextn_predict_layers``), which llama.cpp loads and
    can use as a speculative draft; ordinary decoding never runs it (measured
    on the Qwen3.5 twin: same logits as transformers either way). So the head
    is kept when the checkpoint has it; a checkpoint that declares it but lacks
    the tensors (the converter would assert) is converted with ``--no-mtp``.

    Returns:
        (extra converter arguments, the decision as one line, or None when the
        model has no MTP head).
    """
    from .lora_merge import read_header, shard_files

    try:
        conf = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return [], None
    text = conf.get("text_config") or conf
    n = int(text.get("mtp_num_hidden_layers") or 0)
    if n <= 0:
        return [], None
    try:
        names = [k for f in shard_files(model_dir) for k in read_header(f)[0]]
    except AxpackError:
        return [], None
    if any(k.startswith(("mtp.", "model.mtp.")) for k in names):
        return [], (f"keeping the {n}-layer MTP head (mtp.* -> an extra NextN block): llama.cpp can use it "
                    "as a speculative draft, normal decoding ignores it")
    return ["--no-mtp"], (f"config.json declares mtp_num_hidden_layers: {n} but the checkpoint has no mtp.* "
                          "tensors: converting with --no-mtp (the GGUF has no MTP head)")


def convert_to_tmp(model_dir: Path, dest: Path, outtype: str, llama_cpp_dir: Path,
                   model_name: str | None = None) -> Path:
    """Run the converter on ``model_dir`` into a hidden temp file beside ``dest``; return it
    (``general.name`` = ``model_name``). The caller records it, then renames it.

    Raises:
        AxpackError: the converter failed (its last stderr line is quoted:
            an unknown pre-tokenizer or architecture shows up here).
    """
    script = converter_path(llama_cpp_dir)
    tmp = _tmp_beside(dest)
    try:
        cmd = [sys.executable, str(script), str(model_dir), "--outfile", str(tmp), "--outtype", outtype]
        if model_name:
            cmd += ["--model-name", model_name]
        mtp_args, why = mtp_decision(model_dir)
        if why:
            LOG.info(f"axpack: {model_dir}: {why}")
        cmd += mtp_args
        LOG.info("axpack: " + " ".join(cmd))
        proc = subprocess.run(cmd, env=env.child_env(), capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise AxpackError(f"{model_dir}: llama.cpp convert_hf_to_gguf.py failed: {last}")
        os.chmod(tmp, 0o644)
        return tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def quantize_to_tmp(src: Path, dest: Path, qtype: str, nthread: int = 0, tool: Path | None = None,
                    imatrix: Path | None = None) -> Path:
    """Quantize GGUF ``src`` to ``qtype`` into a hidden temp file beside ``dest``; return it.

    ``tool`` is an external ``llama-quantize``; None calls ``llama_model_quantize``
    in-process (llama-cpp-python). ``imatrix``: a GGUF importance matrix
    (:mod:`axpack.imatrix`) the quantization weighs rounding errors by
    (``llama-quantize --imatrix``).

    Raises:
        AxpackError: quantization failed.
    """
    tmp = _tmp_beside(dest)
    try:
        if tool is not None:
            cmd = ([str(tool)] + (["--imatrix", str(imatrix)] if imatrix else [])
                   + [str(src), str(tmp), qtype.upper()] + ([str(nthread)] if nthread else []))
            rc = subprocess.run(cmd, capture_output=True, text=True, check=False).returncode
        else:
            import llama_cpp

            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = QUANT_TYPES[qtype]
            params.nthread = nthread
            keep = None  # the imatrix buffers must outlive the call
            if imatrix is not None:
                from .imatrix import QuantizeImatrix

                keep = QuantizeImatrix(imatrix)
                keep.apply(params)
            rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
            del keep
        if rc != 0:
            raise AxpackError(f"{src}: quantizing to {qtype} failed with code {rc}")
        os.chmod(tmp, 0o644)
        return tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def convert(model_dir: Path, dest: Path, outtype: str, llama_cpp_dir: Path, model_name: str | None = None) -> None:
    """Convert ``model_dir`` to ``dest`` atomically (no manifest; see :func:`build_ggufs`)."""
    os.replace(convert_to_tmp(model_dir, dest, outtype, llama_cpp_dir, model_name), dest)


def quantize(src: Path, dest: Path, qtype: str, nthread: int = 0, tool: Path | None = None) -> None:
    """Quantize ``src`` to ``qtype`` at ``dest`` atomically (no manifest; see :func:`build_ggufs`)."""
    os.replace(quantize_to_tmp(src, dest, qtype, nthread, tool), dest)


def build_ggufs(model_dir: str | Path, out: str | Path, name: str, quants: list[str],
                outtype: str = "f16", llama_cpp_dir: str | Path | None = None,
                source_config: str | None = None, nthread: int = 0,
                imatrix: str | Path | None = None, imatrix_tokens: int | None = None) -> dict[str, Path]:
    """Convert ``model_dir`` once to ``{name}-{outtype}.gguf``, then quantize to each of ``quants``.

    Args:
        model_dir: merged HF folder.
        out: folder for the GGUFs and manifest.json.
        name: file stem (the run name).
        quants: types from :data:`QUANT_TYPES`.
        outtype: the intermediate's type (f16 default; bf16 keeps bf16 weights exact).
        llama_cpp_dir: a user's llama.cpp checkout (default: the pinned converter).
        source_config: the training config, recorded per artifact.
        nthread: quantize threads (0: llama.cpp's default, all cores).
        imatrix: quantize with an importance matrix: a prep JSONL of conversations
            to compute ``{name}-imatrix.gguf`` from (:func:`axpack.imatrix.build`, on
            this model, recorded in the manifest's ``imatrix``), or an existing
            imatrix GGUF (``llama-imatrix``'s or axpack's) used as is. Types in
            :data:`IMATRIX_TYPES` use it; Q8_0 and the unquantized types do not.
        imatrix_tokens: calibration token budget (default
            :data:`axpack.imatrix.DEFAULT_TOKENS`).

    Returns:
        ``{type: path}`` for the intermediate and every quant.

    Raises:
        AxpackError: not a HF model folder, weights not safetensors, converter
            missing or failing, quantize failing, not enough disk.
    """
    model_dir, out = Path(model_dir), Path(out)
    b = _open_build(model_dir, out, name, llama_cpp_dir, source_config, nthread, imatrix)
    base = _base_plan(b, outtype)
    _check_disk(b, base, quants)
    pool = ThreadPoolExecutor(max_workers=1)
    pending: list[tuple[Path, Path, dict[str, Any], Future]] = []
    try:
        # the intermediate's checksum is verified in the background while the first
        # quant runs; nothing is renamed into place before it has matched
        base_check = pool.submit(sha256_file, base["path"]) if base["claimed"] else None
        if base["claimed"]:
            LOG.info(f"axpack: {base['path']} is current; skipping conversion (its checksum is checked alongside)")
        else:
            t0 = time.monotonic()
            tmp = convert_to_tmp(model_dir, base["path"], outtype, b.lcd, name)
            entry = _entry(tmp, outtype, base["inputs"], base["made_from"], base["settings"], source_config,
                           time.monotonic() - t0, sha256_file(tmp))
            _commit(out, b.manifest, tmp, base["path"], entry)
        base_sha = b.manifest["artifacts"][base["path"].name]["sha256"]
        _drop_made_from_older(b, base["path"].name, base_sha)
        im = (None, None)
        if imatrix is not None and any(q in IMATRIX_TYPES for q in quants):
            im = ensure_imatrix(model_dir, out, name, base["path"], base_sha, Path(imatrix), imatrix_tokens,
                                b.manifest)
        elif b.manifest.pop("imatrix", None) is not None:
            atomic_write_json(out / MANIFEST, b.manifest)
        result = _quantize_all(b, base["path"], base_sha, quants, im, base_check, pool, pending)
    except _StaleBase:
        for tmp, *_ in pending:
            tmp.unlink(missing_ok=True)
        pool.shutdown()
        LOG.info(f"axpack: {base['path']} does not match its recorded checksum; converting again")
        del b.manifest["artifacts"][base["path"].name]
        atomic_write_json(out / MANIFEST, b.manifest)
        return build_ggufs(model_dir, out, name, quants, outtype, llama_cpp_dir, source_config, nthread,
                           imatrix, imatrix_tokens)
    finally:
        for tmp, *_ in pending:
            tmp.unlink(missing_ok=True)
        pool.shutdown()
    return {outtype: base["path"], **result}


@dataclass
class _Build:
    """What one :func:`build_ggufs` call works with."""

    model_dir: Path
    out: Path
    name: str
    lcd: Path
    conv_id: str
    qtool_id: str
    qtool: Path | None
    manifest: dict[str, Any]
    source_config: str | None
    nthread: int


def _open_build(model_dir: Path, out: Path, name: str, llama_cpp_dir: str | Path | None,
                source_config: str | None, nthread: int, imatrix: str | Path | None) -> _Build:
    """Check the inputs, clean an interrupted run's temps, load and stamp the manifest."""
    if not (model_dir / "config.json").is_file():
        raise AxpackError(f"{model_dir}: no config.json; pass a merged HF model folder (make merge first)")
    require_safetensors(model_dir)
    if imatrix is not None:
        check_imatrix_source(Path(imatrix))
    lcd = Path(llama_cpp_dir) if llama_cpp_dir else env.llama_cpp_dir()
    conv_id = converter_id(lcd, user_dir=llama_cpp_dir is not None)
    qtool_id, qtool = quantize_tool(Path(llama_cpp_dir) if llama_cpp_dir else None)
    out.mkdir(parents=True, exist_ok=True)
    # a killed run's hidden temps: the GGUFs' and the imatrix's (.{name}-*.gguf.XXXX.tmp)
    for p in remove_stale_temps(out, f"{glob.escape(name)}-*.gguf", pattern=True):
        LOG.info(f"axpack: removed {p.name} (left by an interrupted run)")
    manifest = load_manifest(out)
    manifest.update({"name": name, "model_dir": str(model_dir), "source_config": source_config,
                     "converter": conv_id, "quantizer": qtool_id})
    return _Build(model_dir, out, name, lcd, conv_id, qtool_id, qtool, manifest, source_config, nthread)


def _base_plan(b: _Build, outtype: str) -> dict[str, Any]:
    """The intermediate: path, what it is made from, settings, input fingerprint, and
    whether the manifest claims it current (checksum not read yet)."""
    path = b.out / f"{b.name}-{outtype}.gguf"
    made_from = model_files(b.model_dir, b.manifest.setdefault("input_cache", {}))
    settings = {"converter": b.conv_id, "outtype": outtype, "model_name": b.name}
    mtp_args, mtp_why = mtp_decision(b.model_dir)
    if mtp_why:
        settings["mtp"] = "no-mtp" if mtp_args else "kept"
    inputs = inputs_fingerprint(made_from, settings)
    claimed = _claims_current(b.out, b.manifest["artifacts"].get(path.name), path.name, inputs)
    return {"path": path, "outtype": outtype, "made_from": made_from, "settings": settings, "inputs": inputs,
            "claimed": claimed}


def _check_disk(b: _Build, base: dict[str, Any], quants: list[str]) -> None:
    """Refuse before writing when what still has to be written cannot fit (the intermediate stays)."""
    n_params = count_params(b.model_dir)
    q_from = {base["path"].name: b.manifest["artifacts"][base["path"].name]["sha256"]} if base["claimed"] else None
    todo = [q for q in quants if not (q_from and _claims_current(
        b.out, b.manifest["artifacts"].get(f"{b.name}-{q}.gguf"), f"{b.name}-{q}.gguf",
        inputs_fingerprint(q_from, {"type": q, "quantizer": b.qtool_id})))]
    check_free_disk(b.out, (0 if base["claimed"] else estimate_bytes(n_params, base["outtype"]))
                    + sum(estimate_bytes(n_params, q) for q in todo))


def _drop_made_from_older(b: _Build, base_name: str, base_sha: str) -> None:
    """Remove artifacts made from an earlier intermediate: a different model; never leave
    one beside the new one."""
    for stale, entry in list(b.manifest["artifacts"].items()):
        src = entry.get("made_from") or {}
        if base_name in src and src[base_name] != base_sha:
            (b.out / stale).unlink(missing_ok=True)
            del b.manifest["artifacts"][stale]
            LOG.info(f"axpack: removed {stale} (made from an earlier {base_name})")


def _quantize_all(b: _Build, base_path: Path, base_sha: str, quants: list[str], im: tuple[Path | None, str | None],
                  base_check: Future | None, pool: ThreadPoolExecutor,
                  pending: list[tuple[Path, Path, dict[str, Any], Future]]) -> dict[str, Path]:
    """Quantize each type not current, biggest first; each file's checksum is computed
    while the next one quantizes, and it is committed only after that.

    Raises:
        _StaleBase: the intermediate's background checksum did not match the manifest.
    """
    result: dict[str, Path] = {}
    im_path, im_sha = im
    q_from = {base_path.name: base_sha}
    for q in sorted(quants, key=lambda t: -BITS_PER_WEIGHT.get(t, 16)):
        # biggest first: the one checksum that cannot overlap a quantize is then the smallest file's
        qname = f"{b.name}-{q}.gguf"
        q_imatrix = im_path if q in IMATRIX_TYPES else None
        q_settings = {"type": q, "quantizer": b.qtool_id, **({"imatrix": im_sha} if q_imatrix else {})}
        inputs = inputs_fingerprint(q_from, q_settings)
        qpath = result[q] = b.out / qname
        if is_current(b.out, b.manifest, qname, inputs):
            LOG.info(f"axpack: {qpath} is current; skipping")
            continue
        LOG.info(f"axpack: quantizing {base_path.name} -> {qname}")
        t0 = time.monotonic()
        tmp = quantize_to_tmp(base_path, qpath, q, b.nthread, b.qtool, q_imatrix)
        entry = _entry(tmp, q, inputs, q_from, q_settings, b.source_config, time.monotonic() - t0, None)
        if base_check is not None and base_check.result() != base_sha:
            tmp.unlink(missing_ok=True)
            raise _StaleBase()
        base_check = None
        while pending:  # the previous quant's checksum was computed while this one ran
            _commit(b.out, b.manifest, *pending.pop(0))
        pending.append((tmp, qpath, entry, pool.submit(sha256_file, tmp)))
    if base_check is not None and base_check.result() != base_sha:
        raise _StaleBase()
    while pending:
        _commit(b.out, b.manifest, *pending.pop(0))
    return {q: result[q] for q in quants}


def check_imatrix_source(source: Path) -> None:
    """Refuse a bad ``--imatrix`` before any conversion: missing, an imatrix GGUF that is
    not one, or a JSONL without ``messages`` conversations.

    Raises:
        AxpackError: one line naming the file and the fix.
    """
    from . import imatrix as im
    from . import quant_quality as qq

    if not source.is_file():
        raise AxpackError(f"--imatrix {source}: no such file; pass the run's data/sft.jsonl or an imatrix .gguf")
    if source.suffix == ".gguf":
        im.read(source)
    elif not qq.read_conversations(source):
        raise AxpackError(f"--imatrix {source}: no 'messages' conversations to calibrate on; "
                          "pass a prep SFT output (runs/<run>/data/sft.jsonl)")


def ensure_imatrix(model_dir: Path, out: Path, name: str, base_path: Path, base_sha: str, source: Path,
                   tokens: int | None, manifest: dict[str, Any]) -> tuple[Path, str]:
    """The imatrix to quantize with: ``source`` itself when it is an imatrix GGUF, else
    ``{name}-imatrix.gguf`` computed from the conversations in ``source`` on ``model_dir``
    (skipped when the manifest's record has the same inputs and checksum). Records
    ``manifest["imatrix"]``: file, sha256, inputs, calibration, coverage.

    Returns:
        (path, sha256) of the imatrix.

    Raises:
        AxpackError: ``source`` missing, or from :func:`axpack.imatrix.build` / :func:`axpack.imatrix.read`.
    """
    from . import imatrix as im

    check_imatrix_source(source)
    if source.suffix == ".gguf":
        sha = sha256_file(source)
        manifest["imatrix"] = {"file": str(source), "sha256": sha, "given": True}
        atomic_write_json(out / MANIFEST, manifest)
        return source, sha
    tokens = tokens or im.DEFAULT_TOKENS
    dest = out / f"{name}-imatrix.gguf"
    inputs = inputs_fingerprint({base_path.name: base_sha},
                                {"calibration": im.calibration_fingerprint(source, tokens), "chunk": im.CHUNK})
    rec = manifest.get("imatrix") or {}
    if rec.get("inputs") == inputs and dest.is_file() and sha256_file(dest) == rec.get("sha256"):
        LOG.info(f"axpack: {dest} is current; reusing the importance matrix")
        return dest, rec["sha256"]
    LOG.info(f"axpack: importance matrix: {model_dir} over {source} (up to {tokens} tokens) -> {dest.name}")
    t0 = time.monotonic()
    rec = {**im.build(model_dir, base_path, source, dest, tokens), "inputs": inputs,
           "seconds": round(time.monotonic() - t0, 2)}
    cov = rec["coverage"]
    LOG.info(f"axpack: imatrix covers {cov['mapped']} of {cov['tensors']} weight matrices "
             f"({rec['calibration']['tokens']} tokens, {rec['calibration']['windows']} windows)")
    manifest["imatrix"] = rec
    atomic_write_json(out / MANIFEST, manifest)
    return dest, rec["sha256"]


class _StaleBase(Exception):
    """The intermediate on disk is not the one the manifest recorded."""


def _claims_current(out: Path, entry: dict[str, Any] | None, name: str, inputs: str) -> bool:
    """The manifest says ``name`` is current and the file has the recorded size (checksum not read yet)."""
    path = out / name
    return bool(entry and entry.get("inputs") == inputs and path.is_file()
                and entry.get("size") == path.stat().st_size)


def _commit(out: Path, manifest: dict[str, Any], tmp: Path, dest: Path, entry: dict[str, Any],
            sha: Future | str | None = None) -> None:
    """Record ``tmp`` in the manifest, then rename it to ``dest``: a killed run leaves
    either a hidden temp file or a manifest entry whose file is missing (redone), never
    an unrecorded finished-looking GGUF."""
    if isinstance(sha, Future):
        sha = sha.result()
    if sha is not None:
        entry["sha256"] = sha
    manifest["artifacts"][dest.name] = entry
    atomic_write_json(out / MANIFEST, manifest)
    os.replace(tmp, dest)


def _entry(path: Path, gtype: str, inputs: str, made_from: dict[str, str], settings: dict[str, Any],
           source_config: str | None, seconds: float, sha: str | None) -> dict[str, Any]:
    return {"sha256": sha, "size": path.stat().st_size, "type": gtype, "inputs": inputs,
            "made_from": made_from, "settings": settings, "source_config": source_config,
            "seconds": round(seconds, 2)}
