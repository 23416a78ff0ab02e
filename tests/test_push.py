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
