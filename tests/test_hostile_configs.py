"""Hostile configs (issue #7, part 2): each must give one line naming the key
(``file:line: key: ...``) and exit 1, from ``axpack validate`` and, before any
Axolotl process starts, from ``axpack train`` / ``make sft|dpo``.

The configs are the shipped SmolLM2 SFT config with one thing broken each,
written into tmp_path. ``axpack validate`` imports Axolotl (~40 s on the
shared CI cores), so it runs once on all of them plus an unbroken control.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from axpack import train
from axpack.errors import AxpackError
from conftest import ROOT, run_axpack

SFT = ROOT / "configs/smollm2-135m/sft-lora.yaml"
DPO = ROOT / "configs/smollm2-135m/dpo-lora.yaml"
DATA = "tests/data/prep/messages.jsonl"  # a real {"messages": ...} file in the repo
RUN = "runs/hostile-cfg"  # named only; validate and refused trains create nothing there


def base_text(absolute: Path | None = None) -> str:
    """The shipped SFT config with its data and outputs moved: repo-relative
    (as validate wants configs) or, for train tests, under ``absolute``."""
    cfg = yaml.safe_load(SFT.read_text())
    if absolute is None:
        cfg["datasets"][0]["path"] = DATA
        cfg["dataset_prepared_path"] = f"{RUN}/prepared/sft"
        cfg["output_dir"] = f"{RUN}/sft"
    else:
        cfg["datasets"][0]["path"] = str(ROOT / DATA)
        cfg["dataset_prepared_path"] = str(absolute / "prepared")
        cfg["output_dir"] = str(absolute / "sft")
        cfg["base_model"] = str(ROOT / cfg["base_model"])
    return yaml.safe_dump(cfg, sort_keys=False)


def _after(text: str, key: str, new: str) -> str:
    """Insert line(s) ``new`` after the top-level line of ``key``."""
    lines = text.splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith(f"{key}:"))
    return "\n".join(lines[: i + 1] + new.splitlines() + lines[i + 1:]) + "\n"


def _set(text: str, key: str, value: str) -> str:
    """Replace the value of a top-level or dataset-level ``key`` (first match)."""
    out, n = re.subn(rf"(?m)^(\s*(?:- )?){re.escape(key)}:.*$", rf"\g<1>{key}: {value}", text, count=1)
    assert n == 1, key
    return out


# name -> (build(base text) -> config text or bytes, key the line must name)
CASES: dict[str, tuple] = {
    "unknown-key": (lambda t: _after(t, "lora_alpha", "lora_alpah: 64"), "lora_alpah"),
    "unknown-dataset-key": (lambda t: t.replace("  field_messages: messages\n",
                                                "  field_messages: messages\n  feild_messages: messages\n", 1),
                            "datasets.0.feild_messages"),
    "wrong-type-int": (lambda t: _set(t, "micro_batch_size", "two"), "micro_batch_size"),
    "wrong-type-list": (lambda t: _set(t, "lora_r", "[16]"), "lora_r"),
    "wrong-type-bool": (lambda t: _set(t, "sample_packing", "sometimes"), "sample_packing"),
    "max-steps-type-strict": (lambda t: _after(t, "num_epochs", "max_steps: ten\nstrict: true"), "max_steps"),
    "missing-dataset": (lambda t: _set(t, "path", f"{RUN}/data/missing.jsonl"), "datasets.0.path"),
    "missing-template-file": (
        lambda t: _after(_set(t, "chat_template", "jinja"), "chat_template",
                         f"chat_template_jinja: {RUN}/templates/persona.jinja"),
        "chat_template_jinja"),  # a missing .jinja file is named
    "missing-base-model": (lambda t: _set(t, "base_model", "models/does-not-exist"), "base_model"),
    "missing-deepspeed": (lambda t: _after(t, "output_dir", "deepspeed: configs/deepspeed/zero9.json"),
                          "deepspeed"),
    "wrong-stage": (lambda t: _after(t, "num_epochs", "rl: dpo"), "rl"),
    "duplicate-key": (lambda t: _after(t, "lora_r", "lora_r: 64"), "lora_r"),  # validate names both lines
    "bad-yaml": (lambda t: _set(t, "lora_r", "[16"), "(file)"),
    "not-a-mapping": (lambda t: "- adapter: lora\n- lora_r: 16\n", "(file)"),
    "not-utf8": (lambda t: t.replace("lora_dropout", "# caf\udce9\nlora_dropout").encode("utf-8", "surrogateescape"),
                 "(file)"),
}


def _key_line(text: str, key: str) -> int | None:
    """1-based line of ``key`` in ``text`` (last path element, first match), or None."""
    last = key.split(".")[-1]
    for i, line in enumerate(text.splitlines(), 1):
        if re.match(rf"^\s*(?:- )?{re.escape(last)}:", line):
            return i
    return None


@pytest.fixture(scope="module")
def configs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("hostile-configs")
    out = {}
    base = base_text()
    for name, (build, _) in CASES.items():
        body = build(base)
        path = d / f"sft-lora-{name}.yaml"  # sft-*-lora: the naming checks hold for the control
        (path.write_bytes if isinstance(body, bytes) else path.write_text)(body)
        out[name] = path
    control = d / "sft-lora-control.yaml"
    control.write_text(base)
    out["control"] = control
    return out


@pytest.fixture(scope="module")
def validate_run(configs):
    """One ``axpack validate`` over every hostile config and the control."""
    proc = run_axpack("validate", *configs.values(), check=False)
    return proc


def test_validate_exits_1_without_traceback(validate_run, configs):
    assert validate_run.returncode == 1, validate_run.stderr[-3000:]
    assert "Traceback" not in validate_run.stdout + validate_run.stderr
    last = validate_run.stderr.strip().splitlines()[-1]
    assert last.startswith("axpack: error: validate: ") and f"of {len(configs)} config(s)" in last
    # the unbroken control passes: every finding below is caused by its one change
    assert f"{configs['control']}: ok" in validate_run.stdout.splitlines()


@pytest.mark.parametrize("name", list(CASES))
def test_validate_names_the_key_on_its_line(validate_run, configs, name):
    path = configs[name]
    key = CASES[name][1]
    mine = [m for m in validate_run.stdout.splitlines() if m.startswith(f"{path}:")]
    assert mine, f"no finding for {path.name}:\n{validate_run.stdout[-3000:]}"
    assert not any(m.endswith(": ok") for m in mine)
    hits = [m for m in mine if re.match(rf"^{re.escape(str(path))}:\d+: {re.escape(key)}: \S", m)]
    assert hits, f"no line names {key}:\n" + "\n".join(mine)
    if key != "(file)" and name != "duplicate-key":
        want = _key_line(path.read_text(encoding="utf-8"), key)
        assert any(h.startswith(f"{path}:{want}: ") for h in hits), (want, hits)
    if name == "unknown-key":
        assert "did you mean lora_alpha?" in hits[0]


# --------------------------------------------------------------------------- axpack train


def _no_axolotl(*args, **kwargs):
    raise AssertionError(f"Axolotl was launched for a config that should be refused: {args[0]}")


# Refused by train before Axolotl starts (train.check_config runs validate's checks first)
@pytest.mark.parametrize("name", list(CASES))
def test_train_refuses_before_launching_axolotl(name, tmp_path, monkeypatch):
    build, key = CASES[name]
    body = build(base_text(absolute=tmp_path))
    path = tmp_path / f"sft-lora-{name}.yaml"
    (path.write_bytes if isinstance(body, bytes) else path.write_text)(body)
    if name == "missing-dataset":  # the relative path of the case, made absolute like the rest
        path.write_text(_set(path.read_text(), "path", str(tmp_path / "missing.jsonl")))
    monkeypatch.setattr(train.subprocess, "run", _no_axolotl)
    with pytest.raises(AxpackError) as err:
        train.run_training(path, stage="sft")
    msg = err.value.message
    assert err.value.exit_code == 1 and "\n" not in msg
    assert (key.split(".")[-1] if key != "(file)" else str(path)) in msg, msg
    assert not (tmp_path / "sft" / train.DONE_FILE).exists()


def test_train_cli_refusals_are_one_line(tmp_path):
    """Through the real console script: wrong stage both ways, a missing
    config, a bad YAML: one stderr line, exit 1 (bad flag values: exit 2)."""
    bad_yaml = tmp_path / "sft-lora-bad.yaml"
    bad_yaml.write_text(_set(base_text(tmp_path), "lora_r", "[16"))
    cases = [
        (1, ["train", DPO, "--stage", "sft"], "make dpo"),
        (1, ["train", SFT, "--stage", "dpo"], "make sft"),
        (1, ["train", tmp_path / "nope.yaml", "--stage", "sft"], "config file not found"),
        (1, ["train", bad_yaml, "--stage", "sft"], f"{bad_yaml}:"),
        (2, ["train", SFT, "--stage", "orpo"], None),
        (2, ["train", SFT, "--max-steps", "ten"], None),
    ]
    for code, args, needle in cases:
        proc = run_axpack(*args, check=False)
        assert proc.returncode == code, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
        if code == 1:
            lines = proc.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("axpack: error: ") and needle in lines[0], proc.stderr


@pytest.mark.parametrize("target,config,other", [("sft", DPO, "dpo"), ("dpo", SFT, "sft")])
def test_make_target_refuses_the_other_stage(target, config, other):
    # -o setup: the venv is there; never re-sync it from a test
    proc = subprocess.run(["make", "--no-print-directory", "-o", "setup", target,
                           f"CONFIG={config.relative_to(ROOT)}"], cwd=ROOT, capture_output=True, text=True,
                          check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errs = [m for m in proc.stderr.splitlines() if m.startswith("axpack: error: ")]
    assert len(errs) == 1 and f"make {other} CONFIG=" in errs[0], proc.stderr


def test_max_steps_reaches_axolotl_under_strict(tmp_path, monkeypatch):
    """strict: true and no max_steps key in the YAML: Axolotl would drop a
    command-line --max_steps; axpack must hand it over inside the YAML."""
    cfg = _after(base_text(tmp_path), "num_epochs", "strict: true")
    assert "max_steps" not in yaml.safe_load(cfg)
    path = tmp_path / "sft-lora-strict.yaml"
    path.write_text(cfg)
    seen = []

    def fake_run(cmd, **kw):
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(train.subprocess, "run", fake_run)
    train.run_training(path, stage="sft", max_steps=2)
    (cmd,) = seen
    resolved = yaml.safe_load(Path(cmd[-1]).read_text())
    assert resolved["strict"] is True and resolved["max_steps"] == 2
    assert not any("max_steps" in str(c) for c in cmd[:-1]), "not as a CLI flag Axolotl may drop"


@pytest.mark.parametrize("steps", [0, -3])
def test_nonpositive_max_steps_is_refused(steps, tmp_path, monkeypatch):
    """--max-steps 0 / -3 would make HF train the full num_epochs instead."""
    path = tmp_path / "sft-lora.yaml"
    path.write_text(base_text(tmp_path))
    monkeypatch.setattr(train.subprocess, "run", _no_axolotl)
    with pytest.raises(AxpackError) as err:
        train.run_training(path, stage="sft", max_steps=steps)
    assert err.value.exit_code == 1 and "max-steps" in err.value.message.replace("_", "-")
