"""axpack stats on the demo config (SmolLM2-135M-Instruct tokenizer, offline).

Numbers are checked against an independent computation with the tokenizer's
own chat template: total length = apply_chat_template(messages) tokens;
trainable = each assistant content's tokens + its <|im_end|> (Axolotl's
roles_to_train: [assistant], train_on_eos: turn).
"""

from __future__ import annotations

import json
import math

import pytest
from axpack.errors import AxpackError
from axpack.prep import prep
from axpack.script import script
from axpack.stats import stats
from conftest import ROOT, run_axpack, write_test_config

CONFIG = ROOT / "configs" / "smollm2-135m" / "sft-lora.yaml"
DEMO = [str(ROOT / "data" / "demo" / "sft.jsonl"), str(ROOT / "data" / "demo" / "dpo.jsonl")]


@pytest.fixture(scope="module")
def demo_data(demo_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("prep")
    prep(DEMO, out, system="strip", warn=lambda m: None)
    return out


@pytest.fixture(scope="module")
def tokenizer(demo_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(demo_model))


def _ids(x):
    return list(x["input_ids"] if hasattr(x, "keys") else x)


def _independent(tokenizer, sft_path):
    lengths, trainable = [], []
    for line in sft_path.read_text().splitlines():
        msgs = json.loads(line)["messages"]
        lengths.append(len(_ids(tokenizer.apply_chat_template(msgs, tokenize=True))))
        trainable.append(sum(len(tokenizer.encode(m["content"], add_special_tokens=False)) + 1
                             for m in msgs if m["role"] == "assistant"))
    return lengths, trainable


def test_demo_stats_match_an_independent_count(demo_data, tokenizer, tmp_path):
    s, md = stats([str(demo_data / "sft.jsonl")], CONFIG, plot_path=str(tmp_path / "h.png"))
    lengths, trainable = _independent(tokenizer, demo_data / "sft.jsonl")
    assert s["examples"] == len(lengths) == 78
    assert s["tokens_total"] == sum(lengths)
    assert s["trainable_total"] == sum(trainable)
    assert (s["tokens"]["min"], s["tokens"]["max"]) == (min(lengths), max(lengths))
    assert s["over_sequence_len"] == 0 and s["sequence_len"] == 512
    # packed: every token lands in some 512-token row; rows are full enough to beat unpacked
    assert s["packed_rows"] >= math.ceil(sum(lengths) / 512)
    assert s["padding_efficiency_packed"] == pytest.approx(sum(lengths) / (s["packed_rows"] * 512), abs=1e-4)
    assert s["padding_efficiency_packed"] > s["padding_efficiency_unpacked"]
    assert "| all |" in md and "| trainable |" in md and "padding efficiency, packed" in md
    png = (tmp_path / "h.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    stats([str(demo_data / "sft.jsonl")], CONFIG, plot_path=str(tmp_path / "h.png"))
    assert (tmp_path / "h.png").read_bytes() == png


def test_truncation_and_pad_to_sequence_len(demo_data, tokenizer, tmp_path):
    cfg = write_test_config(CONFIG, tmp_path / "c.yaml", {
        "base_model": str(ROOT / "models" / "smollm2-135m-instruct"), "sequence_len": 64,
        "pad_to_sequence_len": True, "micro_batch_size": 3})
    s, md = stats([str(demo_data / "sft.jsonl")], cfg)
    lengths, _ = _independent(tokenizer, demo_data / "sft.jsonl")
    over = sum(1 for n in lengths if n > 64)
    assert over > 0
    assert s["over_sequence_len"] == over
    assert s["over_sequence_len_pct"] == round(100 * over / len(lengths), 2)
    fit = [n for n in lengths if n <= 64]  # Axolotl drops the longer ones
    # every example padded to 64: efficiency is real tokens over 64 per example
    assert s["padding_efficiency_unpacked"] == pytest.approx(sum(fit) / (64 * len(fit)), abs=1e-4)
    assert "dropped by Axolotl" in md


def test_dpo_stats(demo_data, tokenizer):
    s, md = stats([str(demo_data / "dpo.jsonl")], CONFIG)
    assert s["kind"] == "dpo" and s["examples"] == 40
    assert s["padding_efficiency_packed"] is None and "padding efficiency, packed" not in md
    first = json.loads((demo_data / "dpo.jsonl").read_text().splitlines()[0])
    prompt = len(_ids(tokenizer.apply_chat_template(first["prompt"], tokenize=True, add_generation_prompt=True)))
    full = [len(_ids(tokenizer.apply_chat_template(first["prompt"] + first[k], tokenize=True)))
            for k in ("chosen", "rejected")]
    s1, _ = stats([str(demo_data / "dpo.jsonl")], CONFIG, limit=1)
    assert s1["tokens_total"] == max(full) and s1["trainable_total"] == sum(f - prompt for f in full)


def test_script_windows_train_only_the_completion(demo_model, tokenizer, tmp_path):
    script([str(ROOT / "data" / "script")], tmp_path, window=12, context=4, min_completion=4, stride=4)
    s, _ = stats([str(tmp_path / "sft.jsonl")], CONFIG)
    lengths, trainable = _independent(tokenizer, tmp_path / "sft.jsonl")
    assert s["trainable_total"] == sum(trainable) < s["tokens_total"] == sum(lengths)


def test_cli_prints_the_table(demo_data, tmp_path):
    proc = run_axpack("stats", demo_data / "sft.jsonl", "--config", CONFIG, "--json", tmp_path / "s.json")
    assert "| tokens per example |" in proc.stdout and "p99" in proc.stdout
    assert json.loads((tmp_path / "s.json").read_text())["examples"] == 78


def test_missing_model_is_one_line(tmp_path, demo_data):
    cfg = write_test_config(CONFIG, tmp_path / "c.yaml", {"base_model": str(tmp_path / "no-such-model")})
    with pytest.raises(AxpackError, match="cannot load its tokenizer"):
        stats([str(demo_data / "sft.jsonl")], cfg)


def test_trust_remote_code_needs_the_flag(demo_data, tmp_path):
    """As axpack train: a config with trust_remote_code: true is one line naming
    the flag; with --trust-remote-code the (local, code-free) tokenizer loads."""
    cfg = write_test_config(CONFIG, tmp_path / "c.yaml", {
        "base_model": str(ROOT / "models" / "smollm2-135m-instruct"), "trust_remote_code": True})
    proc = run_axpack("stats", demo_data / "sft.jsonl", "--config", cfg, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert proc.stderr.count("axpack: error:") == 1 and "trust_remote_code" in line and "--trust-remote-code" in line
    ok = run_axpack("stats", demo_data / "sft.jsonl", "--config", cfg, "--trust-remote-code", "--limit", "2")
    assert "| tokens per example |" in ok.stdout


@pytest.mark.parametrize("option", ["--plot", "--json"])
def test_unwritable_output_prints_the_table_then_one_line(demo_data, tmp_path, option):
    """--plot / --json under a regular file (a folder that cannot exist): the
    table is still printed, then one error line naming the option, exit 1; the
    other output is still written."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file\n")
    bad = blocker / ("h.png" if option == "--plot" else "s.json")
    other = ("--json", tmp_path / "s.json") if option == "--plot" else ("--plot", tmp_path / "h.png")
    proc = run_axpack("stats", demo_data / "sft.jsonl", "--config", CONFIG, option, bad, *other, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "| tokens per example |" in proc.stdout and "p99" in proc.stdout
    line = proc.stderr.strip().splitlines()[-1]  # (torch/axolotl import warnings may precede it)
    assert proc.stderr.count("axpack: error:") == 1
    assert line == (f"axpack: error: {option} {bad}: cannot write it ({blocker} is a file, not a folder); "
                    "choose a path in a writable folder")
    assert other[1].is_file() and other[1].stat().st_size > 0
    assert blocker.read_text() == "a file\n" and not list(tmp_path.glob(".*.tmp"))


def test_unwritable_output_through_the_api(demo_data, tmp_path):
    """stats() raises the same one-line AxpackError (here: the --json path is a
    folder) and leaves no temp file behind."""
    target = tmp_path / "a-folder"
    target.mkdir()
    with pytest.raises(AxpackError, match=r"^--json .*a-folder: cannot write it \(Is a directory\); choose a path"):
        stats([str(demo_data / "sft.jsonl")], CONFIG, json_path=str(target), limit=2)
    assert target.is_dir() and not list(tmp_path.rglob("*.tmp"))
