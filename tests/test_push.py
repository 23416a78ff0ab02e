"""axpack push: refuses offline, never prints the token, one private commit with a model card.

The Hub client is replaced by a recorder (no network): the test checks the
calls huggingface_hub would receive — create_repo(private=True) and one
create_commit with every file — on a small synthetic run folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import pytest
from axpack.cli import main
from axpack.errors import AxpackError
from axpack.push import collect_files, model_card, push_export
from click.testing import CliRunner

SECRET = "hf_axpackTESTtokenNEVERprinted0123456789"


def _write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(data, bytes) else path.write_text)(data)
    return path


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A finished run's folders, small: base with a licence, merged, adapters, export, report."""
    base = tmp_path / "base"
    _write(base / "README.md", "---\nlicense: apache-2.0\nlanguage: en\n---\n# base\n")
    run = tmp_path / "runs" / "persona"
    _write(run / "sft-merged" / "axpack-merge.json", json.dumps({"base_model": str(base)}))
    _write(run / "merged" / "axpack-merge.json", json.dumps({"base_model": str(run / "sft-merged")}))
    _write(run / "merged" / "config.json", "{}")
    _write(run / "merged" / "model.safetensors", b"\0" * 64)
    _write(run / "merged" / "tokenizer.json", "{}")
    for stage in ("sft", "dpo"):
        _write(run / stage / "adapter_model.safetensors", b"\1" * 32)
        _write(run / stage / "adapter_config.json", "{}")
        _write(run / stage / "axpack-config.yaml", f"# {stage}\nlora_r: 16\n")
        _write(run / stage / "checkpoint-2" / "optimizer.pt", b"\2" * 16)  # never pushed
    hist = [{"step": 1, "loss": 0.69, "rewards/accuracies": 0.5, "rewards/margins": 0.01},
            {"step": 2, "loss": 0.61, "rewards/accuracies": 1.0, "rewards/margins": 0.2}]
    _write(run / "dpo" / "checkpoint-2" / "trainer_state.json", json.dumps({"global_step": 2, "log_history": hist}))
    _write(run / "data" / "summary.json", json.dumps({"sft": {"kept": 78}, "dpo": {"kept": 40}}))
    g = run / "gguf"
    _write(g / "persona-q4_k_m.gguf", b"GGUF" + b"\0" * 60)
    _write(g / "Modelfile", "FROM ./persona-q4_k_m.gguf\n")
    _write(g / "manifest.json", json.dumps({"converter": "llama-cpp-python==0.3.36 sha256:abc", "artifacts": {
        "persona-q4_k_m.gguf": {"type": "q4_k_m", "size": 64, "sha256": "f" * 64}}}))
    _write(run / "report.md", "# report\n")
    return run


class Recorder:
    """Stands in for huggingface_hub.HfApi; records the calls."""

    instances: ClassVar[list[Recorder]] = []

    def __init__(self, token=None, **kw):
        self.token = token
        self.calls: list[tuple[str, dict]] = []
        Recorder.instances.append(self)

    def create_repo(self, **kw):
        self.calls.append(("create_repo", kw))
        return f"https://hub.example/{kw['repo_id']}"

    def create_commit(self, **kw):
        self.calls.append(("create_commit", kw))

        class Info:
            commit_url = f"https://hub.example/{kw['repo_id']}/commit/1"
        return Info()


def test_offline_mode_is_a_clear_error(run_dir, monkeypatch):
    monkeypatch.setenv("AXPACK_OFFLINE", "1")
    res = CliRunner().invoke(main, ["push", str(run_dir / "gguf"), "--repo", "me/persona"])
    assert res.exit_code == 1 and "offline mode is on" in res.output
    monkeypatch.setenv("AXPACK_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AxpackError, match="offline mode is on"):
        push_export(run_dir / "gguf", "me/persona")


def test_files_and_card(run_dir):
    files = dict(collect_files(run_dir / "gguf"))
    assert {"model.safetensors", "config.json", "gguf/persona-q4_k_m.gguf", "gguf/manifest.json", "gguf/Modelfile",
            "adapters/sft/adapter_model.safetensors", "adapters/dpo/axpack-config.yaml",
            "report/report.md"} <= set(files)
    assert not any("checkpoint" in p or p.endswith(".pt") for p in files)
    assert "axpack-merge.json" in files  # provenance of the merge travels with the weights
    card = model_card(run_dir / "gguf", "me/persona")
    front = card.split("---")[1]
    assert "license: apache-2.0" in front and f"base_model: {run_dir.parent.parent / 'base'}" in front
    for text in ("axpack 0.1.0", "Axolotl 0.21.0", "llama-cpp-python", "sha256:abc",  # versions
                 '"kept": 78',  # data stats
                 "rewards/accuracies 1.0000", "rewards/margins 0.2000",  # DPO reward metrics
                 "| gguf/persona-q4_k_m.gguf | q4_k_m |",  # quant table (unverified export)
                 "```yaml\n# sft\nlora_r: 16"):  # config
        assert text in card, text


def test_push_records_one_private_commit_and_never_prints_the_token(run_dir, monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("AXPACK_OFFLINE", "0")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setattr(huggingface_hub, "HfApi", Recorder)
    Recorder.instances.clear()
    res = CliRunner().invoke(main, ["push", str(run_dir / "gguf"), "--repo", "me/persona"])
    assert res.exit_code == 0, res.output
    assert SECRET not in res.output
    api = Recorder.instances[-1]
    assert api.token == SECRET
    (name1, repo), (name2, commit) = api.calls
    assert name1 == "create_repo" and repo == {"repo_id": "me/persona", "repo_type": "model", "private": True,
                                               "exist_ok": True}
    assert name2 == "create_commit" and commit["repo_id"] == "me/persona"
    paths = [op.path_in_repo for op in commit["operations"]]
    assert len(paths) == len(set(paths)) and "README.md" in paths and "gguf/persona-q4_k_m.gguf" in paths
    readme = next(op for op in commit["operations"] if op.path_in_repo == "README.md")
    assert b"license: apache-2.0" in readme.path_or_fileobj
    assert "pushed" in res.output and "commit/1" in res.output
    # --public creates a public repo
    CliRunner().invoke(main, ["push", str(run_dir / "gguf"), "--repo", "me/persona", "--public"])
    assert Recorder.instances[-1].calls[0][1]["private"] is False


def test_no_token_and_bad_repo_are_one_line_errors(run_dir, monkeypatch, tmp_path):
    import huggingface_hub

    monkeypatch.setenv("AXPACK_OFFLINE", "0")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    res = CliRunner().invoke(main, ["push", str(run_dir / "gguf"), "--repo", "me/persona"])
    assert res.exit_code == 1 and "no Hugging Face token" in res.output
    res = CliRunner().invoke(main, ["push", str(run_dir / "gguf"), "--repo", "persona"])
    assert res.exit_code == 2 and "expected ORG/NAME" in res.output
    res = CliRunner().invoke(main, ["push", str(tmp_path / "nothing"), "--repo", "me/x"])
    assert res.exit_code == 1 and "run axpack export first" in res.output


# ---------------------------------------------------------------- secrets
HF = "hf_" + "Q" * 34
CONFIG_WITH_SECRETS = f"""\
base_model: HuggingFaceTB/SmolLM2-135M-Instruct
comet_api_key: comet-abc123secret
wandb_api_key: 0123456789abcdef0123456789abcdef01234567
hub_token: {HF}
datasets:
  - path: data/sft.jsonl
    type: chat_template
    hf_api_key: nested-secret-value
special_tokens:
  pad_token: <|im_end|>
eos_token: <|im_end|>
hf_use_auth_token: true
wandb_project: persona
lora_target_modules: [q_proj, v_proj]
"""


def test_secrets_are_redacted_everywhere_and_the_card_says_so(run_dir, monkeypatch):
    """Secret-looking config keys (any depth) and token shapes in any uploaded
    text file go out as <redacted>; tokenizer tokens and ordinary keys do not;
    the card lists what was redacted, never the values."""
    import huggingface_hub
    import yaml

    _write(run_dir / "sft" / "axpack-config.yaml", CONFIG_WITH_SECRETS)
    _write(run_dir / "report.md", f"# report\n\ntrained with HF_TOKEN={HF}\n")
    _write(run_dir / "gguf" / "llama-server.sh", f"#!/bin/sh\nexport HF_TOKEN={HF}\nllama-server -m x.gguf\n")
    monkeypatch.setenv("AXPACK_OFFLINE", "0")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setattr(huggingface_hub, "HfApi", Recorder)
    Recorder.instances.clear()
    res = CliRunner().invoke(main, ["push", str(run_dir / "gguf"), "--repo", "me/persona"])
    assert res.exit_code == 0, res.output
    (_, commit) = Recorder.instances[-1].calls[1]
    uploads = {}
    for op in commit["operations"]:
        src = op.path_or_fileobj
        uploads[op.path_in_repo] = src if isinstance(src, bytes) else Path(src).read_bytes()
    secrets = (b"comet-abc123secret", b"0123456789abcdef0123456789abcdef01234567", HF.encode(),
               b"nested-secret-value")
    leaks = [(p, s) for p, data in uploads.items() for s in secrets if s in data]
    assert not leaks, leaks
    assert not any(s.decode() in res.output for s in secrets)
    cfg = yaml.safe_load(uploads["adapters/sft/axpack-config.yaml"])
    assert cfg["comet_api_key"] == cfg["wandb_api_key"] == cfg["hub_token"] == "<redacted>"
    assert cfg["datasets"][0] == {"path": "data/sft.jsonl", "type": "chat_template", "hf_api_key": "<redacted>"}
    # not credentials: kept as they were
    assert cfg["special_tokens"] == {"pad_token": "<|im_end|>"} and cfg["eos_token"] == "<|im_end|>"
    assert cfg["hf_use_auth_token"] is True and cfg["wandb_project"] == "persona"
    assert cfg["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert b"llama-server -m x.gguf" in uploads["gguf/llama-server.sh"]
    # files with nothing to redact go up unchanged, from disk
    assert uploads["adapters/dpo/axpack-config.yaml"] == (run_dir / "dpo" / "axpack-config.yaml").read_bytes()
    assert uploads["gguf/manifest.json"] == (run_dir / "gguf" / "manifest.json").read_bytes()
    card = uploads["README.md"].decode()
    section = card.split("## Redacted secrets", 1)[1].split("\n## ", 1)[0]
    for line in (("- `adapters/sft/axpack-config.yaml`: `comet_api_key`, `wandb_api_key`, `hub_token`, "
                 "`datasets[0].hf_api_key`"),
                 "- `gguf/llama-server.sh`: `HF_TOKEN`",
                 "- `report/report.md`: `Hugging Face token`"):  # mid-sentence: found by its shape
        assert line in section, section
    assert "comet_api_key: <redacted>" in card and "eos_token: <|im_end|>" in card
    assert "redacted comet_api_key, wandb_api_key" in res.output  # stderr names keys, never values
    # the local files are untouched
    assert b"comet-abc123secret" in (run_dir / "sft" / "axpack-config.yaml").read_bytes()


def test_card_says_when_nothing_was_redacted(run_dir):
    card = model_card(run_dir / "gguf", "me/persona")
    assert "## Redacted secrets" in card and "Nothing was redacted" in card


@pytest.mark.parametrize(("text", "kept"), [
    ("key: value", False), ("apiKey: abc", False), ("db_password = hunter2", False),
    ("export GITHUB_TOKEN=ghp_" + "a" * 36, False), ("note: sk-" + "b" * 24 + " in a sentence", False),
    ("eos_token: </s>", True), ("max_new_tokens: 64", True), ("tokenizer_type: AutoTokenizer", True),
    ("hf_use_auth_token: true", True), ("template_thinking_key: reasoning_content", True),
    ("sha256: " + "f" * 64, True),
])
def test_redact_text_lines(text, kept):
    from axpack.push import redact_text

    out, found = redact_text("notes.md", text + "\n")
    assert (out == text + "\n") is kept and (not found) is kept, (out, found)
    if not kept:
        assert "<redacted>" in out
