"""axpack prep: the contract the demo and the configs rely on.

Real input: data/demo/{sft,dpo}.jsonl (84 SFT lines with 6 exact duplicates
and system prompts; 40 DPO pairs), run through the real console script.
"""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
from axpack.errors import AxpackError
from axpack.prep import prep
from conftest import ROOT, run_axpack

DEMO = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "data" / "demo").glob("*.jsonl"))
COUNT_KEYS = {"read", "kept", "duplicates", "rejected"}


def _lines(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def _assert_accounting(summary: dict) -> None:
    groups = [*summary["inputs"].values(), *summary["outputs"].values(), summary["totals"]]
    for c in groups:
        assert set(c) == COUNT_KEYS
        assert c["read"] == c["kept"] + c["duplicates"] + c["rejected"], c
    for key in COUNT_KEYS:
        assert summary["totals"][key] == sum(c[key] for c in summary["inputs"].values())


def test_demo_strip(tmp_path):
    out = tmp_path / "data"
    proc = run_axpack("prep", *DEMO, "--out", out, "--system", "strip")
    assert "total" in proc.stdout  # the table
    summary = json.loads((out / "summary.json").read_text())
    _assert_accounting(summary)
    assert summary["inputs"]["data/demo/sft.jsonl"] == {"read": 84, "kept": 78, "duplicates": 6, "rejected": 0}
    assert summary["outputs"]["dpo"] == {"read": 40, "kept": 40, "duplicates": 0, "rejected": 0}
    sft = _lines(out / "sft.jsonl")
    dpo = _lines(out / "dpo.jsonl")
    assert len(sft) == 78 and len(dpo) == 40
    assert all(m["role"] in ("user", "assistant") for ex in sft for m in ex["messages"])
    assert all(ex["messages"][-1]["role"] == "assistant" for ex in sft)
    assert all(set(ex) == {"prompt", "chosen", "rejected"} for ex in dpo)
    assert all(ex["chosen"][0]["role"] == "assistant" and len(ex["rejected"]) == 1 for ex in dpo)
    assert (out / "rejects.jsonl").read_bytes() == b""
    dups = _lines(out / "duplicates.jsonl")
    assert len(dups) == 6 and all(d["kept_line"] < d["line"] for d in dups)


def test_demo_keep_has_system_and_rerun_is_byte_identical(tmp_path):
    out = tmp_path / "data"
    run_axpack("prep", *DEMO, "--out", out, "--system", "keep", "-q")
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    sft = _lines(out / "sft.jsonl")
    with_system = [ex for ex in sft if ex["messages"][0]["role"] == "system"]
    assert with_system, "the demo data has system prompts; keep must keep them"
    assert all(m["role"] != "system" for ex in sft for m in ex["messages"][1:])
    run_axpack("prep", *DEMO, "--out", out, "--system", "keep", "-q")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first


def test_missing_input_is_one_line_exit_1(tmp_path):
    proc = run_axpack("prep", "data/demo/nope.jsonl", "--out", tmp_path, check=False)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "nope.jsonl" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_usage_error_exit_2(tmp_path):
    proc = run_axpack("prep", *DEMO, "--out", tmp_path, "--system", "bogus", check=False)
    assert proc.returncode == 2


def test_strict_exit_3_still_writes(tmp_path):
    raw = tmp_path / "raw.jsonl"
    raw.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
                   "{not json\n")
    out = tmp_path / "out"
    proc = run_axpack("prep", raw, "--out", out, "--strict", check=False)
    assert proc.returncode == 3, proc.stderr
    rejects = _lines(out / "rejects.jsonl")
    assert rejects == [{"file": str(raw), "line": 2, "reason": rejects[0]["reason"], "raw": "{not json"}]
    assert rejects[0]["reason"].startswith("invalid-json")
    assert len(_lines(out / "sft.jsonl")) == 1
    with pytest.raises(AxpackError) as err:
        prep([str(raw)], out, strict=True, warn=lambda m: None)
    assert err.value.exit_code == 3
