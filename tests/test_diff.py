"""axpack diff: section-grouped key changes, derived values, cited warnings, --git mode.

The golden test diffs the shipped demo siblings (SmolLM2 SFT → DPO) against
a reviewed Markdown file; regenerate it after a deliberate change with
``AXPACK_UPDATE_GOLDEN=1`` and review the diff of the golden in the PR.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from axpack.cli import main
from axpack.diff import (
    DataOpts,
    diff_files,
    diff_git,
    diff_texts,
    flatten,
    header_why,
    render_git_markdown,
    render_markdown,
    sections_of,
)
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "diff-smollm2-sft-vs-dpo.md"

BASE = """\
# a QLoRA recipe
### model
base_model: Qwen/Qwen2.5-7B-Instruct

### adapter
adapter: qlora
load_in_4bit: true
lora_r: 32
lora_alpha: 64

### data
datasets:
  - path: data.jsonl
    type: chat_template
sequence_len: 1024
sample_packing: false

### training
num_epochs: 1
micro_batch_size: 8
gradient_accumulation_steps: 2
learning_rate: 2.0e-4

### precision
bf16: true
gradient_checkpointing: true
"""


def edit(text: str, **repl: str) -> str:
    for old, new in repl.items():
        key = old.replace("__", " ")
        lines = text.splitlines(keepends=True)
        text = "".join(f"{key}: {new}\n" if ln.startswith(f"{key}:") else ln for ln in lines)
    return text


OPTS = DataOpts(num_examples=9007, tokenize=False)


def test_golden_markdown_of_the_shipped_demo_siblings(monkeypatch, demo_model):
    """sft-lora.yaml → dpo-lora.yaml, examples from the committed data/demo, tokens counted with the
    demo model's tokenizer and chat template for both sides (so the output does not depend on
    which run folders exist)."""
    monkeypatch.chdir(ROOT)  # relative labels, as a user at the repo root sees them
    d = diff_files(Path("configs/smollm2-135m/sft-lora.yaml"), Path("configs/smollm2-135m/dpo-lora.yaml"),
                   DataOpts(data_dir=Path("data/demo"), tokenizer_dir=demo_model))
    md = render_markdown(d)
    if os.environ.get("AXPACK_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(md, encoding="utf-8")
    assert md == GOLDEN.read_text(encoding="utf-8"), "diff output changed: review it, then AXPACK_UPDATE_GOLDEN=1"


def test_golden_content_is_what_a_reviewer_needs():
    """Independent of formatting: the facts the golden must state."""
    md = GOLDEN.read_text(encoding="utf-8")
    assert "| model | `base_model` | `models/smollm2-135m-instruct` | `runs/demo/sft-merged` |" in md
    assert "| training | `rl` | — | `dpo` |" in md  # added key, grouped under its section
    assert "`datasets.0.roles_to_train` | `[assistant]` | — |" in md  # removed nested key
    assert "| stage | SFT | DPO (dpo) |" in md
    assert "**dpo-lr-high** (new)" in md
    assert "| `num_epochs` | `3` | `1` |" in md
    assert "**small-effective-batch** (still)" in md


def test_sections_follow_the_headers():
    sec = sections_of(BASE)
    assert sec["base_model"] == "model" and sec["lora_alpha"] == "adapter" and sec["datasets"] == "data"
    assert sec["bf16"] == "precision"
    assert dict(flatten(yaml.safe_load(BASE)))["datasets.0.path"] == "data.jsonl"


def test_alpha_halved_at_same_rank_halves_the_update():
    d = diff_texts(BASE, edit(BASE, lora_alpha="32"), "a.yaml", "b.yaml", OPTS)
    [c] = d.changes
    assert (c.section, c.key, c.kind, c.old, c.new) == ("adapter", "lora_alpha", "changed", "64", "32")
    rows = {r.key: r for r in d.derived}
    assert (rows["lora_scale"].a, rows["lora_scale"].b, rows["lora_scale"].change) == ("2", "1", "×0.5")
    assert rows["lr_scaled"].change == "×0.5"
    assert any(f.rule == "lora-scale-changed" and "×0.5" in f.message for f in d.findings)


def test_micro_batch_halved_without_ga_halves_the_batch_and_doubles_the_steps():
    d = diff_texts(BASE, edit(BASE, micro_batch_size="4"), "a.yaml", "b.yaml", OPTS)
    rows = {r.key: r for r in d.derived}
    assert rows["eff_batch"].change == "×0.5"
    assert (rows["total_steps"].a, rows["total_steps"].b) == ("563", "1,126")
    assert rows["total_steps"].change == "×2"
    [f] = [f for f in d.findings if f.rule == "batch-changed-same-lr"]
    assert "without touching gradient_accumulation_steps" in f.message and "563 → 1,126" in f.message
    assert f.source.startswith("Goyal et al. 2017")


def test_warnings_are_new_still_or_resolved_and_cite_a_source():
    a = edit(BASE, gradient_accumulation_steps="1", micro_batch_size="4")  # eff batch 4: small
    b = edit(a, lora_alpha="128")  # α/r 4 at lr 2e-4: new
    d = diff_texts(a, b, "a.yaml", "b.yaml", OPTS)
    status = {f.rule: f.status for f in d.findings}
    assert status["small-effective-batch"] == "still"
    assert status["lora-scale-high-lr"] == "new"
    back = diff_texts(b, a, "b.yaml", "a.yaml", OPTS)
    assert {f.rule: f.status for f in back.findings}["lora-scale-high-lr"] == "resolved"
    assert all(f.source for f in d.findings)


def test_shorter_sequence_and_other_base_are_flagged():
    b = edit(BASE, sequence_len="512", base_model="meta-llama/Llama-3.1-8B-Instruct")
    d = diff_texts(BASE, b, "a.yaml", "b.yaml", OPTS)
    rules = {f.rule for f in d.findings}
    assert {"sequence-len-shorter", "base-model-changed"} <= rules


def test_dpo_learning_rate_rule_fires_only_for_dpo():
    dpo = BASE.replace("### training\n", "### training\nrl: dpo\n")
    assert "dpo-lr-high" in {f.rule for f in diff_texts(BASE, dpo, "a", "b", OPTS).findings}
    low = edit(dpo, learning_rate="5.0e-6")
    assert "dpo-lr-high" not in {f.rule for f in diff_texts(BASE, low, "a", "b", OPTS).findings
                                 if f.status != "resolved"}


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def test_git_mode_diffs_every_changed_config_against_its_old_self(tmp_path):
    repo = tmp_path / "repo"
    (repo / "configs" / "qwen2.5-7b").mkdir(parents=True)
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "t@example.com")
    _git(repo, "config", "user.name", "t")
    (repo / "configs" / "qwen2.5-7b" / "sft.yaml").write_text(BASE)
    (repo / "configs" / "qwen2.5-7b" / "old.yaml").write_text(BASE)
    (repo / "README.md").write_text("x\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "base")
    (repo / "configs" / "qwen2.5-7b" / "sft.yaml").write_text(edit(BASE, lora_alpha="32"))
    (repo / "configs" / "qwen2.5-7b" / "old.yaml").unlink()
    (repo / "configs" / "qwen2.5-7b" / "new.yaml").write_text(edit(BASE, lora_r="8"))  # untracked
    (repo / "README.md").write_text("y\n")  # not a config: ignored
    diffs = diff_git("HEAD", OPTS, root=repo)
    by = {d.b_label: d for d in diffs}
    assert set(by) == {"configs/qwen2.5-7b/new.yaml", "configs/qwen2.5-7b/old.yaml (removed)",
                       "configs/qwen2.5-7b/sft.yaml"}
    mod = by["configs/qwen2.5-7b/sft.yaml"]
    assert mod.status == "modified" and mod.a_label == "configs/qwen2.5-7b/sft.yaml@HEAD"
    assert [c.key for c in mod.changes] == ["lora_alpha"]
    assert mod.plan_a.model == "Qwen/Qwen2.5-7B-Instruct"  # card found through configs/<dir>/ at the old rev too
    assert by["configs/qwen2.5-7b/new.yaml"].status == "added"
    md = render_git_markdown(diffs, "HEAD")
    assert md.startswith("## axpack config review") and "3 config(s) changed" in md
    assert "New config." in md and "Config removed." in md and "| base model |" in md
    assert "No config" in render_git_markdown(diff_git("HEAD~0", OPTS, root=repo)[:0], "HEAD")


def test_git_mode_reviews_the_checkout_it_runs_in(tmp_path):
    """A fork of the pack (or the CI clone) with axpack installed from elsewhere:
    `axpack diff --git` reads the git checkout of the current directory, and
    with a reference size shows the step rows a batch change moves."""
    repo = tmp_path / "fork"
    (repo / "configs" / "qwen2.5-7b").mkdir(parents=True)
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "t@example.com")
    _git(repo, "config", "user.name", "t")
    cfg = repo / "configs" / "qwen2.5-7b" / "sft.yaml"
    cfg.write_text(BASE)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "base")
    cfg.write_text(edit(BASE, micro_batch_size="4"))
    proc = subprocess.run([str(Path(sys.executable).parent / "axpack"), "diff", "--git", "HEAD", "--format",
                           "markdown", "--num-examples", "10000", "--tokens-per-example", "300"],
                          cwd=repo / "configs", capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "1 config(s) changed" in proc.stdout and "`configs/qwen2.5-7b/sft.yaml`" in proc.stdout
    steps = next(ln for ln in proc.stdout.splitlines() if ln.startswith("| total steps |"))
    assert "×2" in steps, steps  # micro batch halved, GA kept: twice the steps


def test_git_mode_errors_are_one_line(tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["diff", "--git", "no-such-rev-xyz"])
    assert res.exit_code == 1 and res.output.count("\n") == 1 and "diff --git" in res.output


def test_cli_usage_and_input_errors(tmp_path):
    runner = CliRunner()
    a = tmp_path / "a.yaml"
    b = tmp_path / "b.yaml"
    a.write_text(BASE)
    b.write_text(edit(BASE, lora_alpha="32"))
    res = runner.invoke(main, ["diff", str(a), str(b), "--num-examples", "9007"])
    assert res.exit_code == 0 and "lora_alpha" in res.output and "×0.5" in res.output
    res = runner.invoke(main, ["diff", str(a), str(b), "--num-examples", "9007", "--format", "markdown"])
    assert res.exit_code == 0 and res.output.startswith(f"### `{a}` → `{b}`")
    assert runner.invoke(main, ["diff", str(a)]).exit_code == 2
    assert runner.invoke(main, ["diff", "--git", "HEAD", str(a)]).exit_code == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("lora_r: [1, 2\n")
    res = runner.invoke(main, ["diff", str(a), str(bad)])
    assert res.exit_code == 1 and f"{bad}:" in res.output and "invalid YAML" in res.output
    res = runner.invoke(main, ["diff", str(a), str(tmp_path / "missing.yaml")])
    assert res.exit_code == 1 and "not found" in res.output


@pytest.mark.parametrize("name", ["sft-lora.yaml", "dpo-lora.yaml"])
def test_a_config_against_itself_has_no_changes(name):
    p = ROOT / "configs" / "smollm2-135m" / name
    d = diff_files(p, p, OPTS)
    assert d.changes == [] and all(r.change == "same" for r in d.derived)
    assert all(f.status == "still" for f in d.findings)


# ---- every recipe config against its improved sibling variant --------------------------
# (recipe, variant, what the variant changes): the diff must name the change and
# explain it in steps, tokens per step and memory
VARIANTS = [
    ("qwen2.5-7b/sft-qlora-v1.yaml", "qwen2.5-7b/sft-qlora-v1-packed.yaml", "sample_packing"),
    ("qwen2.5-7b/sft-qlora-8gb.yaml", "qwen2.5-7b/sft-qlora-8gb-packed.yaml", "sample_packing"),
    ("qwen2.5-7b/sft-qlora-a100.yaml", "qwen2.5-7b/sft-qlora-a100-packed.yaml", "sample_packing"),
    ("qwen3.5-9b/sft-qlora.yaml", "qwen3.5-9b/sft-qlora-deltanet.yaml", "lora_target_modules"),
]


@pytest.mark.parametrize(("recipe", "variant", "key"), VARIANTS, ids=[v[1] for v in VARIANTS])
def test_each_recipe_vs_its_variant_explains_the_change(recipe, variant, key):
    """2,898 examples of 300 tokens (the ops recipe's count): packing cuts the steps and
    fills each step with more tokens at the same memory; the DeltaNet variant keeps the
    steps and trains more parameters in more memory."""
    opts = DataOpts(num_examples=2898, tokens_per_example=300, tokenize=False)
    d = diff_files(ROOT / "configs" / recipe, ROOT / "configs" / variant, opts)
    assert {c.key.split(".")[0] for c in d.changes} == {key}, [c.key for c in d.changes]
    rows = {r.key: r for r in d.derived}
    pa, pb = d.plan_a, d.plan_b
    if key == "sample_packing":
        assert pb.total_steps < pa.total_steps and rows["total_steps"].change != "same"
        assert pb.tokens_per_step > 2 * pa.tokens_per_step and rows["tokens_per_step_est"].change != "same"
        assert rows["memory"].change == "same"
        [f] = [f for f in d.findings if f.rule == "packing-changed"]
        assert f"{pa.total_steps:,} → ≈ {pb.total_steps:,}" in f.message
        assert "tokens per step" in f.message and "memory" in f.message and "flash_attention_2" in f.message
    else:
        assert rows["total_steps"].change == "same"
        assert pb.trainable_params > pa.trainable_params and rows["trainable"].change != "same"
        assert pb.memory.reserved > pa.memory.reserved and rows["memory"].change != "same"
    md = render_markdown(d)
    assert f"`{key}`" in md
    # the variant's own reason, from its header, beside the numbers
    assert d.why and f"**Why** (B's header): {d.why[:40]}" in md
    assert header_why((ROOT / "configs" / recipe).read_text()) == ""  # a recipe states no "Why:"


def test_diff_uses_the_plan_engine_not_the_plan_command():
    """Layers: diff imports axpack.plan's engine modules; the click command (axpack.plan.cmd) stays
    unloaded until the CLI asks the package for ``command`` (a fresh interpreter, ~1 s)."""
    code = ("import sys, axpack.diff; assert 'axpack.plan.cmd' not in sys.modules, 'diff loaded plan.cmd'; "
            "import axpack.plan as p; assert p.command.name == 'plan' and 'axpack.plan.cmd' in sys.modules; "
            "assert p.command is p.command")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
