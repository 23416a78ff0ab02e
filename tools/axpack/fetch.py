"""``axpack fetch CONFIG...``: pre-download each config's base model into the
Hugging Face cache, so a rented GPU does not idle on downloads.

Uses ``huggingface_hub.snapshot_download`` (resumable, parallel, the same
cache Axolotl/transformers read, ``HF_HOME`` respected). Only what training
reads is fetched: ``IGNORE`` skips the duplicate checkpoints some repos ship
(Meta's ``original/*.pth``, ``.bin`` twins of safetensors, GGUF/ONNX exports).
A ``base_model`` that is a local folder (``models/...``, or ``runs/<run>/
sft-merged`` made by ``axpack merge``) has nothing to fetch and is reported
as such; its DPO base comes from the SFT config's fetch.

``make fetch CONFIG=configs/<model>/<file>.yaml`` runs it; several configs
sharing a base model download it once.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from . import env
from .config import load_config
from .errors import AxpackError

# Files a training run never reads: duplicate or foreign weight formats.
IGNORE = ["original/*", "*.pth", "*.pt", "*.bin", "*.gguf", "*.onnx", "*.onnx_data", "*.h5",
          "*.msgpack", "*.ot", "*.tflite", "*.mlmodel", "coreml/*"]
LOCAL_PREFIXES = ("runs/", "models/", "./", "../", "/", "~")


def repos_of(cfg: dict[str, Any]) -> list[tuple[str, str | None]]:
    """Hub repos a config loads: ``[(repo_id, revision), ...]`` for
    ``base_model`` and a different ``tokenizer_config``; local paths skipped."""
    out: list[tuple[str, str | None]] = []
    rev = cfg.get("revision_of_model")
    for key in ("base_model", "tokenizer_config"):
        value = cfg.get(key)
        if not isinstance(value, str) or not value or value.startswith(LOCAL_PREFIXES) or Path(value).exists():
            continue
        item = (value, str(rev) if rev and key == "base_model" else None)
        if item not in out and value not in (r for r, _ in out):
            out.append(item)
    return out


def fetch(configs: list[str | Path], cache_dir: str | None = None, dry_run: bool = False,
          download: Callable[..., str] | None = None) -> dict[str, str | None]:
    """Download the base models of ``configs`` into the HF cache.

    Args:
        configs: config files.
        cache_dir: HF cache folder (default: huggingface_hub's, i.e. ``HF_HOME``).
        dry_run: only list what would be fetched.
        download: the download function (default ``huggingface_hub.snapshot_download``).

    Returns:
        ``{repo_id: local snapshot folder (None on dry run)}``.

    Raises:
        AxpackError: a config is unreadable; the repo is gated, missing, or
            the Hub is unreachable (with what to do).
    """
    repos: list[tuple[str, str | None]] = []
    for config in configs:
        cfg = load_config(config)
        found = repos_of(cfg)
        if not found:
            click.echo(f"axpack fetch: {config}: base_model {cfg.get('base_model')} is local; nothing to fetch")
        for item in found:
            if item not in repos:
                repos.append(item)
    out: dict[str, str | None] = {}
    if dry_run:
        for repo, rev in repos:
            click.echo(f"axpack fetch: would download {repo}" + (f"@{rev}" if rev else ""))
            out[repo] = None
        return out
    env.apply_to_process()
    if download is None:
        from huggingface_hub import snapshot_download as download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    for repo, rev in repos:
        click.echo(f"axpack fetch: {repo}" + (f"@{rev}" if rev else "") + " -> Hugging Face cache")
        try:
            out[repo] = download(repo_id=repo, revision=rev, cache_dir=cache_dir, ignore_patterns=IGNORE)
        except GatedRepoError:
            raise AxpackError(f"fetch {repo}: the repo is gated; accept its licence at https://huggingface.co/{repo} "
                              "and log in (hf auth login), then rerun") from None
        except RepositoryNotFoundError:
            raise AxpackError(f"fetch {repo}: no such model on the Hub (or it is private); check base_model") from None
        except RevisionNotFoundError:
            raise AxpackError(f"fetch {repo}: revision {rev} not found; check revision_of_model") from None
        except LocalEntryNotFoundError:
            raise AxpackError(f"fetch {repo}: offline and not in the cache (HF_HUB_OFFLINE / AXPACK_OFFLINE set?); "
                              "fetch needs the Hub") from None
        except HfHubHTTPError as err:
            raise AxpackError(f"fetch {repo}: Hub error ({str(err).splitlines()[0]}); retry, it resumes") from None
        except OSError as err:
            raise AxpackError(f"fetch {repo}: cannot write the cache ({err}); free disk space or set HF_HOME") from None
        click.echo(f"axpack fetch: {repo} ready at {out[repo]}")
    return out


@click.command("fetch")
@click.argument("configs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--cache-dir", type=click.Path(file_okay=False), help="HF cache folder [default: HF_HOME's].")
@click.option("--dry-run", is_flag=True, help="List what would be downloaded.")
def command(configs, cache_dir, dry_run):
    """Pre-download the base model of each CONFIG into the Hugging Face cache."""
    fetch(list(configs), cache_dir, dry_run)
