"""axpack prep: the contract the demo and the configs rely on.

Real input: data/demo/{sft,dpo}.jsonl (84 SFT lines with 6 exact duplicates
and system prompts; 40 DPO pairs), run through the real console script.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import orjson
import pytest
from axpack.errors import AxpackError
from axpack.prep import prep
from conftest import ROOT, run_axpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


# ----------------------------------------------------------------- hostile input

GOOD = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}'


def _hostile_files(d: Path) -> dict[str, bytes]:
    files = {
        "bom_crlf.jsonl": b"\xef\xbb\xbf" + GOOD + b"\r\n" + GOOD.replace(b"hi", b"yo") + b"\r\n",
        "truncated.jsonl": GOOD + b"\n" + GOOD[:30],
        "bad_utf8.jsonl": GOOD.replace(b"hello", b"hel\xff\xfelo") + b"\n",
        "nul.jsonl": GOOD.replace(b"hello", b"hel\x00lo") + b"\n" + GOOD.replace(b"hello", b"hel\\u0000lo") + b"\n",
        "empty.jsonl": b"",
        "pretty_array.jsonl": json.dumps([json.loads(GOOD), {"instruction": "q", "output": "r"}], indent=2).encode(),
        "non_string.jsonl": b'{"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]}\n'
                            b'[1, 2]\n"text"\n{"messages": null}\n',
        "deep.jsonl": b'{"messages": ' + b"[" * 3000 + b"]" * 3000 + b"}\n",
        "broken_array.json": b'[{"instruction": "a", "output": "b"}, {"instruction": , {"instruction": "c", "output": "d"}',
    }
    for name, data in files.items():
        (d / name).write_bytes(data)
    return files


def test_hostile_inputs_are_rejects_not_tracebacks(tmp_path):
    _hostile_files(tmp_path)
    out = tmp_path / "out"
    proc = run_axpack("prep", *sorted(str(p) for p in tmp_path.glob("*.json*")), "--out", out, "-q", check=False)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    _assert_accounting(summary)
    ins = {Path(k).name: v for k, v in summary["inputs"].items()}
    assert ins["bom_crlf.jsonl"] == {"read": 2, "kept": 2, "duplicates": 0, "rejected": 0}
    assert ins["truncated.jsonl"]["rejected"] == 1 and ins["truncated.jsonl"]["read"] == 2
    assert ins["empty.jsonl"]["read"] == 0 and "empty.jsonl: no records" in proc.stderr
    # its first element repeats bom_crlf.jsonl's first line (read earlier): a cross-file duplicate
    assert ins["pretty_array.jsonl"] == {"read": 2, "kept": 1, "duplicates": 1, "rejected": 0}
    assert ins["non_string.jsonl"] == {"read": 4, "kept": 0, "duplicates": 0, "rejected": 4}
    assert ins["deep.jsonl"]["rejected"] == 1
    # the broken middle element swallows what follows it up to the point the
    # scanner can resync; the first element survives
    assert ins["broken_array.json"]["kept"] == 1 and ins["broken_array.json"]["rejected"] >= 1
    rejects = {(Path(r["file"]).name, r["line"]): r for r in _lines(out / "rejects.jsonl")}
    bad = rejects[("bad_utf8.jsonl", 1)]
    assert "base64" in bad["reason"]
    assert base64.b64decode(bad["raw"]) == (tmp_path / "bad_utf8.jsonl").read_bytes().rstrip(b"\n")
    assert rejects[("nul.jsonl", 1)]["reason"].startswith("invalid-json: NUL byte")
    assert rejects[("nul.jsonl", 2)]["reason"].startswith("nul-char")
    assert rejects[("deep.jsonl", 1)]["reason"].startswith("too-deep")


def test_huge_line_is_rejected_without_loading_it(tmp_path):
    src = tmp_path / "huge.jsonl"
    src.write_bytes(b'{"messages": "' + b"a" * 300_000 + b'"}\n' + GOOD + b"\n")
    summary = prep([str(src)], tmp_path / "out", max_line_bytes=100_000, warn=lambda m: None)
    assert summary["totals"] == {"read": 2, "kept": 1, "duplicates": 0, "rejected": 1}
    (rej,) = _lines(tmp_path / "out" / "rejects.jsonl")
    assert rej["line"] == 1 and rej["reason"].startswith("line-too-long") and len(rej["raw"]) == 4096


def test_warnings_are_capped(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_bytes(b"{oops\n" * 50)
    msgs: list[str] = []
    prep([str(src)], tmp_path / "out", warn=msgs.append)
    assert len(msgs) == 21 and "30 more rejects" in msgs[-1]


# ----------------------------------------------------------------- properties

_piece = st.sampled_from([
    GOOD, GOOD.replace(b"hi", b"hey"), b"{bad", b"", b"   ", b"\xff\xfe", b"\x00",
    b'{"prompt": "p", "chosen": "a", "rejected": "b"}', b'{"instruction": "i", "output": "o"}',
    b'{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}',
    b"[1]", b'{"messages": []}', b"\xef\xbb\xbf" + GOOD, GOOD + b"\r",
])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(_piece, max_size=12), min_size=1, max_size=3), st.booleans())
def test_accounting_and_rerun_identity_on_messy_input(tmp_path_factory, files, trailing_newline):
    d = tmp_path_factory.mktemp("messy")
    paths = []
    nonblank = 0
    for i, pieces in enumerate(files):
        p = d / f"f{i}.jsonl"
        p.write_bytes(b"\n".join(pieces) + (b"\n" if trailing_newline else b""))
        paths.append(str(p))
        nonblank += sum(1 for x in pieces if x.strip().replace(b"\xef\xbb\xbf", b"").rstrip(b"\r").strip())
    out = d / "out"
    summary = prep(paths, out, val_fraction=0.3, warn=lambda m: None)
    _assert_accounting(summary)
    assert summary["totals"]["read"] == nonblank
    written = sum(len(_lines(out / f)) for f in ("sft.jsonl", "dpo.jsonl", "sft.val.jsonl", "dpo.val.jsonl"))
    assert written == summary["totals"]["kept"]
    assert len(_lines(out / "rejects.jsonl")) == summary["totals"]["rejected"]
    assert len(_lines(out / "duplicates.jsonl")) == summary["totals"]["duplicates"]
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    prep(paths, out, val_fraction=0.3, warn=lambda m: None)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first
    # the general path alone writes the very same bytes as with the fast path
    prep(paths, out, val_fraction=0.3, warn=lambda m: None, _fast=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first


def test_unwritable_output_is_one_line(tmp_path):
    (tmp_path / "out" / "sft.jsonl").mkdir(parents=True)  # a folder where the output file must go
    proc = run_axpack("prep", *DEMO, "--out", tmp_path / "out", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().endswith("sft.jsonl: Is a directory; check the path, its permissions and free space")
