"""axpack prep: the contract the demo and the configs rely on.

Real input: data/demo/{sft,dpo}.jsonl (84 SFT lines with 6 exact duplicates
and system prompts; 40 DPO pairs), run through the real console script.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import shutil
from pathlib import Path

import orjson
import pytest
from axpack.datarun import check_strict
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
    # the library returns the summary; the command decides --strict from it
    summary = prep([str(raw)], out, warn=lambda m: None)
    assert summary["totals"]["rejected"] == 1
    with pytest.raises(AxpackError) as err:
        check_strict("prep", summary["totals"]["rejected"], "record(s)", out)
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
        "broken_array.json": b'[{"instruction": "a", "output": "b"}, {"instruction": , '
                             b'{"instruction": "c", "output": "d"}',
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


# ----------------------------------------------------------------- committing the output set


class Killed(BaseException):
    """Stands in for SIGKILL at one file operation: nothing in prep catches it."""


def _visible(folder: Path) -> dict[str, bytes]:
    """The files under final names (hidden ``.NAME.*.tmp`` temps are unfinished by their name)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")}


def _two_runs(tmp_path: Path) -> tuple[Path, Path, dict[str, bytes], dict[str, bytes], Path]:
    """An old finished run (with a val split: 7 files) and the new input
    (no split: 5 files), with both reference outputs."""
    def raw(tag: str) -> bytes:  # SFT, DPO, a duplicate, a reject: every output file gets lines
        sft = [GOOD.replace(b"hi", f"{tag} {i}".encode()) for i in range(30)]
        dpo = [json.dumps({"prompt": f"{tag} p{i}", "chosen": "a", "rejected": "b"}).encode() for i in range(12)]
        return b"\n".join([*sft, *dpo, sft[0], b"{bad " + tag.encode()]) + b"\n"

    old_raw, new_raw = tmp_path / "old.jsonl", tmp_path / "new.jsonl"
    old_raw.write_bytes(raw("old"))
    new_raw.write_bytes(raw("new"))
    prep([str(old_raw)], tmp_path / "old-ref", val_fraction=0.3, warn=lambda m: None)
    prep([str(new_raw)], tmp_path / "new-ref", warn=lambda m: None)
    old, new = _visible(tmp_path / "old-ref"), _visible(tmp_path / "new-ref")
    assert len(old) == 7 and len(new) == 5, (sorted(old), sorted(new))
    assert all(old.values()) and not set(old.values()) & set(new.values())
    return old_raw, new_raw, old, new, tmp_path / "old-ref"


def test_a_crash_at_any_point_of_the_commit_never_leaves_a_mixed_set(tmp_path, monkeypatch):
    """Rerun prep over a finished folder and crash it at every unlink/rename
    of its commit in turn. A folder with summary.json must hold one run's
    complete set; without it, its files must all come from one run (old or
    new, never both); the next run must finish byte-identical to a clean one.
    (The old scheme, renaming file by file with summary.json last, leaves a
    new sft.jsonl beside the old dpo.jsonl and summary.json: it fails here.)"""
    _, new_raw, old, new, old_ref = _two_runs(tmp_path)
    real = {"replace": os.replace, "unlink": os.unlink}
    state = {"ops": 0, "crash_at": -1}

    def faulty(name):
        def op(*args, **kwargs):
            state["ops"] += 1
            if state["ops"] - 1 == state["crash_at"]:
                raise Killed(name)
            return real[name](*args, **kwargs)
        return op

    monkeypatch.setattr(os, "replace", faulty("replace"))
    monkeypatch.setattr(os, "unlink", faulty("unlink"))
    # how many file operations one rerun makes (no crash)
    shutil.copytree(old_ref, tmp_path / "count")
    prep([str(new_raw)], tmp_path / "count", warn=lambda m: None)
    n_ops = state["ops"]
    assert _visible(tmp_path / "count") == new
    assert n_ops >= len(new)  # at least every new file's rename

    seen = set()
    for crash_at in range(n_ops):
        out = tmp_path / f"crash{crash_at}"
        shutil.copytree(old_ref, out)
        state.update(ops=0, crash_at=crash_at)
        with pytest.raises(Killed):
            prep([str(new_raw)], out, warn=lambda m: None)
        state["crash_at"] = -1
        got = _visible(out)
        from_old = all(old.get(n) == b for n, b in got.items())
        from_new = all(new.get(n) == b for n, b in got.items())
        assert from_old or from_new, f"crash at op {crash_at}: old and new files mixed: {sorted(got)}"
        if "summary.json" in got:  # finished-looking: must be one whole set
            assert got in (old, new), f"crash at op {crash_at}: summary.json beside an incomplete set"
        seen.add("old complete" if got == old else "finished" if got == new
                 else ("new partial" if from_new and got else "old partial"))
        prep([str(new_raw)], out, warn=lambda m: None)  # the rerun completes ...
        assert _visible(out) == new  # ... byte-identical to an uninterrupted run
        assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "temps left behind"
    # the crash points covered every phase: before the commit, removing the old set, renaming the new one
    assert {"old complete", "old partial", "new partial"} <= seen, seen


def test_an_error_mid_commit_is_one_line_and_not_finished(tmp_path, monkeypatch):
    """A real error (here ENOSPC) at the second rename: AxpackError naming
    the file, exit 1, and no summary.json beside the partial set."""
    _, new_raw, _, new, old_ref = _two_runs(tmp_path)
    out = tmp_path / "out"
    shutil.copytree(old_ref, out)
    real_replace = os.replace
    calls = []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src), None, str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(AxpackError) as err:
        prep([str(new_raw)], out, warn=lambda m: None)
    assert err.value.exit_code == 1 and "\n" not in err.value.message
    assert err.value.message.startswith(f"{calls[1]}: No space left on device")
    got = _visible(out)
    assert len(got) == 1 and "summary.json" not in got and all(new[n] == b for n, b in got.items())
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # temps removed


def test_an_output_name_taken_by_a_folder_fails_before_any_work(tmp_path, monkeypatch):
    old_raw, _, old, _, old_ref = _two_runs(tmp_path)
    out = tmp_path / "out"
    shutil.copytree(old_ref, out)
    (out / "dpo.val.jsonl").unlink()
    (out / "dpo.val.jsonl").mkdir()
    monkeypatch.setattr("axpack.prep.read_batches", lambda *a, **k: pytest.fail("read input before checking --out"))
    with pytest.raises(AxpackError, match=r"dpo\.val\.jsonl: Is a directory"):
        prep([str(old_raw)], out, warn=lambda m: None)
    assert _visible(out) == {n: b for n, b in old.items() if n != "dpo.val.jsonl"}  # untouched
    assert (out / "dpo.val.jsonl").is_dir()


# ----------------------------------------------------------------- where a record of a JSON array is


def test_array_rejects_name_the_line_and_column_each_element_starts_on(tmp_path):
    """Counted by hand from the bytes below: a BOM + CRLF array, pretty but
    with two elements sharing line 4. Elements alone on their line get only
    the line; the two on line 4 also get element number and character column;
    a parse error's column is the file's, not the element's."""
    src = tmp_path / "a.json"
    src.write_bytes(b"\xef\xbb\xbf[\r\n"                                       # 1
                    b'  {"instruction": "q1", "output": "a1"},\r\n'           # 2  kept
                    b'    {"instruction": , "output": "x"},\r\n'              # 3  parse error at column 21
                    b'  {"messages": 1}, {"instruction": "\xc3\xa9", "output": ""},\r\n'  # 4  cols 3 and 20
                    b'  {"prompt": "p", "chosen": "c", "rejected": "c"}\r\n'  # 5
                    b"]\r\n")
    msgs: list[str] = []
    summary = prep([str(src)], tmp_path / "out", warn=msgs.append)
    assert summary["totals"] == {"read": 5, "kept": 1, "duplicates": 0, "rejected": 4}
    got = [(r["line"], r["reason"]) for r in _lines(tmp_path / "out" / "rejects.jsonl")]
    assert got == [
        (3, "invalid-json: unexpected character, expected a JSON value at line 3 column 21"),
        (4, "bad-shape: messages is number, expected a list of turns (array element 3, column 3)"),
        (4, "empty-content: messages[1] (assistant) is empty (array element 4, column 20)"),
        (5, "chosen-equals-rejected: chosen and rejected answers are the same text"),
    ]
    assert msgs == [f"axpack prep: reject {src}:{line}: {reason}" for line, reason in got]


def test_one_line_array_elements_are_told_apart(tmp_path):
    """json.dump's default layout: everything on line 1, so element and column
    say which record it is; the same records as JSONL get their own lines and
    no note."""
    recs = [{"instruction": "é" * 5, "output": "a"}, {"messages": []}, {"instruction": "b", "output": "b"},
            {"messages": [{"role": "user", "content": "x"}]}]
    one = tmp_path / "one.json"
    one.write_text(json.dumps(recs, ensure_ascii=False), encoding="utf-8")
    text = one.read_text(encoding="utf-8")
    prep([str(one)], tmp_path / "o1", warn=lambda m: None)
    rej = _lines(tmp_path / "o1" / "rejects.jsonl")
    col2, col4 = text.index('{"messages": []}') + 1, text.index('{"messages": [{') + 1
    assert [(r["line"], r["reason"].rsplit(" (", 1)[1]) for r in rej] == [
        (1, f"array element 2, column {col2})"), (1, f"array element 4, column {col4})")]
    assert [text[c - 1:].startswith(r["raw"]) for c, r in zip((col2, col4), rej, strict=True)] == [True, True]
    lines = tmp_path / "lines.jsonl"
    lines.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
    prep([str(lines)], tmp_path / "o2", warn=lambda m: None)
    assert [(r["line"], "(array" in r["reason"]) for r in _lines(tmp_path / "o2" / "rejects.jsonl")] == [
        (2, False), (4, False)]


def test_the_one_reader_reads_every_container_alike(tmp_path):
    """axpack.records.read_records, the reader prep, script and stats share
    (and plan/validate are to use): JSONL with a BOM, CRLF and a blank line,
    a pretty-printed array, a one-line array and one pretty-printed object
    give the same values, each with the line it starts on; a bad record is a
    Record carrying its error (with its line), not an exception or a gap."""
    from axpack.records import read_records

    a = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    b = {"prompt": "q", "chosen": "x", "rejected": "y"}
    pretty = json.dumps([a, b], indent=2)
    starts = [i for i, ln in enumerate(pretty.split("\n"), 1) if ln == "  {"]
    cases = {
        "bom_crlf.jsonl": (b"\xef\xbb\xbf" + orjson.dumps(a) + b"\r\n\r\n" + orjson.dumps(b) + b"\r\n", [1, 3]),
        "pretty.json": (pretty.encode(), starts),
        "one_line.jsonl": (orjson.dumps([a, b]), [1, 1]),
    }
    for name, (data, lines) in cases.items():
        (tmp_path / name).write_bytes(data)
        recs = list(read_records(tmp_path / name))
        assert [(r.line, r.value, r.error) for r in recs] == [(lines[0], a, None), (lines[1], b, None)], name
    assert [r.note for r in read_records(tmp_path / "one_line.jsonl")] == [
        " (array element 1, column 2)", f" (array element 2, column {len(orjson.dumps([a])) + 1})"]
    (tmp_path / "object.json").write_text(json.dumps(a, indent=2))
    assert [(r.line, r.value) for r in read_records(tmp_path / "object.json")] == [(1, a)]
    (tmp_path / "bad.jsonl").write_bytes(orjson.dumps(a) + b"\n{not json\n")
    good, bad = read_records(tmp_path / "bad.jsonl")
    assert (good.value, bad.line, bad.value, bad.raw, bad.error.code) == (a, 2, None, b"{not json", "invalid-json")


def test_crlf_cleaning_is_a_fixed_point(tmp_path):
    """Found by the fuzz soak: "\\r\\r\\n" (a file converted to CRLF twice)
    became "\\r\\n" on the first prep and "\\n" on the second, so prep's own
    output was not a fixed point and a CRLF reached sft.jsonl."""
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"messages": [{"role": "user", "content": "a\r\r\nb\r\nc\rd"},
                                            {"role": "assistant", "content": "x\r\r\r\ny"}]}) + "\n")
    prep([str(src)], tmp_path / "a", warn=lambda m: None)
    (ex,) = _lines(tmp_path / "a" / "sft.jsonl")
    assert [m["content"] for m in ex["messages"]] == ["a\nb\nc\rd", "x\ny"]  # a lone CR is no line end
    prep([str(tmp_path / "a" / "sft.jsonl")], tmp_path / "b", warn=lambda m: None)
    assert (tmp_path / "b" / "sft.jsonl").read_bytes() == (tmp_path / "a" / "sft.jsonl").read_bytes()
