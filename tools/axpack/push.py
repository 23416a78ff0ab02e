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
import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import click
import yaml

from . import __version__, env
from .errors import AxpackError
from .runs import ADAPTER_WEIGHTS, MANIFEST_FILE, RESOLVED_FILE, VERIFY_FILE
from .trainer_state import DPO_KEYS, load_stages, summarize_stage

ADAPTER_FILES = (ADAPTER_WEIGHTS, "adapter_config.json", RESOLVED_FILE, "tokenizer.json",
                 "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "tokenizer.model")
GGUF_SIDE_FILES = (MANIFEST_FILE, VERIFY_FILE, "Modelfile", "llama-server.sh")
REPORT_FILES = ("report.md", "loss.png", "probe.json")
TRUE = ("1", "true", "yes", "on")

# --------------------------------------------------------------------------- secrets
REDACTED = "<redacted>"
# a key is secret-looking when one of its words (split at _ - . and camelCase) is one of these
SECRET_WORDS = frozenset({"key", "apikey", "token", "secret", "secrets", "password", "passwd", "pwd",
                          "credential", "credentials"})
# ... except these, which name tokenizer tokens or dataset fields, not credentials
NOT_SECRET_KEYS = frozenset({"pad_token", "bos_token", "eos_token", "unk_token", "sep_token", "cls_token",
                             "mask_token", "mask_token_str", "eot_token", "template_thinking_key", "content"})
NOT_SECRET_PARENTS = frozenset({"special_tokens", "added_tokens_overrides", "added_tokens_decoder",
                                "added_tokens"})
# known credential shapes, matched anywhere in uploaded text
TOKEN_SHAPES: tuple[tuple[str, re.Pattern[str]], ...] = tuple((name, re.compile(rx)) for name, rx in (
    ("Hugging Face token", r"\bhf_[A-Za-z0-9]{30,}"),
    ("Hugging Face org token", r"\bapi_org_[A-Za-z0-9]{30,}"),
    ("OpenAI-style key", r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}"),
    ("GitHub token", r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})"),
    ("AWS access key id", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    ("Slack token", r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    ("Google API key", r"\bAIza[0-9A-Za-z_-]{35}"),
))
TEXT_SUFFIXES = (".json", ".yaml", ".yml", ".md", ".txt", ".jinja", ".sh", ".py", ".cfg", ".toml", ".csv")
TEXT_NAMES = ("Modelfile",)
MAX_SCAN_BYTES = 256 << 20  # text files up to this size are scrubbed (a tokenizer.json is ~10 MB)
_LINE_KEY = re.compile(r"""^(?P<lead>\s*(?:-\s+)?(?:export\s+)?["']?)"""
                       r"""(?P<key>[A-Za-z_][\w.\-]*)(?P<sep>["']?\s*[:=]\s*)"""
                       r"""(?P<value>\S.*?)(?P<tail>\s*,?)$""")


def _words(key: str) -> list[str]:
    key = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key)
    return [w for w in re.split(r"[^A-Za-z0-9]+", key.lower()) if w]


def secret_key(key: str, parent: str | None = None) -> bool:
    """True when a config key names a credential (``comet_api_key``, ``hub_token``,
    ``wandbApiKey``, ``password``) rather than a tokenizer token (``eos_token``)."""
    if not isinstance(key, str) or key.lower() in NOT_SECRET_KEYS or (parent or "").lower() in NOT_SECRET_PARENTS:
        return False
    words = _words(key)
    return any(w in SECRET_WORDS for w in words) or "".join(words[-2:]) in ("apikey", "accesskey")


def _scrub_shapes(text: str, found: list[str]) -> str:
    for label, rx in TOKEN_SHAPES:
        text, n = rx.subn(REDACTED, text)
        if n:
            found.append(f"{label} x{n}" if n > 1 else label)
    return text


def redact_tree(obj: Any, found: list[str], path: str = "", parent: str | None = None) -> Any:
    """A copy of a parsed YAML/JSON value with secret-looking keys' string values
    and token-shaped strings replaced by :data:`REDACTED`; ``found`` collects
    what was redacted (key paths and token kinds, never the values)."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            where = f"{path}.{k}" if path else str(k)
            if secret_key(k, parent) and isinstance(v, str) and v and v != REDACTED:
                out[k] = REDACTED
                found.append(where)
            else:
                out[k] = redact_tree(v, found, where, str(k))
        return out
    if isinstance(obj, list):
        return [redact_tree(v, found, f"{path}[{i}]", parent) for i, v in enumerate(obj)]
    if isinstance(obj, str):
        return _scrub_shapes(obj, found)
    return obj


def _redact_lines(text: str, found: list[str]) -> str:
    """``key: value`` / ``KEY=value`` lines of free text (Markdown, shell, unparsable YAML)."""
    lines = []
    for line in text.split("\n"):
        m = _LINE_KEY.match(line)
        if m and secret_key(m["key"]) and m["value"].strip("\"'") not in ("", REDACTED) \
                and m["value"].lower() not in ("true", "false", "null", "none", "~", "{", "["):
            line = f"{m['lead']}{m['key']}{m['sep']}{REDACTED}{m['tail']}"
            found.append(m["key"])
        lines.append(line)
    return "\n".join(lines)


def redact_text(name: str, text: str) -> tuple[str, list[str]]:
    """``text`` of a file called ``name`` with credentials replaced by :data:`REDACTED`.

    YAML and JSON are parsed and re-serialised only when something is redacted
    (otherwise returned unchanged, byte for byte); other text is redacted line
    by line. Token-shaped strings are replaced everywhere.

    Returns:
        (text, what was redacted: key paths and token kinds, never values).
    """
    found: list[str] = []
    suffix = Path(name).suffix.lower()
    if suffix in (".yaml", ".yml", ".json"):
        try:
            data = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError):
            data = None
        if isinstance(data, (dict, list)):
            clean = redact_tree(data, found)
            if not found:
                return text, found
            if suffix == ".json":
                out = json.dumps(clean, indent=2, ensure_ascii=False) + "\n"
            else:
                out = yaml.safe_dump(clean, sort_keys=False, allow_unicode=True)
            return _scrub_shapes(out, found), found  # comments of the original are gone; shapes there too
    return _scrub_shapes(_redact_lines(text, found), found), found


def redact_file(path_in_repo: str, local: Path) -> tuple[bytes | None, list[str]]:
    """(redacted bytes, what) for an uploaded text file; (None, []) when it is
    binary, too big to scan, or has nothing to redact (it is uploaded as is)."""
    name = Path(path_in_repo).name
    if not (name.lower().endswith(TEXT_SUFFIXES) or name in TEXT_NAMES) or local.stat().st_size > MAX_SCAN_BYTES:
        return None, []
    raw = local.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, []
    clean, found = redact_text(name, text)
    return (clean.encode("utf-8"), found) if found else (None, [])


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
    if not (export_dir / MANIFEST_FILE).is_file():
        raise AxpackError(f"{export_dir}/{MANIFEST_FILE}: missing; run axpack export first")
    merged = run_dir / "merged"
    if not (merged / "config.json").is_file():
        raise AxpackError(f"{merged}: no merged model; run axpack export first")
    files: list[tuple[str, Path]] = []
    for p in sorted(merged.iterdir()):
        if p.is_file() and not p.name.startswith(".") and p.name != "README.md":
            files.append((p.name, p))
    manifest = json.loads((export_dir / MANIFEST_FILE).read_text())
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


def upload_plan(export_dir: Path) -> list[tuple[str, Path, bytes | None, list[str]]]:
    """``[(path in repo, local path, redacted bytes or None, what was redacted)]``
    for every file of :func:`collect_files`; None: uploaded from disk unchanged."""
    return [(p, f, *redact_file(p, f)) for p, f in collect_files(export_dir)]


def _secrets_section(redactions: dict[str, list[str]]) -> list[str]:
    rule = ("secret-looking keys: a name with key, token, secret or password; "
            "known token shapes: hf_…, sk-…, ghp_…, AKIA…")
    lines = ["## Redacted secrets", ""]
    if not redactions:
        none = f"Nothing was redacted: no value in the uploaded files matched ({rule}); it would read `{REDACTED}`."
        return [*lines, none, ""]
    lines += [f"Before upload, axpack push replaced these values with `{REDACTED}` ({rule}):", ""]
    for path, what in sorted(redactions.items()):
        lines.append(f"- `{path}`: " + ", ".join(f"`{w}`" for w in dict.fromkeys(what)))
    rerun = ("These files therefore differ from what Axolotl ran: to rerun a config, give the secrets back "
             "through environment variables (e.g. COMET_API_KEY, WANDB_API_KEY, HF_TOKEN).")
    return [*lines, "", rerun, ""]


def model_card(export_dir: Path, repo: str, redactions: dict[str, list[str]] | None = None) -> str:
    """The generated README.md (YAML front matter + Markdown).

    Training configs are shown redacted (:func:`redact_text`); ``redactions``
    (path in repo -> what was redacted, from :func:`upload_plan`) is listed in
    the card's "Redacted secrets" section, and the card itself is scrubbed of
    token shapes.
    """
    redactions = {p: list(w) for p, w in (redactions or {}).items() if w}
    run_dir = export_dir.parent
    manifest = json.loads((export_dir / MANIFEST_FILE).read_text())
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
    verify = export_dir / VERIFY_FILE
    lines += ["## GGUF quants", ""]
    if verify.is_file():
        from .verify_tables import table_markdown

        lines += table_markdown(json.loads(verify.read_text()))
    else:
        lines += ["| file | type | size (MiB) | sha256 |", "|---|---|---:|---|"]
        for name, e in sorted(manifest.get("artifacts", {}).items()):
            lines.append(f"| gguf/{name} | {e['type']} | {e['size'] / 2**20:.1f} | `{e['sha256'][:16]}…` |")
        lines += ["", "(not verified: run `axpack verify` before pushing to include agreement figures)"]
    lines += ["", "## Serving", "", "- Ollama: `ollama create NAME -f gguf/Modelfile` (in a download of `gguf/`)",
              "- llama.cpp: `gguf/llama-server.sh` (`llama-server --jinja`: the GGUF's own chat template)", "",
              ]
    configs = []
    for stage in ("sft", "dpo"):
        cfg = run_dir / stage / RESOLVED_FILE
        if cfg.is_file():
            text, found = redact_text(cfg.name, cfg.read_text())
            if found:
                redactions.setdefault(f"adapters/{stage}/axpack-config.yaml", found)
            configs += [f"### {stage.upper()}", "", "```yaml", text.strip(), "```", ""]
    lines += _secrets_section(redactions) + ["## Training configs", ""] + configs
    card, _ = redact_text("README.md", "\n".join(lines).rstrip() + "\n")
    return card


def push_export(export_dir: str | Path, repo: str, public: bool = False, api: Any = None,
                dry_run: bool = False) -> dict[str, Any]:
    """Create (or reuse) ``repo`` and upload the export in one commit.

    Args:
        export_dir: ``runs/<run>/gguf``.
        repo: ``ORG/NAME``.
        public: make a new repo public (default private; an existing repo keeps its visibility).
        api: a ``huggingface_hub.HfApi`` (tests pass a recorder); default one with the token.
        dry_run: list what would be uploaded; no network, no token needed.

    Every uploaded text file and the card go through :func:`redact_text`
    (secret-looking config keys and token shapes -> ``<redacted>``).

    Returns:
        ``{"repo": str, "files": [(path_in_repo, size)], "commit": url or None,
        "redacted": {path_in_repo: [what]}}``.

    Raises:
        AxpackError: offline mode, no token, bad repo id, missing export, Hub errors (one line).
    """
    export_dir = Path(export_dir)
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise AxpackError(f"--repo {repo}: expected ORG/NAME, e.g. my-org/persona-smollm2", 2)
    plan = upload_plan(export_dir)
    redacted = {p: what for p, _, _, what in plan if what}
    card = model_card(export_dir, repo, redacted)
    listing = [(p, len(data) if data is not None else f.stat().st_size) for p, f, data, _ in plan]
    listing.append(("README.md", len(card.encode())))
    if dry_run:
        return {"repo": repo, "files": listing, "commit": None, "card": card, "redacted": redacted}
    check_online()
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    if api is None:
        api = HfApi(token=get_token())
    ops = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=data if data is not None else str(f))
           for p, f, data, _ in plan]
    ops.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode()))
    try:
        api.create_repo(repo_id=repo, repo_type="model", private=not public, exist_ok=True)
        info = api.create_commit(repo_id=repo, repo_type="model", operations=ops,
                                 commit_message=f"axpack push: {export_dir.parent.name} (merged, adapters, GGUFs)")
    except HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", "?")
        raise AxpackError(f"push: the Hub refused {repo} (HTTP {status}); check the token's write access "
                          "and the repo name") from None
    return {"repo": repo, "files": listing, "commit": getattr(info, "commit_url", None) or str(info),
            "redacted": redacted}


@click.command("push")
@click.argument("export_dir", type=click.Path(file_okay=False))
@click.option("--repo", required=True, help="Hub model repo, ORG/NAME.")
@click.option("--public", is_flag=True, help="Create the repo public (default: private).")
@click.option("--dry-run", is_flag=True, help="List the files and print the model card; upload nothing.")
def command(export_dir, repo, public, dry_run):
    """Upload adapters, merged weights and GGUFs with a generated model card (private by default)."""
    res = push_export(export_dir, repo, public, dry_run=dry_run)
    for path, what in sorted(res["redacted"].items()):
        click.echo(f"axpack: redacted {', '.join(dict.fromkeys(what))} in {path} (values never printed)", err=True)
    total = sum(s for _, s in res["files"])
    for path, size in res["files"]:
        click.echo(f"  {size / 2**20:10.1f} MiB  {path}")
    if dry_run:
        click.echo(res["card"])
        click.echo(f"axpack: dry run: {len(res['files'])} files, {total / 2**20:.1f} MiB would go to {repo}")
    else:
        click.echo(f"axpack: pushed {len(res['files'])} files ({total / 2**20:.1f} MiB) to {repo}: {res['commit']}")
