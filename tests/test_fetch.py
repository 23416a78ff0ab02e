"""axpack fetch / make fetch: the Hugging Face client is called once per hub
base model with the right arguments. The client call is recorded
(monkeypatched ``huggingface_hub.snapshot_download``), never a real download.
"""

from __future__ import annotations

import glob
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml
from axpack import fetch as fetch_mod
from axpack.errors import AxpackError
from conftest import ROOT, run_axpack

CONFIGS = sorted(Path(p) for p in glob.glob(str(ROOT / "configs" / "**" / "*.yaml"), recursive=True))


def hub_bases() -> set[str]:
    """The hub ids among the configs' base_model (read here, independently of fetch.py)."""
    out = set()
    for p in CONFIGS:
        base = yaml.safe_load(p.read_text())["base_model"]
        if not base.startswith(("runs/", "models/")):
            out.add(base)
    return out


@pytest.fixture
def recorder(monkeypatch, tmp_path):
    import huggingface_hub

    calls: list[dict] = []

    def fake_snapshot_download(repo_id, **kw):
        calls.append({"repo_id": repo_id, **kw})
        snap = tmp_path / "hub" / repo_id.replace("/", "--")
        snap.mkdir(parents=True, exist_ok=True)
        return str(snap)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    return calls


def test_fetch_downloads_each_hub_base_once(recorder, tmp_path):
    assert len(hub_bases()) >= 4
    got = fetch_mod.fetch(CONFIGS, cache_dir=str(tmp_path / "cache"))
    assert sorted(c["repo_id"] for c in recorder) == sorted(hub_bases()), "a shared base is fetched once"
    assert set(got) == hub_bases() and all(Path(v).is_dir() for v in got.values())
    for call in recorder:
        assert call["cache_dir"] == str(tmp_path / "cache")
        assert call["revision"] is None
        assert {"original/*", "*.pth", "*.bin", "*.gguf"} <= set(call["ignore_patterns"])
        assert "*.safetensors" not in call["ignore_patterns"] and "*.json" not in call["ignore_patterns"]


def test_revision_and_tokenizer_repo_are_fetched(recorder, tmp_path):
    cfg = tmp_path / "sft-lora.yaml"
    cfg.write_text("base_model: Org/Model-7B\nrevision_of_model: abc123\ntokenizer_config: Org/Tokenizer\n")
    fetch_mod.fetch([cfg])
    assert [(c["repo_id"], c["revision"]) for c in recorder] == [("Org/Model-7B", "abc123"), ("Org/Tokenizer", None)]


def test_local_bases_have_nothing_to_fetch(recorder, capsys):
    local = [p for p in CONFIGS if yaml.safe_load(p.read_text())["base_model"].startswith(("runs/", "models/"))]
    assert local
    assert fetch_mod.fetch(local) == {}
    assert recorder == []
    assert capsys.readouterr().out.count("nothing to fetch") == len(local)


def test_gated_repo_is_one_line_with_what_to_do(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError

    def gated(repo_id, **kw):
        resp = httpx.Response(403, request=httpx.Request("GET", f"https://huggingface.co/api/models/{repo_id}"))
        raise GatedRepoError("403 Client Error: gated repo", response=resp)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", gated)
    with pytest.raises(AxpackError) as err:
        fetch_mod.fetch([ROOT / "configs/llama-3.2-3b/sft-qlora-script.yaml"])
    msg = err.value.message
    assert "\n" not in msg and "meta-llama/Llama-3.2-3B-Instruct" in msg and "licence" in msg and "login" in msg


def test_dry_run_cli_lists_without_downloading():
    proc = run_axpack("fetch", "--dry-run", *CONFIGS)
    listed = {ln.split("would download ", 1)[1] for ln in proc.stdout.splitlines() if "would download" in ln}
    assert listed == hub_bases()


def test_make_fetch_target():
    cfg = "configs/qwen2.5-7b/sft-qlora-v1.yaml"
    proc = subprocess.run(["make", "-n", "--no-print-directory", "-o", "setup", "fetch", f"CONFIG={cfg}"],
                          cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1].endswith(f"axpack fetch {cfg}")
    proc = subprocess.run(["make", "--no-print-directory", "-o", "setup", "fetch"], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    assert proc.returncode != 0 and "set CONFIG=" in proc.stderr
