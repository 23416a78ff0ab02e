"""Security (issue #7, part 4): no token in logs or outputs, no remote code
without an explicit flag, safetensors only, no shell strings.

A tiny random Llama (1 layer, hidden 16, SmolLM2's tokenizer) is built in
tmp once, in two copies: safetensors, and ``pytorch_model.bin`` only. Its
config and tokenizer config carry an ``auto_map`` to ``evil.py``, which
writes a marker file when imported: any code path that runs model-shipped
code leaves the marker.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import ClassVar

import pytest
import yaml
from axpack import train
from axpack.errors import AxpackError
from conftest import ROOT, run_axpack

PACKAGE = ROOT / "tools" / "axpack"
TOKEN = "hf_PLANTEDtok3nDoNotLeak0123456789abcdef"
SECRET_ENV = {"HF_TOKEN": TOKEN, "HUGGING_FACE_HUB_TOKEN": TOKEN, "WANDB_API_KEY": "wandb" + TOKEN}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")


# --------------------------------------------------------------------------- static: subprocess use

def _package_trees():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _call_name(node: ast.Call) -> str:
    f = node.func
    parts = []
    while isinstance(f, ast.Attribute):
        parts.append(f.attr)
        f = f.value
    if isinstance(f, ast.Name):
        parts.append(f.id)
    return ".".join(reversed(parts))


SPAWNERS = {"run", "Popen", "call", "check_call", "check_output"}
SHELL_CALLS = {"os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput",
               "asyncio.create_subprocess_shell", "pty.spawn"}


def test_subprocesses_get_argument_lists_never_shell_strings():
    """Every subprocess call in the package: no shell=True, no os.system /
    os.popen / getoutput, and the command is a list (or a name bound to one),
    never a string literal, f-string, concatenation or %-format."""
    found = 0
    bad = []
    for path, tree in _package_trees():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = _call_name(node)
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if name in SHELL_CALLS:
                bad.append(f"{where}: {name}")
            for kw in node.keywords:
                if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    bad.append(f"{where}: shell={ast.unparse(kw.value)}")
            if name.split(".")[-1] in SPAWNERS and name.split(".")[0] in ("subprocess", "sp"):
                found += 1
                cmd = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "args"), None)
                if isinstance(cmd, (ast.Constant, ast.JoinedStr, ast.BinOp)) or (
                        isinstance(cmd, ast.Call) and _call_name(cmd).endswith(("format", "join"))):
                    bad.append(f"{where}: command is {ast.unparse(cmd)[:60]}")
    assert found >= 3, "the scan found almost no subprocess calls: it is looking in the wrong place"
    assert not bad, "\n".join(bad)


def test_no_pickle_loading_in_the_package():
    """torch.load / pickle can execute code from a weights file: the package
    reads weights only through safetensors (and GGUF)."""
    bad = []
    for path, tree in _package_trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _call_name(node) in (
                    "torch.load", "pickle.load", "pickle.loads", "dill.load", "joblib.load", "numpy.load", "np.load"):
                kws = {k.arg: k.value for k in node.keywords}
                safe_npy = _call_name(node) in ("numpy.load", "np.load") and isinstance(
                    kws.get("allow_pickle"), ast.Constant) and kws["allow_pickle"].value is False
                if not safe_npy:  # np.load(..., allow_pickle=False) reads raw arrays and refuses object arrays
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {_call_name(node)}")
    assert not bad, "\n".join(bad)


def _model_loads() -> dict[str, list[str]]:
    """``AutoModel*.from_pretrained`` calls per file; each must force safetensors
    (``use_safetensors=True``; a ``gguf_file=`` load reads GGUF, not pickle)."""
    out: dict[str, list[str]] = {}
    for path, tree in _package_trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _call_name(node).endswith("from_pretrained"):
                owner = _call_name(node).split(".")[0]
                if "Model" not in owner:
                    continue  # tokenizers and configs hold no weights
                kws = {k.arg: k.value for k in node.keywords}
                ok = "gguf_file" in kws or (
                    isinstance(kws.get("use_safetensors"), ast.Constant) and kws["use_safetensors"].value is True)
                if not ok:
                    out.setdefault(path.name, []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return out


@pytest.mark.parametrize("module", sorted({p.name for p in PACKAGE.glob("*.py")}))
def test_model_weights_load_only_from_safetensors(module):
    assert module not in _model_loads(), _model_loads().get(module)


# --------------------------------------------------------------------------- a tiny model with remote code


EVIL = '''
from pathlib import Path
Path({marker!r}).write_text("model-shipped code ran")
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
class EvilConfig(LlamaConfig):
    pass
class EvilModel(LlamaForCausalLM):
    config_class = EvilConfig
class EvilTokenizer(PreTrainedTokenizerFast):
    pass
'''


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, demo_model) -> dict[str, Path]:
    """{"st": safetensors folder, "bin": pytorch_model.bin-only folder,
    "adapter": a LoRA adapter (safetensors) for it, "marker": evil.py's marker}."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    d = tmp_path_factory.mktemp("tiny")
    marker = d / "EVIL-CODE-RAN"
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model = LlamaForCausalLM(cfg)
    folders = {"st": d / "tiny-st", "bin": d / "tiny-bin"}
    model.save_pretrained(folders["st"])
    folders["bin"].mkdir()
    shutil.copy(folders["st"] / "config.json", folders["bin"] / "config.json")
    torch.save(model.state_dict(), folders["bin"] / "pytorch_model.bin")
    for folder in folders.values():
        for name in TOKENIZER_FILES:
            if (demo_model / name).is_file():
                shutil.copy(demo_model / name, folder / name)
        (folder / "evil.py").write_text(EVIL.format(marker=str(marker)))
        for name, key, value in (("config.json", "auto_map", {"AutoConfig": "evil.EvilConfig",
                                                              "AutoModelForCausalLM": "evil.EvilModel"}),
                                 ("tokenizer_config.json", "auto_map",
                                  {"AutoTokenizer": ["evil.EvilTokenizer", None]})):
            data = json.loads((folder / name).read_text())
            data[key] = value
            (folder / name).write_text(json.dumps(data, indent=2))
    adapter = d / "adapter"
    peft_model = get_peft_model(
        LlamaForCausalLM(cfg),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(adapter)
    assert (adapter / "adapter_model.safetensors").is_file()
    assert not marker.exists()
    return {**folders, "adapter": adapter, "marker": marker, "dir": d}


def _merge_config(tmp: Path, base: Path, adapter: Path) -> Path:
    """A config naming ``base`` and an output_dir holding ``adapter`` (as train leaves it)."""
    out = tmp / "run" / "sft"
    shutil.copytree(adapter, out)
    cfg = {"base_model": str(base), "adapter": "lora", "lora_r": 4, "lora_alpha": 8,
           "datasets": [{"path": str(ROOT / "tests/data/prep/messages.jsonl"), "type": "chat_template"}],
           "output_dir": str(out)}
    path = tmp / "sft-lora.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    (out / "axpack-config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (out / "axpack-done.json").write_text('{"fingerprint": "test"}\n')  # as a finished axpack train leaves it
    for name in TOKENIZER_FILES:
        if (base / name).is_file():
            shutil.copy(base / name, out / name)
    return path


def _tree_text(folder: Path) -> str:
    """Every file under ``folder``, decoded leniently (binary included: a token
    hides as plain bytes in safetensors metadata or GGUF key-values too)."""
    return "".join(p.read_bytes().decode("latin-1") for p in sorted(folder.rglob("*")) if p.is_file())


def _env_with_secrets() -> dict[str, str]:
    env = dict(os.environ)
    env.update(SECRET_ENV)
    return env


def test_merge_leaks_no_token_and_runs_no_model_code(tiny, tmp_path):
    """A real merge (tiny model, streaming merge) with a token in the
    environment: the token is in neither the log nor any output file, and the
    model's evil.py is never imported."""
    config = _merge_config(tmp_path, tiny["st"], tiny["adapter"])
    proc = run_axpack("merge", config, env=_env_with_secrets())
    merged = tmp_path / "run" / "sft-merged"
    assert (merged / "model.safetensors").is_file() and (merged / "axpack-merge.json").is_file()
    for text in (proc.stdout, proc.stderr, _tree_text(tmp_path / "run")):
        assert "PLANTED" not in text
    assert not tiny["marker"].exists()


def test_merge_refuses_pickled_weights(tiny, tmp_path):
    """A base with only pytorch_model.bin, and an adapter with only
    adapter_model.bin: one line, exit 1, nothing written."""
    config = _merge_config(tmp_path / "a", tiny["bin"], tiny["adapter"])
    proc = run_axpack("merge", config, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert "safetensors" in line and "pytorch_model.bin" in line
    assert not (tmp_path / "a" / "run" / "sft-merged").exists()

    config = _merge_config(tmp_path / "b", tiny["st"], tiny["adapter"])
    adapter_dir = tmp_path / "b" / "run" / "sft"
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(adapter_dir / "adapter_model.safetensors"), adapter_dir / "adapter_model.bin")
    (adapter_dir / "adapter_model.safetensors").unlink()
    proc = run_axpack("merge", config, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert "adapter_model.safetensors" in line
    assert not (tmp_path / "b" / "run" / "sft-merged").exists()
    assert not tiny["marker"].exists()


def test_gguf_converts_safetensors_without_leaking_a_token(tiny, tmp_path):
    """Control for the refusal below: the safetensors twin converts and
    quantizes (token planted in the environment: not in logs or GGUFs)."""
    ok = run_axpack("gguf", tiny["st"], "--out", tmp_path / "st", "--name", "tiny", "--quants", "q8_0",
                    check=False, env=_env_with_secrets())
    if ok.returncode != 0 and "convert_hf_to_gguf.py" in ok.stderr and "not found" in ok.stderr:
        pytest.skip("pinned llama.cpp converter missing: run make setup")
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert (tmp_path / "st" / "tiny-q8_0.gguf").is_file()
    assert "PLANTED" not in ok.stdout + ok.stderr + _tree_text(tmp_path / "st")
    assert not tiny["marker"].exists()


def test_gguf_refuses_pickled_weights(tiny, tmp_path):
    """The pinned converter would torch.load a pytorch_model.bin: axpack gguf
    must refuse such a folder with one line, before writing a GGUF."""
    proc = run_axpack("gguf", tiny["bin"], "--out", tmp_path / "bin", "--name", "tiny", "--quants", "q8_0",
                      check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "safetensors" in proc.stderr.strip().splitlines()[-1]
    assert not list(tmp_path.rglob("tiny-*.gguf"))
    (line,) = proc.stderr.strip().splitlines()  # one line, naming the pickle and the fix
    assert "pytorch_model.bin" in line and "safe_serialization=True" in line


def test_probe_refuses_pickled_weights(tiny):
    from axpack.probe import ask_hf

    with pytest.raises(AxpackError, match="safetensors"):
        ask_hf(tiny["bin"], ["Say hi."], max_new_tokens=2)


def test_probe_runs_no_model_code(tiny):
    """probe loads a model whose config maps to evil.py: transformers' own
    Llama classes are used, the shipped code is not imported."""
    from axpack.probe import ask_hf

    (answer,) = ask_hf(tiny["st"], ["Say hi."], max_new_tokens=2)
    assert isinstance(answer, str)
    assert not tiny["marker"].exists()


# --------------------------------------------------------------------------- trust_remote_code


def _train_config(tmp: Path, base: Path, extra: dict) -> Path:
    cfg = yaml.safe_load((ROOT / "configs/smollm2-135m/sft-lora.yaml").read_text())
    cfg.update({"base_model": str(base), "output_dir": str(tmp / "sft"),
                "dataset_prepared_path": str(tmp / "prepared")}, **extra)
    cfg["datasets"][0]["path"] = str(ROOT / "tests/data/prep/messages.jsonl")
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "sft-lora.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_train_refuses_trust_remote_code_without_the_flag(tiny, tmp_path, monkeypatch):
    config = _train_config(tmp_path, tiny["st"], {"trust_remote_code": True})
    proc = run_axpack("train", config, "--stage", "sft", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "trust_remote_code" in line and "--trust-remote-code" in line
    assert not (tmp_path / "sft" / "axpack-config.yaml").exists()
    # --set cannot sneak it in either
    config2 = _train_config(tmp_path / "b", tiny["st"], {})
    proc = run_axpack("train", config2, "--stage", "sft", "--set", "trust_remote_code=true", check=False)
    assert proc.returncode == 1 and "trust_remote_code" in proc.stderr
    # with the explicit flag it reaches Axolotl unchanged
    seen = []
    monkeypatch.setattr(train.subprocess, "run", lambda cmd, **kw: seen.append(cmd) or
                        subprocess.CompletedProcess(cmd, 0))
    train.run_training(config, stage="sft", trust_remote_code=True)
    assert yaml.safe_load(Path(seen[0][-1]).read_text())["trust_remote_code"] is True
    assert not tiny["marker"].exists()


def test_stats_runs_no_model_code_without_a_flag(tiny, tmp_path, monkeypatch):
    import transformers.dynamic_module_utils as dmu
    from axpack.stats import load_tokenizer

    monkeypatch.setattr(dmu, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    cfg = {"base_model": str(tiny["st"]), "trust_remote_code": True}
    try:
        load_tokenizer(cfg, tmp_path / "sft-lora.yaml")
        refused = None
    except AxpackError as err:
        refused = err
    ran = tiny["marker"].exists()
    tiny["marker"].unlink(missing_ok=True)  # keep the other tests' check meaningful
    assert not ran, "evil.py was imported"
    assert refused is not None and "trust_remote_code" in refused.message


# --------------------------------------------------------------------------- push


class RecordingHfApi:
    """Stands in for ``huggingface_hub.HfApi``: records the token it was
    given and every byte of every upload; talks to no network."""

    instances: ClassVar[list[RecordingHfApi]] = []

    def __init__(self, token=None, **kw):
        self.token = token
        self.uploads: dict[str, bytes] = {}
        RecordingHfApi.instances.append(self)

    def create_repo(self, **kw):
        return f"https://huggingface.co/{kw.get('repo_id')}"

    def create_commit(self, repo_id, operations, **kw):
        for op in operations:
            src = op.path_or_fileobj
            data = src if isinstance(src, bytes) else Path(src).read_bytes() if isinstance(src, str) else src.read()
            self.uploads[op.path_in_repo] = data
        return f"https://huggingface.co/{repo_id}/commit/0"


def _fake_export(tmp: Path, tiny: dict, sft_extra: dict | None = None) -> Path:
    """A run folder as export leaves it: merged/, sft/ (adapter + resolved config), gguf/manifest.json."""
    run = tmp / "run"
    (run / "merged").mkdir(parents=True)
    for p in tiny["st"].iterdir():
        if p.name != "evil.py":
            shutil.copy(p, run / "merged" / p.name)
    shutil.copytree(tiny["adapter"], run / "sft")
    cfg = {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "adapter": "lora", "output_dir": str(run / "sft"),
           **(sft_extra or {})}
    (run / "sft" / "axpack-config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (run / "gguf").mkdir()
    (run / "gguf" / "manifest.json").write_text(json.dumps({"artifacts": {}, "converter": "test"}))
    return run / "gguf"


def _push(export: Path, monkeypatch, *extra: str):
    """``axpack push`` in-process (so the recording client can stand in), online, token planted."""
    import huggingface_hub
    from axpack.cli import main
    from click.testing import CliRunner

    monkeypatch.setenv("AXPACK_OFFLINE", "0")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for k, v in SECRET_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingHfApi)
    RecordingHfApi.instances.clear()
    return CliRunner().invoke(main, ["push", str(export), "--repo", "me/tiny", *extra], catch_exceptions=False)


def test_push_leaks_no_token(tiny, tmp_path, monkeypatch):
    """The planted HF_TOKEN reaches the Hub client and nothing else: not the
    printed output, not the model card, not any uploaded byte."""
    export = _fake_export(tmp_path, tiny)
    dry = _push(export, monkeypatch, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "README.md" in dry.output and "PLANTED" not in dry.output
    assert not RecordingHfApi.instances, "a dry run must not create a Hub client"
    res = _push(export, monkeypatch)
    assert res.exit_code == 0, res.output
    (api,) = RecordingHfApi.instances
    assert api.token == TOKEN, "the token must come from HF_TOKEN"
    assert "README.md" in api.uploads and "model.safetensors" in api.uploads
    assert "PLANTED" not in res.output
    leaks = [p for p, data in api.uploads.items() if b"PLANTED" in data]
    assert not leaks, leaks


def test_push_publishes_no_secret_from_the_config(tiny, tmp_path, monkeypatch):
    export = _fake_export(tmp_path, tiny, {"comet_api_key": "comet-" + TOKEN})
    res = _push(export, monkeypatch)
    assert res.exit_code == 0, res.output
    (api,) = RecordingHfApi.instances
    leaks = [p for p, data in api.uploads.items() if b"PLANTED" in data]
    assert not leaks, leaks
    # the card says so, and the uploaded config still parses with the key present
    assert "## Redacted secrets" in api.uploads["README.md"].decode()
    assert yaml.safe_load(api.uploads["adapters/sft/axpack-config.yaml"])["comet_api_key"] == "<redacted>"
