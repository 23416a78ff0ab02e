"""Convert a merged HF model to GGUF once, then quantize it to each type.

The converter is llama.cpp's ``convert_hf_to_gguf.py`` from the pinned
``llama-cpp-python`` source package (``make setup`` fetches it into
``.cache/llama.cpp`` with its ``conversion/`` package and ``gguf-py/``);
``--llama-cpp-dir`` points at a user's own checkout instead. Quantization calls
``llama_cpp.llama_model_quantize`` (the same C function as the
``llama-quantize`` tool; measured byte-identical output).

Outputs in ``OUT``: ``{name}-f16.gguf`` (the one intermediate),
``{name}-{type}.gguf`` per quant type, and ``manifest.json`` with sha256,
size, type and an input fingerprint per artifact. Every file is written to a
temp name and renamed, so a killed run never leaves a finished-looking GGUF;
a rerun skips an artifact only when its checksum and input fingerprint match.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from . import env
from .errors import AxpackError
from .fsutil import atomic_write_json, sha256_file

MANIFEST = "manifest.json"
OUTTYPES = ("f16", "bf16", "f32", "q8_0")
# GGUF file types by name -> llama_ftype (llama.h: enum llama_ftype)
QUANT_TYPES: dict[str, int] = {
    "q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9, "q2_k": 10,
    "q3_k_s": 11, "q3_k_m": 12, "q3_k_l": 13, "q4_k_s": 14, "q4_k_m": 15,
    "q5_k_s": 16, "q5_k_m": 17, "q6_k": 18, "iq4_nl": 25, "iq4_xs": 30,
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


def model_fingerprint(model_dir: Path) -> str:
    """sha256 over the weights (``*.safetensors``) and config/tokenizer files of a HF folder."""
    h = hashlib.sha256()
    files = sorted(model_dir.glob("*.safetensors")) + [model_dir / n for n in MODEL_FILES]
    for f in files:
        if f.is_file():
            h.update(f.name.encode() + b"\0" + sha256_file(f).encode())
    return h.hexdigest()


def converter_path(llama_cpp_dir: Path) -> Path:
    """``convert_hf_to_gguf.py`` inside ``llama_cpp_dir``.

    Raises:
        AxpackError: the folder has no converter (run make setup).
    """
    script = llama_cpp_dir / "convert_hf_to_gguf.py"
    if not script.is_file():
        raise AxpackError(f"{script}: llama.cpp converter not found; run make setup (or pass --llama-cpp-dir)")
    return script


def converter_id(llama_cpp_dir: Path) -> str:
    """Identifies the converter: the PINNED line when axpack fetched it, else the script's sha256."""
    pinned = llama_cpp_dir / "PINNED"
    if pinned.is_file():
        return pinned.read_text().strip()
    return "convert_hf_to_gguf.py sha256:" + sha256_file(converter_path(llama_cpp_dir))


def load_manifest(out: Path) -> dict[str, Any]:
    """The manifest in ``out`` (``{"artifacts": {file: entry}}``), empty if absent or unreadable."""
    try:
        data = json.loads((out / MANIFEST).read_text())
        if isinstance(data, dict) and isinstance(data.get("artifacts"), dict):
            return data
    except (OSError, ValueError):
        pass
    return {"artifacts": {}}


def is_current(out: Path, manifest: dict[str, Any], name: str, inputs: str) -> bool:
    """True when ``out/name`` exists, its sha256 matches the manifest and so do its inputs."""
    entry = manifest["artifacts"].get(name)
    path = out / name
    return bool(entry and path.is_file() and entry.get("inputs") == inputs
                and entry.get("size") == path.stat().st_size and entry.get("sha256") == sha256_file(path))


def check_free_disk(out: Path, need_bytes: int) -> None:
    """Raise AxpackError when ``out``'s filesystem has less than ``need_bytes`` free."""
    free = shutil.disk_usage(out).free
    if free < need_bytes:
        raise AxpackError(f"{out}: {free / 2**30:.1f} GiB free, the GGUFs need ~{need_bytes / 2**30:.1f} GiB; free some disk")


def convert(model_dir: Path, dest: Path, outtype: str, llama_cpp_dir: Path) -> None:
    """Run the pinned converter on ``model_dir``, writing ``dest`` atomically."""
    script = converter_path(llama_cpp_dir)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        cmd = [sys.executable, str(script), str(model_dir), "--outfile", tmp, "--outtype", outtype]
        click.echo("axpack: " + " ".join(cmd), err=True)
        proc = subprocess.run(cmd, env=env.child_env(), capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise AxpackError(f"{model_dir}: llama.cpp convert_hf_to_gguf.py failed: {last}")
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)


def quantize(src: Path, dest: Path, qtype: str, nthread: int = 0) -> None:
    """Quantize GGUF ``src`` to ``qtype`` at ``dest`` (atomic) with llama_model_quantize."""
    import llama_cpp

    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = QUANT_TYPES[qtype]
        params.nthread = nthread
        rc = llama_cpp.llama_model_quantize(str(src).encode(), tmp.encode(), params)
        if rc != 0:
            raise AxpackError(f"{src}: llama_model_quantize to {qtype} failed with code {rc}")
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)


def build_ggufs(model_dir: str | Path, out: str | Path, name: str, quants: list[str],
                outtype: str = "f16", llama_cpp_dir: str | Path | None = None) -> dict[str, Path]:
    """Convert ``model_dir`` once to ``{name}-{outtype}.gguf``, then quantize to each of ``quants``.

    Returns:
        ``{type: path}`` for the intermediate and every quant.

    Raises:
        AxpackError: not a HF model folder, converter missing or failing,
            quantize failing, not enough disk.
    """
    model_dir, out = Path(model_dir), Path(out)
    if not (model_dir / "config.json").is_file():
        raise AxpackError(f"{model_dir}: no config.json; pass a merged HF model folder (make merge first)")
    lcd = Path(llama_cpp_dir) if llama_cpp_dir else env.llama_cpp_dir()
    out.mkdir(parents=True, exist_ok=True)
    weights = sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))
    check_free_disk(out, int(weights * (0.5 + 0.4 * len(quants))) + (64 << 20))
    manifest = load_manifest(out)
    result: dict[str, Path] = {}

    base_name = f"{name}-{outtype}.gguf"
    base_inputs = hashlib.sha256(
        f"{model_fingerprint(model_dir)}|{converter_id(lcd)}|{outtype}".encode()).hexdigest()
    base_path = out / base_name
    if is_current(out, manifest, base_name, base_inputs):
        click.echo(f"axpack: {base_path} is current; skipping conversion")
    else:
        convert(model_dir, base_path, outtype, lcd)
        manifest["artifacts"][base_name] = _entry(base_path, outtype, base_inputs, str(model_dir), converter_id(lcd))
        atomic_write_json(out / MANIFEST, manifest)
    result[outtype] = base_path

    base_sha = manifest["artifacts"][base_name]["sha256"]
    for q in quants:
        qname = f"{name}-{q}.gguf"
        inputs = hashlib.sha256(f"{base_sha}|{q}".encode()).hexdigest()
        qpath = out / qname
        if is_current(out, manifest, qname, inputs):
            click.echo(f"axpack: {qpath} is current; skipping")
        else:
            click.echo(f"axpack: quantizing {base_name} -> {qname}")
            quantize(base_path, qpath, q)
            manifest["artifacts"][qname] = _entry(qpath, q, inputs, base_name, "llama_model_quantize")
            atomic_write_json(out / MANIFEST, manifest)
        result[q] = qpath
    return result


def _entry(path: Path, gtype: str, inputs: str, source: str, tool: str) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "size": path.stat().st_size, "type": gtype,
            "inputs": inputs, "source": source, "tool": tool}


@click.command("gguf")
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Folder for the GGUFs.")
@click.option("--name", required=True, help="File stem: {name}-{type}.gguf.")
@click.option("--quants", default="q4_k_m,q8_0", show_default=True, help="Comma-separated quant types.")
@click.option("--outtype", type=click.Choice(OUTTYPES), default="f16", show_default=True,
              help="Type of the one converted intermediate.")
@click.option("--llama-cpp-dir", type=click.Path(file_okay=False), help="Your own llama.cpp checkout.")
def command(model_dir, out, name, quants, outtype, llama_cpp_dir):
    """Convert MODEL_DIR to GGUF once, then quantize it to each type."""
    paths = build_ggufs(model_dir, out, name, parse_quants(quants), outtype, llama_cpp_dir)
    for t, p in paths.items():
        click.echo(f"axpack: {t:>7}  {p}")
