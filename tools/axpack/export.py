"""``axpack export CONFIG``: merge -> one f16 GGUF -> each quant -> serving files.

One command from a trained config to files a user can serve:

1. merge the adapter with axpack's streaming merge (:mod:`axpack.merge`;
   skipped when ``merged/`` already holds this merge);
2. convert the merged model once to ``{run}-f16.gguf`` with the pinned
   llama.cpp converter and quantize each ``--quants`` type from that one
   intermediate (:mod:`axpack.gguf_build`: atomic writes, ``manifest.json`` with
   checksums and input fingerprints, reruns skip what is current);
3. write the Ollama ``Modelfile`` and ``llama-server.sh`` beside the GGUFs
   (:mod:`axpack.serving`).

Everything lands in ``runs/<run>/gguf/`` (``<run>`` = the folder holding the
config's ``output_dir``). Free disk is checked before the merge starts.

Each system's quant set and llama-server flags come from its config's
``# axpack: export ...`` / ``# axpack: serve ...`` header lines
(:func:`axpack.serving.read_directives`); ``--quants`` / ``--outtype`` /
``--ctx`` on the command line win, and without either the defaults are
``q4_k_m,q8_0``, ``f16`` and ``sequence_len`` (at least 2048).

``axpack verify runs/<run>/gguf`` then proves the GGUFs are the trained model.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import click

from . import env
from .config import parse_overrides, resolve
from .errors import AxpackError
from .gguf_build import (
    OUTTYPES,
    build_ggufs,
    converter_path,
    count_params,
    estimate_bytes,
    load_manifest,
    parse_quants,
)
from .merging import base_model_dir, merge_adapter
from .runs import MERGE_FILE, merged_dir_for

DEFAULT_QUANTS = "q4_k_m,q8_0"
# --imatrix default, chosen by measurement (make bench-imatrix on the demo, README "Importance
# matrix"): an imatrix from the run's own conversations cut Q4_K_M's mean KLD on held-out general
# text by 35 % but raised it by 25 % on held-out conversations (both splits), the domain the
# served model is for; Q3_K_M and IQ4_XS improved on both. So plain quants by default, and
# "auto" (calibrate on data/sft.jsonl) is one flag away for the smaller types.
DEFAULT_IMATRIX = "none"
SERVE_PREFERENCE = ("q4_k_m", "q5_k_m", "q6_k", "q8_0")


def serve_quant(quants: list[str]) -> str:
    """The quant the serving files point at: Q4_K_M when exported (the usual default), else the first."""
    for q in SERVE_PREFERENCE:
        if q in quants:
            return q
    return quants[0]


def imatrix_source(choice: str | Path | None, run_dir: Path) -> Path | None:
    """What ``--imatrix`` means for a run: ``"auto"`` -> ``run_dir/data/sft.jsonl`` (the
    run's own prep output) when it exists, else None; ``"none"``/None -> None; else the path."""
    if choice is None or str(choice) == "none":
        return None
    if str(choice) == "auto":
        data = run_dir / "data" / "sft.jsonl"
        if data.is_file() and data.stat().st_size:
            return data
        click.echo(f"axpack: no {data}: quantizing without an importance matrix "
                   "(--imatrix FILE calibrates on your conversations)", err=True)
        return None
    return Path(choice)


def preflight_disk(cfg: dict[str, Any], target: Path, out: Path, quants: list[str], outtype: str) -> None:
    """Refuse before any work when the merge + GGUFs cannot fit on ``out``'s disk.

    Counts the merged copy (the base's weight size) unless ``target`` already
    holds a merge, plus the intermediate and every quant not yet in the manifest.

    Raises:
        AxpackError: not enough free disk.
    """
    base = base_model_dir(cfg)
    n = count_params(base)
    need = 0
    if not (target / MERGE_FILE).is_file():
        need += sum(f.stat().st_size for f in base.glob("*.safetensors"))
    have = {e.get("type") for e in load_manifest(out)["artifacts"].values()}
    for t in [outtype, *quants]:
        if t not in have:
            need += estimate_bytes(n, t)
    probe = out if out.exists() else out.parent if out.parent.exists() else Path(".")
    free = shutil.disk_usage(probe).free
    if free < need:
        raise AxpackError(f"{probe}: {free / 2**30:.2f} GiB free, merge + GGUFs need ~{need / 2**30:.2f} GiB; "
                          "free some disk or export fewer --quants")


def run_export(config: str | Path, quants: list[str] | None, overrides: dict[str, Any] | None = None,
               outtype: str | None = None, llama_cpp_dir: str | Path | None = None, engine: str = "axpack",
               qlora_base: str = "nf4", ctx: int | None = None, out: str | Path | None = None,
               imatrix: str | Path | None = DEFAULT_IMATRIX, imatrix_tokens: int | None = None) -> dict[str, Any]:
    """Merge, convert once, quantize each type and write the serving files.

    Args:
        config: the trained Axolotl YAML (normally the DPO one; an SFT config
            exports ``sft-merged``).
        quants: quant types (see :data:`axpack.gguf_build.QUANT_TYPES`); ``None``: the
            config's ``# axpack: export --quants``, else :data:`DEFAULT_QUANTS`.
        overrides: ``--set`` overrides, as at training.
        outtype: the intermediate's type (f16 / bf16 / f32 / q8_0); ``None``: the
            config's ``# axpack: export --outtype``, else f16.
        llama_cpp_dir: a user's own llama.cpp (default: the pinned converter).
        engine, qlora_base: merge settings (see :func:`axpack.merging.run_merge`).
        ctx: llama-server context length (default: the header's ``--ctx``, else the
            config's ``sequence_len``, at least 2048).
        out: export folder (default ``runs/<run>/gguf``); files are still named ``{run}-{type}.gguf``.
        imatrix: ``"auto"``: compute an importance matrix from the run's own
            ``data/sft.jsonl`` when it exists (:func:`imatrix_source`); ``"none"`` / None:
            plain quantization; a path: calibrate on that JSONL or use that imatrix GGUF.
        imatrix_tokens: calibration token budget (see :mod:`axpack.imatrix`).

    Returns:
        ``{"merged": Path, "out": Path, "ggufs": {type: Path}, "serving": {...}}``.

    Raises:
        AxpackError: no converter in ``llama_cpp_dir`` (checked before the merge),
            or from the merge, the converter, quantize, or the disk check.
    """
    from .serving import read_directives, write_serving_files

    directives = read_directives(config)
    if quants is None:
        quants = parse_quants(directives.quants or DEFAULT_QUANTS)
    outtype = outtype or directives.outtype or "f16"
    if not quants:
        raise AxpackError("--quants: no quant types given; e.g. --quants q4_k_m,q8_0", 2)
    # a --llama-cpp-dir without the converter is refused before the merge, not after it
    converter_path(Path(llama_cpp_dir) if llama_cpp_dir else env.llama_cpp_dir(), user_dir=llama_cpp_dir is not None)
    cfg = resolve(config, overrides)
    if not cfg.get("output_dir"):
        raise AxpackError(f"{config}: output_dir: missing; it names the trained adapter folder")
    target = merged_dir_for(cfg)
    run_dir = target.parent
    out = Path(out) if out else run_dir / "gguf"
    if cfg.get("adapter"):
        preflight_disk(cfg, target, out, quants, outtype)
        merged = merge_adapter(config, overrides, engine=engine, qlora_base=qlora_base)
    else:  # a full fine-tune: output_dir is the model
        merged = Path(cfg["output_dir"])
    ggufs = build_ggufs(merged, out, run_dir.name, quants, outtype, llama_cpp_dir, source_config=str(config),
                        imatrix=imatrix_source(imatrix, run_dir), imatrix_tokens=imatrix_tokens)
    q = serve_quant(quants)
    ctx = ctx or directives.ctx or max(2048, int(cfg.get("sequence_len") or 0))
    serving = write_serving_files(merged, out, ggufs[q].name, ctx, flags=directives.serve,
                                  template_kwargs=cfg.get("chat_template_kwargs") or None)
    return {"merged": merged, "out": out, "ggufs": ggufs, "serving": serving}


@click.command("export")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--quants", default=None,
              help="Comma-separated quant types, e.g. q4_k_m,q5_k_m,q6_k,q8_0 "
                   f"[default: the config's '# axpack: export --quants', else {DEFAULT_QUANTS}].")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Same overrides as at training.")
@click.option("--outtype", type=click.Choice(OUTTYPES), default=None,
              help="Type of the one converted intermediate [default: the config's '# axpack: export', else f16].")
@click.option("--llama-cpp-dir", type=click.Path(file_okay=False),
              help="Your own llama.cpp checkout [default: the pinned one in .cache/llama.cpp].")
@click.option("--engine", type=click.Choice(["axpack", "axolotl"]), default="axpack", show_default=True,
              help="Merge engine (axolotl: merge-lora, for DoRA / resized embeddings).")
@click.option("--qlora-base", type=click.Choice(["nf4", "pristine"]), default="nf4", show_default=True,
              help="QLoRA only: fold the delta into the NF4 round trip (the trained model) or the original base.")
@click.option("--ctx", type=int, default=None, help="llama-server context length [default: sequence_len, >= 2048].")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Export folder [default: runs/<run>/gguf].")
@click.option("--imatrix", default=DEFAULT_IMATRIX, show_default=True, metavar="auto|none|FILE",
              help="Importance matrix for the quants: auto = from the run's data/sft.jsonl; none; or a "
                   "conversations JSONL / imatrix .gguf.")
@click.option("--imatrix-tokens", type=click.IntRange(min=16), default=None,
              help="Calibration token budget [default: 8192].")
def command(config, quants, sets, outtype, llama_cpp_dir, engine, qlora_base, ctx, out, imatrix, imatrix_tokens):
    """Merge CONFIG's adapter, convert once to GGUF, quantize each type, write serving files."""
    res = run_export(config, parse_quants(quants) if quants is not None else None, parse_overrides(sets), outtype,
                     llama_cpp_dir, engine, qlora_base, ctx, out, imatrix, imatrix_tokens)
    manifest = load_manifest(res["out"])["artifacts"]
    for t, p in res["ggufs"].items():
        size = manifest.get(p.name, {}).get("size", p.stat().st_size)
        click.echo(f"axpack: {t:>7}  {size / 2**20:8.1f} MiB  {p}")
    click.echo(f"axpack: Ollama: ollama create {res['merged'].parent.name} -f {res['serving']['modelfile']}")
    click.echo(f"axpack: llama-server: {res['serving']['server_script']}  ({res['serving']['server_command']})")
    click.echo(f"axpack: next: axpack verify {res['out']}")
