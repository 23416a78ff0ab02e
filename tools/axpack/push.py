"""``axpack push EXPORT_DIR --repo ORG/NAME``: one Hub commit with everything a user needs.

Uploads, in ONE commit (huggingface_hub ``create_commit``; a failed upload
leaves the repo as it was), into a model repo that is private unless
``--public``:

- the merged model at the repo root (``from_pretrained("ORG/NAME")`` works),
- the GGUFs with ``manifest.json``, ``verify.json``, ``Modelfile`` and
  ``llama-server.sh`` under ``gguf/``,
- the adapters under ``adapters/sft/`` and ``adapters/dpo/`` (weights, adapter
  config, tokenizer, the exact config Axolotl ran; no optimizer states),
- ``report.md`` / ``loss.png`` / ``probe.json`` under ``report/`` when present,
- a generated ``README.md`` model card: base model and its licence terms,
  versions of axpack, Axolotl, llama-cpp-python and the llama.cpp converter,
  the training configs, data stats, training and DPO reward metrics, and the
  quant table.

Never in offline mode (``AXPACK_OFFLINE=1`` or ``HF_HUB_OFFLINE``): that is a
clear error, not a silent skip. The token comes from ``HF_TOKEN`` or the saved
``hf auth login`` (``huggingface_hub.get_token``) and is never printed.
"""

from __future__ import annotations

import json
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import click
import yaml

from . import __version__, env
from .errors import AxpackError

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json", "axpack-config.yaml", "tokenizer.json",
                 "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "tokenizer.model")
GGUF_SIDE_FILES = ("manifest.json", "verify.json", "Modelfile", "llama-server.sh")
REPORT_FILES = ("report.md", "loss.png", "probe.json")
TRUE = ("1", "true", "yes", "on")


def _pkg(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def check_online() -> None:
    """Raise when offline mode is on: a push must never be skipped silently.

    Raises:
        AxpackError: ``AXPACK_OFFLINE=1`` or ``HF_HUB_OFFLINE`` is set.
    """
    if env.offline() or os.environ.get("HF_HUB_OFFLINE", "").lower() in TRUE:
        raise AxpackError("push: offline mode is on (AXPACK_OFFLINE=1 or HF_HUB_OFFLINE=1); "
                          "unset it to push to the Hugging Face Hub")


def get_token() -> str:
    """The Hub token from ``HF_TOKEN`` or the saved login (never printed).

    Raises:
        AxpackError: no token anywhere.
    """
    from huggingface_hub import get_token as hf_get_token

    token = hf_get_token()
    if not token:
        raise AxpackError("push: no Hugging Face token; run `hf auth login` or set HF_TOKEN")
    return token


def origin_base(run_dir: Path) -> str:
    """The model the run started from: follow ``axpack-merge.json`` (merged -> its
    base_model -> sft-merged -> its base_model ...) back to a non-merged model."""
    cur = run_dir / "merged"
    for _ in range(8):
        stamp = cur / "axpack-merge.json"
        if not stamp.is_file():
            break
        base = str(json.loads(stamp.read_text()).get("base_model") or "")
        if not base:
            break
        cur = Path(base)
        if not (cur / "axpack-merge.json").is_file():
            return base
    return str(cur)


def licence_terms(base: str) -> dict[str, str]:
    """Licence of the base model: front matter of its README.md (``license``,
    ``license_name``, ``license_link``), else a LICENSE file, else "unknown"."""
    path = Path(base)
    readme = path / "README.md"
    if readme.is_file():
        text = readme.read_text(errors="replace")
        if text.startswith("---"):
            try:
                front = yaml.safe_load(text.split("---", 2)[1]) or {}
            except yaml.YAMLError:
                front = {}
            if front.get("license"):
                return {k: str(front[k]) for k in ("license", "license_name", "license_link") if front.get(k)}
    for name in ("LICENSE", "LICENSE.txt", "LICENSE.md"):
        if (path / name).is_file():
            return {"license": "other", "license_note": f"see {name} of the base model"}
    return {"license": "unknown",
            "license_note": f"no licence found in {base}; check the base model's terms before publishing"}


def collect_files(export_dir: Path) -> list[tuple[str, Path]]:
    """``[(path in repo, local path)]`` for everything pushed (README.md excluded: generated).

    Raises:
        AxpackError: no GGUF manifest or no merged model.
    """
    run_dir = export_dir.parent
    if not (export_dir / "manifest.json").is_file():
        raise AxpackError(f"{export_dir}/manifest.json: missing; run axpack export first")
    merged = run_dir / "merged"
    if not (merged / "config.json").is_file():
        raise AxpackError(f"{merged}: no merged model; run axpack export first")
    files: list[tuple[str, Path]] = []
    for p in sorted(merged.iterdir()):
        if p.is_file() and not p.name.startswith(".") and p.name != "README.md":
            files.append((p.name, p))
    manifest = json.loads((export_dir / "manifest.json").read_text())
    for name in sorted(manifest.get("artifacts", {})):
        if not (export_dir / name).is_file():
            raise AxpackError(f"{export_dir / name}: in the manifest but missing; rerun axpack export")
        files.append((f"gguf/{name}", export_dir / name))
    files += [(f"gguf/{n}", export_dir / n) for n in GGUF_SIDE_FILES if (export_dir / n).is_file()]
    for stage in ("sft", "dpo"):
        d = run_dir / stage
        files += [(f"adapters/{stage}/{n}", d / n) for n in ADAPTER_FILES if (d / n).is_file()]
    files += [(f"report/{n}", run_dir / n) for n in REPORT_FILES if (run_dir / n).is_file()]
    return files


def _stage_metrics(run_dir: Path) -> list[str]:
    from .report import DPO_KEYS, load_stages, summarize_stage

    lines = []
    try:
        stages = load_stages(run_dir)
    except ValueError:
        return ["(trainer state unreadable)"]
    for stage, (_, state) in stages.items():
        s = summarize_stage(state)
        t, e = s["train"], s["eval"]
        parts = [f"{s['steps']} steps"]
        if t:
            parts.append(f"final loss {t['final']:.4f} (best {t['best']:.4f} at step {t['best_step']})")
        if e:
            parts.append(f"eval loss {e['final']:.4f} (best {e['best']:.4f} at step {e['best_step']})")
        if s["dpo"]:
            for k in DPO_KEYS:
                if s["dpo"][k]:
                    parts.append(f"{k} {s['dpo'][k]['final']:.4f}")
        lines.append(f"- **{stage.upper()}**: " + ", ".join(parts))
    return lines or ["(no trainer state found)"]


def model_card(export_dir: Path, repo: str) -> str:
    """The generated README.md (YAML front matter + Markdown)."""
    run_dir = export_dir.parent
    manifest = json.loads((export_dir / "manifest.json").read_text())
    base = origin_base(run_dir)
    lic = licence_terms(base)
    front: dict[str, Any] = {"license": lic["license"], "base_model": base,
                             "tags": ["axpack", "axolotl", "lora", "gguf"], "library_name": "transformers"}
    for k in ("license_name", "license_link"):
        if k in lic:
            front[k] = lic[k]
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
             f"# {repo.split('/')[-1]}", "",
             (f"Fine-tuned from `{base}` with axpack (Axolotl SFT then DPO, LoRA merged "
              "by axpack's streaming merge, GGUFs from the pinned llama.cpp converter)."), "",
             "## Base model and licence", "",
             f"- Base model: `{base}`",
             f"- Licence: {lic['license']}" + (f" ({lic['license_name']})" if "license_name" in lic else "")
             + (f", terms: {lic['license_link']}" if "license_link" in lic else "")
             + (f" — {lic['license_note']}" if "license_note" in lic else ""),
             "- This fine-tune is bound by the base model's licence terms.", "",
             "## Versions", "",
             f"- axpack {__version__}", f"- Axolotl {_pkg('axolotl')}", f"- transformers {_pkg('transformers')}",
             f"- PEFT {_pkg('peft')}, TRL {_pkg('trl')}",
             f"- llama-cpp-python {_pkg('llama-cpp-python')}; converter: {manifest.get('converter', 'unknown')}", "",
             "## Data", ""]
    summary = run_dir / "data" / "summary.json"
    if summary.is_file():
        try:
            data = json.loads(summary.read_text())
            lines += ["```json", json.dumps(data, indent=2, sort_keys=True)[:4000], "```"]
        except ValueError:
            lines.append("(data summary unreadable)")
    else:
        lines.append("(no data summary: runs/<run>/data/summary.json absent)")
    lines += ["", "## Training", ""] + _stage_metrics(run_dir) + [""]
    verify = export_dir / "verify.json"
    lines += ["## GGUF quants", ""]
    if verify.is_file():
        from .verify import table_markdown

        lines += table_markdown(json.loads(verify.read_text()))
    else:
        lines += ["| file | type | size (MiB) | sha256 |", "|---|---|---:|---|"]
        for name, e in sorted(manifest.get("artifacts", {}).items()):
            lines.append(f"| gguf/{name} | {e['type']} | {e['size'] / 2**20:.1f} | `{e['sha256'][:16]}…` |")
        lines += ["", "(not verified: run `axpack verify` before pushing to include agreement figures)"]
    lines += ["", "## Serving", "", "- Ollama: `ollama create NAME -f gguf/Modelfile` (in a download of `gguf/`)",
              "- llama.cpp: `gguf/llama-server.sh` (`llama-server --jinja`: the GGUF's own chat template)", "",
              "## Training configs", ""]
    for stage in ("sft", "dpo"):
        cfg = run_dir / stage / "axpack-config.yaml"
        if cfg.is_file():
            lines += [f"### {stage.upper()}", "", "```yaml", cfg.read_text().strip(), "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def push_export(export_dir: str | Path, repo: str, public: bool = False, api: Any = None,
                dry_run: bool = False) -> dict[str, Any]:
    """Create (or reuse) ``repo`` and upload the export in one commit.

    Args:
        export_dir: ``runs/<run>/gguf``.
        repo: ``ORG/NAME``.
        public: make a new repo public (default private; an existing repo keeps its visibility).
        api: a ``huggingface_hub.HfApi`` (tests pass a recorder); default one with the token.
        dry_run: list what would be uploaded; no network, no token needed.

    Returns:
        ``{"repo": str, "files": [(path_in_repo, size)], "commit": url or None}``.

    Raises:
        AxpackError: offline mode, no token, bad repo id, missing export, Hub errors (one line).
    """
    export_dir = Path(export_dir)
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise AxpackError(f"--repo {repo}: expected ORG/NAME, e.g. my-org/persona-smollm2", 2)
    files = collect_files(export_dir)
    card = model_card(export_dir, repo)
    listing = [(p, f.stat().st_size) for p, f in files] + [("README.md", len(card.encode()))]
    if dry_run:
        return {"repo": repo, "files": listing, "commit": None, "card": card}
    check_online()
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    if api is None:
        api = HfApi(token=get_token())
    ops = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(f)) for p, f in files]
    ops.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode()))
    try:
        api.create_repo(repo_id=repo, repo_type="model", private=not public, exist_ok=True)
        info = api.create_commit(repo_id=repo, repo_type="model", operations=ops,
                                 commit_message=f"axpack push: {export_dir.parent.name} (merged, adapters, GGUFs)")
    except HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", "?")
        raise AxpackError(f"push: the Hub refused {repo} (HTTP {status}); check the token's write access "
                          "and the repo name") from None
    return {"repo": repo, "files": listing, "commit": getattr(info, "commit_url", None) or str(info)}


@click.command("push")
@click.argument("export_dir", type=click.Path(file_okay=False))
@click.option("--repo", required=True, help="Hub model repo, ORG/NAME.")
@click.option("--public", is_flag=True, help="Create the repo public (default: private).")
@click.option("--dry-run", is_flag=True, help="List the files and print the model card; upload nothing.")
def command(export_dir, repo, public, dry_run):
    """Upload adapters, merged weights and GGUFs with a generated model card (private by default)."""
    res = push_export(export_dir, repo, public, dry_run=dry_run)
    total = sum(s for _, s in res["files"])
    for path, size in res["files"]:
        click.echo(f"  {size / 2**20:10.1f} MiB  {path}")
    if dry_run:
        click.echo(res["card"])
        click.echo(f"axpack: dry run: {len(res['files'])} files, {total / 2**20:.1f} MiB would go to {repo}")
    else:
        click.echo(f"axpack: pushed {len(res['files'])} files ({total / 2**20:.1f} MiB) to {repo}: {res['commit']}")
