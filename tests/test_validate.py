"""axpack validate: the deliberately broken configs in tests/broken_configs/
each fail with exactly the keys their ``# expect:`` line names (on the key's
line), through Axolotl's real schema; plus the helpers that place keys on
lines and the checks that need no Axolotl import.

The broken configs are the demo SmolLM2 configs with one thing wrong; their
data (runs/demo/data) is prepped from data/demo into a tmp root, so the
referenced-file checks run for real.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from axpack.config import duplicate_keys, key_lines, line_of
from axpack.validation import Problem, _Report, naming, pitfalls, validate_config
from conftest import ROOT, run_axpack

BROKEN = sorted((ROOT / "tests" / "broken_configs").glob("*.yaml"))


def expected_keys(path: Path) -> set[str]:
    m = re.search(r"(?m)^# expect: (.+)$", path.read_text(encoding="utf-8"))
    assert m, f"{path.name}: no '# expect: key, ...' line"
    return {k.strip() for k in m.group(1).split(",")}


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory, demo_model) -> Path:
    """A repo-like root: runs/demo/data prepped from data/demo, models/ linked."""
    root = tmp_path_factory.mktemp("validate-root")
    (root / "models").symlink_to(ROOT / "models", target_is_directory=True)
    (root / "configs").symlink_to(ROOT / "configs", target_is_directory=True)
    raw = sorted(str(p) for p in (ROOT / "data" / "demo").glob("*.jsonl"))
    run_axpack("prep", *raw, "--out", root / "runs/demo/data", "--system", "strip", "-q")
    return root


def test_there_are_broken_configs_for_every_check():
    assert len(BROKEN) >= 15
    keys = set().union(*(expected_keys(p) for p in BROKEN))
    for key in ("rl", "adapter", "load_in_4bit", "eval_steps", "warmup_steps", "max_prompt_len", "learning_rate",
                "output_dir", "lora_alpha", "save_steps", "plugins.0", "datasets.0.path", "micro_batch_size",
                "datasets.0.field_chosen", "trl.betta", "datasets.0.roles_to_trian",
                "chat_template_kwargs.enable_thinking"):
        assert key in keys, f"no broken config exercises {key}"


@pytest.mark.parametrize("path", BROKEN, ids=[p.name for p in BROKEN])
def test_broken_config_fails_naming_exactly_its_keys(path, demo_root):
    problems = validate_config(path, check_data=True, root=demo_root)
    assert problems, f"{path.name} passed validate"
    got = {p.key for p in problems}
    assert got == expected_keys(path), "\n".join(map(str, problems))
    lines = key_lines(path)
    for p in problems:
        assert str(p).startswith(f"{path}:{p.line}: {p.key}: ")
        assert "; " in str(p), "what is wrong; what to do"
        if p.key in lines:
            assert p.line == lines[p.key], f"{p.key} reported on line {p.line}, written on {lines[p.key]}"


def test_typo_gets_did_you_mean(demo_root):
    (p,) = validate_config(ROOT / "tests/broken_configs/sft-lora-nested-typo.yaml", root=demo_root)
    assert "did you mean roles_to_train?" in p.what + p.todo


def test_control_configs_pass_with_their_data(demo_root):
    for name in ("sft-lora.yaml", "dpo-lora.yaml"):
        cfg = ROOT / "configs/smollm2-135m" / name
        text = cfg.read_text().replace("runs/demo/sft-merged", "models/smollm2-135m-instruct")
        path = demo_root / name
        path.write_text(text)
        assert validate_config(path, check_data=True, root=demo_root) == []


def test_cli_prints_one_line_per_problem_and_exits_1():
    proc = run_axpack("validate", "--no-data", *BROKEN[:3], check=False)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    findings = [ln for ln in proc.stdout.splitlines() if ln]
    assert findings and all(re.match(r"^\S+\.yaml:\d+: \S+: .+; .+", ln) for ln in findings), proc.stdout
    assert proc.stderr.strip().splitlines()[-1].startswith("axpack: error: validate: ")


# --------------------------------------------------------------------------- helpers, no Axolotl


def test_key_lines_and_duplicates(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("a: 1\ndatasets:\n  - path: x\n    type: y\n  - path: z\nb:\n  c: 2\na: 3\n")
    lines = key_lines(f)
    assert lines["a"] == 1 and lines["datasets.0.path"] == 3 and lines["datasets.0.type"] == 4
    assert lines["datasets.1.path"] == 5 and lines["b.c"] == 7
    assert line_of(lines, "datasets.1.nope") == 5 and line_of(lines, "zzz") == 1
    assert duplicate_keys(f) == [("a", 1, 8)]


def _problems(check, path: Path, cfg: dict) -> list[Problem]:
    path.write_text("\n".join(f"{k}: x" for k in cfg) + "\n")
    rep = _Report(path)
    check(path, cfg, rep) if check is naming else check(cfg, rep)
    return rep.problems


def test_naming_rules(tmp_path):
    ok = {"adapter": "qlora", "load_in_4bit": True}
    assert _problems(naming, tmp_path / "sft-qlora-x.yaml", ok) == []
    assert {p.key for p in _problems(naming, tmp_path / "sft-qlora.yaml", {"adapter": "lora"})} == \
        {"adapter", "load_in_4bit"}
    assert {p.key for p in _problems(naming, tmp_path / "sft-lora.yaml", {"adapter": "lora", "load_in_4bit": True})} \
        == {"load_in_4bit"}
    assert {p.key for p in _problems(naming, tmp_path / "dpo-lora.yaml", {"adapter": "lora", "rl": "kto"})} == {"rl"}
    folder = tmp_path / "configs" / "llama-3.2-3b"
    folder.mkdir(parents=True)
    wrong = _problems(naming, folder / "sft-lora.yaml", {"adapter": "lora", "base_model": "Qwen/Qwen2.5-7B-Instruct"})
    assert [p.key for p in wrong] == ["base_model"]
    right = _problems(naming, folder / "sft-lora.yaml", {"adapter": "lora",
                                                          "base_model": "meta-llama/Llama-3.2-3B-Instruct"})
    assert right == []


def test_pitfalls_quiet_on_a_sound_config(tmp_path):
    cfg = {"adapter": "lora", "lora_r": 16, "lora_alpha": 32, "lora_target_linear": True, "val_set_size": 0.05,
           "eval_steps": 50, "save_steps": 100, "load_best_model_at_end": True, "warmup_ratio": 0.1,
           "learning_rate": 2e-4, "output_dir": "runs/x/sft", "datasets": [{"path": "runs/x/data/sft.jsonl"}]}
    assert _problems(pitfalls, tmp_path / "sft-lora.yaml", cfg) == []
    cfg["test_datasets"], cfg["val_set_size"] = [{"path": "runs/x/data/sft.val.jsonl"}], 0
    assert _problems(pitfalls, tmp_path / "sft-lora.yaml", cfg) == []


def test_every_pitfall_rule_has_an_id_a_source_and_a_broken_config(tmp_path):
    """PITFALLS share plan's rule shape (axpack.rules.Rule); each fires on a config made to trip it."""
    from axpack.config import load_config
    from axpack.validation import PITFALLS

    ids = [r.id for r in PITFALLS]
    assert len(set(ids)) == len(ids) and all(r.source for r in PITFALLS)
    fired = set()
    for path in BROKEN:
        fired |= {r.id for r in PITFALLS if r.test(load_config(path), key_lines(path))}
    fired |= {r.id for r in PITFALLS if r.test({"adapter": "lora", "lora_alpha": 16}, {})}  # no targets
    assert fired == set(ids)


def test_config_answers_eval_set_dataset_entries_and_template_text(tmp_path):
    """The questions validate and smoke both ask, answered once in axpack.config."""
    from axpack.config import dataset_entries, has_eval_set, template_text

    assert not has_eval_set({}) and not has_eval_set({"val_set_size": 0}) and not has_eval_set({"val_set_size": "0.1"})
    assert has_eval_set({"val_set_size": 0.05}) and has_eval_set({"test_datasets": [{"path": "v.jsonl"}]})
    cfg = {"datasets": [{"path": "a"}, "not-a-mapping", {"path": "b"}], "test_datasets": [{"path": "v"}]}
    assert list(dataset_entries(cfg)) == [("datasets", 0, {"path": "a"}), ("datasets", 2, {"path": "b"}),
                                          ("test_datasets", 0, {"path": "v"})]
    assert [i for _, i, _ in dataset_entries(cfg, ("datasets",))] == [0, 2]
    jinja = tmp_path / "t.jinja"
    jinja.write_text("{{ messages }}{{ enable_thinking }}")
    assert template_text({"chat_template": "jinja", "chat_template_jinja": str(jinja)}) == jinja.read_text()
    assert template_text({"chat_template_jinja": "{{ messages }}"}) == "{{ messages }}"  # text, as Axolotl reads it
    assert template_text({"chat_template": "tokenizer_default"}) is None
    assert template_text({"chat_template": "no-such-template"}) is None
    pytest.importorskip("axolotl")
    from axolotl.utils.chat_templates import get_chat_template

    assert template_text({"chat_template": "chatml"}) == get_chat_template("chatml")
