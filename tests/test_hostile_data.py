"""Hostile input files through the real ``axpack prep`` (issue #7, part 1).

The corpus is ``tests/hostile/*.json[l]`` with the expected outcome of each in
``tests/hostile/cases.yaml`` (counted by hand from the files); the 10 MB line
and the 100k-record file are generated into tmp_path here. Every case must
end without a traceback, name each reject on one stderr line
(``FILE:LINE: CODE: ...``), keep each rejected record's raw text in
rejects.jsonl, account for every record (read = kept + duplicates + rejected)
and, under ``--strict``, still write everything and then exit 3.
"""

from __future__ import annotations

import base64
import json
import re
from itertools import pairwise
from pathlib import Path

import orjson
import pytest
import yaml
from axpack.datarun import WARN_CAP
from axpack.prep import prep
from conftest import ROOT, run_axpack

HOSTILE = ROOT / "tests" / "hostile"
CASES = yaml.safe_load((HOSTILE / "cases.yaml").read_text(encoding="utf-8"))
MIB = 1 << 20
OUTPUT_FILES = ("sft.jsonl", "dpo.jsonl", "rejects.jsonl", "duplicates.jsonl", "summary.json")


def _good(i: int) -> str:
    return json.dumps({"messages": [{"role": "user", "content": f"question {i}"},
                                    {"role": "assistant", "content": f"answer {i}"}]})


def gen_huge_line(path: Path) -> None:
    """A 10 MiB valid record, a 10 MiB record cut short, a normal record."""
    big = json.dumps({"messages": [{"role": "user", "content": "summarise this"},
                                   {"role": "assistant", "content": "x" * (10 * MIB)}]})
    cut = '{"messages": [{"role": "user", "content": "' + "y" * (10 * MIB)
    path.write_text(big + "\n" + cut + "\n" + _good(1) + "\n", encoding="utf-8")


def gen_big_100k(path: Path) -> None:
    """100,000 lines: line i % 1000 == 0 is malformed, else line i % 500 == 0
    repeats line i - 1, else a unique good record."""
    lines = []
    for i in range(1, 100_001):
        if i % 1000 == 0:
            lines.append('{"messages": [{"role": "user", "content": "cut ' + str(i))
        elif i % 500 == 0:
            lines.append(lines[-1])
        else:
            lines.append(_good(i))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


GENERATORS = {"huge_line": gen_huge_line, "big_100k": gen_big_100k}


def _expected_rejects(case: dict) -> list[tuple[int, str]]:
    if case["rejects"] == "generated":
        assert case["generate"] == "big_100k"
        return [(i, "invalid-json") for i in range(1000, 100_001, 1000)]
    return [(int(line), code) for line, code in case["rejects"]]


def _source(case: dict, tmp_path: Path) -> str:
    """The input path as passed to prep (repo-relative for the committed corpus)."""
    if case.get("generate"):
        path = tmp_path / case["file"]
        GENERATORS[case["generate"]](path)
        return str(path)
    return str((HOSTILE / case["file"]).relative_to(ROOT))


def _lines(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def _expected_raw(data: bytes, line: int) -> str | None:
    """The raw text a JSONL record starting at ``line`` must be kept with
    (BOM and line end removed; base64 when not UTF-8); None for JSON arrays."""
    if data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
        return None
    raw = data.split(b"\n")[line - 1].rstrip(b"\r")
    if line == 1:
        raw = raw.removeprefix(b"\xef\xbb\xbf")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii")


def _check_example(ex: dict) -> None:
    """A written example has the shape Axolotl's chat_template loaders read."""
    if "messages" in ex:
        roles = [t["role"] for t in ex["messages"] if t["role"] != "system"]
        assert roles and roles[0] == "user" and roles[-1] == "assistant", ex
        assert all(a != b for a, b in pairwise(roles)), ex
    else:
        assert set(ex) == {"prompt", "chosen", "rejected"}, ex
        assert ex["chosen"][0]["content"].strip() != ex["rejected"][0]["content"].strip()
    for turns in ex.values():
        for t in turns:
            assert isinstance(t["content"], str) and t["content"].strip() and "\x00" not in t["content"]


def test_every_corpus_file_has_an_expectation():
    files = {p.name for p in HOSTILE.iterdir() if p.suffix in (".json", ".jsonl")}
    listed = {c["file"] for c in CASES if not c.get("generate")}
    assert files == listed


@pytest.mark.parametrize("case", CASES, ids=[c["file"] for c in CASES])
def test_hostile_case(case, tmp_path, monkeypatch):
    src = _source(case, tmp_path)
    data = (ROOT / src).read_bytes()
    out = tmp_path / "out"
    proc = run_axpack("prep", src, "--out", out, "--strict", "-q", check=False)
    text = proc.stdout + proc.stderr
    assert "Traceback" not in text, text[-3000:]
    expected = _expected_rejects(case)
    assert proc.returncode == (3 if expected else 0), text[-3000:]
    if expected:
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("axpack: error: prep --strict:") and f"{len(expected)} record(s)" in last

    # accounting: every record read is kept, a duplicate or a reject
    summary = json.loads((out / "summary.json").read_text())
    counts = summary["inputs"].get(src, {"read": 0, "kept": 0, "duplicates": 0, "rejected": 0})
    assert counts == {"read": case["records"], "kept": case["kept"],
                      "duplicates": case.get("duplicates", 0), "rejected": len(expected)}
    assert counts["read"] == counts["kept"] + counts["duplicates"] + counts["rejected"]
    assert summary["totals"] == counts

    # the outputs hold exactly that many lines, each a well-formed example
    examples = _lines(out / "sft.jsonl") + _lines(out / "dpo.jsonl")
    assert len(examples) == case["kept"]
    for ex in examples:
        _check_example(ex)
    assert len(_lines(out / "duplicates.jsonl")) == case.get("duplicates", 0)
    written = (out / "sft.jsonl").read_text() + (out / "dpo.jsonl").read_text()
    for needle in case.get("contains", []):
        assert needle in written, needle

    # each reject: one rejects.jsonl entry with its raw text, one stderr line
    rejects = _lines(out / "rejects.jsonl")
    assert [(r["line"], r["reason"].split(":")[0]) for r in rejects] == expected
    for r in rejects:
        assert r["file"] == src and r["reason"].split(": ", 1)[1].strip()
        want = _expected_raw(data, r["line"])
        if want is not None:
            assert r["raw"] == want, (r["line"], r["raw"][:200])
        else:  # array element: its text is in the file, starting on that line (at the column named when
            # other elements start on that line too)
            first = r["raw"].splitlines()[0].strip()
            assert first and r["raw"] in data.decode("utf-8")
            text_line = data.decode("utf-8").splitlines()[r["line"] - 1]
            at = re.search(r" \(array element (\d+), column (\d+)\)$", r["reason"])
            if at:
                assert text_line[int(at.group(2)) - 1:].startswith(first), (r, text_line)
            else:
                assert text_line.strip().startswith(first)
    err_lines = proc.stderr.splitlines()
    for i, (line, code) in enumerate(expected):
        hits = [m for m in err_lines if m.startswith(f"axpack prep: reject {src}:{line}: {code}: ")]
        assert len(hits) == (1 if i < WARN_CAP else 0), (line, code, proc.stderr[-2000:])
    if len(expected) > WARN_CAP:
        assert f"and {len(expected) - WARN_CAP} more rejects (all in {out / 'rejects.jsonl'})" in proc.stderr
    if case.get("warn"):
        assert any(case["warn"] in m and src in m for m in err_lines), proc.stderr

    # without --strict: the same files, byte for byte (and a rerun changes nothing)
    before = {n: (out / n).read_bytes() for n in OUTPUT_FILES}
    monkeypatch.chdir(ROOT)
    again = prep([src], out, warn=lambda m: None)
    assert again["totals"] == counts
    assert {n: (out / n).read_bytes() for n in OUTPUT_FILES} == before
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]

    if case.get("generate") == "huge_line":  # the 10 MiB record arrived whole
        (kept_big, _) = _lines(out / "sft.jsonl")
        assert kept_big["messages"][1]["content"] == "x" * (10 * MIB)


def test_whole_corpus_in_one_run(tmp_path):
    """All committed files in one strict run: the run continues past every
    reject, accounts per file, and exits 3 at the end. Records repeated across
    files become cross-file duplicates, so per file kept + duplicates is fixed
    and the rejects are exactly the per-file ones."""
    cases = [c for c in CASES if not c.get("generate")]
    srcs = [str((HOSTILE / c["file"]).relative_to(ROOT)) for c in cases]
    out = tmp_path / "out"
    proc = run_axpack("prep", *srcs, "--out", out, "--strict", "-q", check=False)
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 3, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    total_rejects = 0
    for case, src in zip(cases, srcs):
        c = summary["inputs"].get(src, {"read": 0, "kept": 0, "duplicates": 0, "rejected": 0})
        n_rej = len(_expected_rejects(case))
        total_rejects += n_rej
        assert c["read"] == case["records"] and c["rejected"] == n_rej, (src, c)
        assert c["kept"] + c["duplicates"] == case["kept"] + case.get("duplicates", 0), (src, c)
    t = summary["totals"]
    assert t["read"] == sum(c["records"] for c in cases)
    assert t["read"] == t["kept"] + t["duplicates"] + t["rejected"] and t["rejected"] == total_rejects
    assert len(_lines(out / "rejects.jsonl")) == total_rejects
    assert len(_lines(out / "duplicates.jsonl")) == t["duplicates"]
    assert len(_lines(out / "sft.jsonl")) + len(_lines(out / "dpo.jsonl")) == t["kept"]
    shown = [m for m in proc.stderr.splitlines() if m.startswith("axpack prep: reject ")]
    assert len(shown) == min(WARN_CAP, total_rejects)
    assert proc.stderr.strip().splitlines()[-1] == (
        f"axpack: error: prep --strict: {total_rejects} record(s) rejected; see {out / 'rejects.jsonl'}")


def test_unreadable_inputs_are_one_line_exit_1(tmp_path):
    """A folder with no JSON files, a missing glob, an output path that is a file."""
    (tmp_path / "nothing").mkdir()
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("x")
    good = str((HOSTILE / "bom.jsonl").relative_to(ROOT))
    for code, args in ((1, [str(tmp_path / "nothing"), "--out", tmp_path / "o1"]),
                       (1, [str(tmp_path / "*.nope"), "--out", tmp_path / "o2"]),
                       (2, [good, "--out", blocker]),  # click's own check: a usage error
                       (1, [good, "--out", blocker / "sub"])):
        proc = run_axpack("prep", *args, check=False)
        assert proc.returncode == code, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
        if code == 1:
            lines = proc.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("axpack: error: "), proc.stderr
