"""axpack script: speaker-tagged dialogue -> sliding-window continuation examples."""

from __future__ import annotations

import base64
import itertools
import json
import math
import re
from pathlib import Path

import orjson
import pytest
from axpack.errors import AxpackError
from axpack.script import DEFAULT_SYSTEM, script
from conftest import ROOT, SHARED_DATA, run_axpack

TINY = """SCENE 1

A:
one

B:
two
two-b

A:
three

A:
three-more

C:
four

B:
five

SCENE 2

A:
six

B:
seven
"""


def examples(out: Path) -> list[list[dict]]:
    return [orjson.loads(x)["messages"] for x in (out / "sft.jsonl").read_bytes().splitlines()]


def rejects(out: Path) -> list[dict]:
    return [orjson.loads(x) for x in (out / "rejects.jsonl").read_bytes().splitlines()]


def test_tiny_golden(tmp_path):
    src = tmp_path / "tiny.txt"
    src.write_text(TINY)
    s = script([str(src)], tmp_path / "o", window=4, context=2, min_completion=1, stride=2)
    # scene 1: 6 speeches -> 5 turns (A's two speeches merge); scene 2: 2 turns
    assert s["totals"]["speeches"] == 8 and s["totals"]["turns"] == 7 and s["totals"]["scenes"] == 2
    assert examples(tmp_path / "o") == [
        [{"role": "system", "content": DEFAULT_SYSTEM},
         {"role": "user", "content": "[A] one\n[B] two\ntwo-b"},
         {"role": "assistant", "content": "[A] three\nthree-more\n[C] four"}],
        [{"role": "system", "content": DEFAULT_SYSTEM},
         {"role": "user", "content": "[A] three\nthree-more\n[C] four"},
         {"role": "assistant", "content": "[B] five"}],
    ]
    # scene 2 has 2 turns: with context 2 no completion is possible -> no window, nothing crosses scenes
    s = script([str(src)], tmp_path / "o", window=4, context=2, min_completion=2, stride=2)
    assert (s["totals"]["windows"], s["totals"]["dropped"]) == (1, 1)


def test_inline_speakers(tmp_path):
    src = tmp_path / "inline.txt"
    src.write_text("ALICE: Hello there.\nBOB: Hi. Listen to this:\nthe list goes on.\nALICE: Really?\n")
    s = script([str(src)], tmp_path / "o", window=4, context=1, min_completion=1, stride=4)
    assert s["totals"]["turns"] == 3
    (ex,) = examples(tmp_path / "o")
    assert ex[1]["content"] == "[ALICE] Hello there."
    assert ex[2]["content"] == "[BOB] Hi. Listen to this:\nthe list goes on.\n[ALICE] Really?"


def test_block_speech_lines_with_colons_stay_speech(tmp_path):
    src = tmp_path / "block.txt"
    src.write_text("CAROL:\nMy speech ends with a colon:\nStill Carol: yes.\n\nDAN:\nFine.\n")
    script([str(src)], tmp_path / "o", window=2, context=1, min_completion=1, stride=1)
    (ex,) = examples(tmp_path / "o")
    assert ex[1]["content"] == "[CAROL] My speech ends with a colon:\nStill Carol: yes."
    assert ex[2]["content"] == "[DAN] Fine."


CSV = "episode,scene,speaker,line\n1,1,Ann,Hi\n1,1,Ben,Hello\n1,2,Ann,Again\n2,1,Ann,New episode\n" \
      "2,1,Ann,same speaker continues\n2,1,,no speaker\n"


def test_csv_and_jsonl_respect_episode_and_scene(tmp_path):
    csv_path = tmp_path / "d.csv"
    csv_path.write_text(CSV)
    rows = [dict(zip(["episode", "scene", "speaker", "line"], r.split(","), strict=True))
            for r in CSV.splitlines()[1:]]
    jsonl_path = tmp_path / "d.jsonl"
    jsonl_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for path in (csv_path, jsonl_path):
        out = tmp_path / path.suffix[1:]
        s = script([str(path)], out, window=3, context=1, min_completion=1, stride=1)
        st = s["inputs"][str(path)]
        assert (st["turns"], st["scenes"], st["rejected"], st["windows"]) == (4, 3, 1, 1)
        assert st["reject_reasons"] == {"no-speaker": 1}
        # the row without a speaker is a reject naming its line (CSV: header is line 1)
        (rej,) = rejects(out)
        assert (rej["line"], rej["reason"].split(":")[0]) == (7 if path.suffix == ".csv" else 6, "no-speaker")
        assert "no speaker" in rej["raw"]
        (ex,) = examples(out)
        assert (ex[1]["content"], ex[2]["content"]) == ("[Ann] Hi", "[Ben] Hello")


def test_sample_script_windows_stay_inside_scenes(tmp_path):
    out = tmp_path / "o"
    proc = run_axpack("script", "data/script/", "--out", out)
    assert "examples" in proc.stdout
    scenes = []
    for f in sorted((ROOT / "data" / "script").glob("*.txt")):
        scenes += re.split(r"^SCENE \d+$", f.read_text(), flags=re.MULTILINE)[1:]
    assert len(scenes) == 5  # lighthouse.txt 3, night-ferry.txt 2
    exs = examples(out)
    assert exs
    for ex in exs:
        turns = (ex[1]["content"] + "\n" + ex[2]["content"]).split("\n[")
        assert ex[1]["content"].count("\n[") + 1 == 5  # --context 5
        assert ex[2]["content"].count("\n[") + 1 >= 10  # --min-completion 10
        assert len(turns) <= 35
        # one scene holds every speech of the window
        homes = set(range(len(scenes)))
        for t in turns:
            homes &= {i for i, sc in enumerate(scenes) if t.split("] ", 1)[1].split("\n")[0] in sc}
        assert len(homes) == 1, ex
    first = (out / "sft.jsonl").read_bytes()
    run_axpack("script", "data/script/", "--out", out)
    assert (out / "sft.jsonl").read_bytes() == first


def test_tinyshakespeare(tmp_path):
    src = SHARED_DATA / "tinyshakespeare" / "input.txt"
    if not src.is_file():
        pytest.skip(f"{src} absent: third-party test data is only beside CI/dev clones")
    s = script([str(src)], tmp_path / "o")
    st = s["inputs"][str(src)]
    # independent count: blank-line-separated blocks opening with "NAME:" and a non-empty speech
    lines = src.read_text().splitlines()
    starts = [0] + [i + 1 for i, x in enumerate(lines[:-1]) if not x.strip() and lines[i + 1].strip()]
    speakers = []
    for k, s0 in enumerate(starts):
        end = starts[k + 1] if k + 1 < len(starts) else len(lines)
        if lines[s0].endswith(":") and any(x.strip() for x in lines[s0 + 1:end]):
            speakers.append(lines[s0][:-1])
    turns = 1 + sum(1 for a, b in itertools.pairwise(speakers) if a != b)
    assert st["speeches"] == len(speakers) == 7097
    assert st["turns"] == turns
    assert st["scenes"] == 1 and st["unattributed"] == 0
    starts_w = range(0, turns - 5, 5)
    kept = sum(1 for b in starts_w if min(35, turns - b) - 5 >= 10)
    assert (st["windows"], st["dropped"]) == (kept, len(starts_w) - kept)
    exs = examples(tmp_path / "o")
    assert len(exs) == kept
    assert exs[0][1]["content"].startswith("[First Citizen] Before we proceed any further, hear me speak.\n[All] ")


def test_errors(tmp_path):
    src = tmp_path / "s.txt"
    src.write_text(TINY)
    with pytest.raises(AxpackError, match="no window could ever be kept"):
        script([str(src)], tmp_path / "o", window=5, context=3, min_completion=3)
    proc = run_axpack("script", src, "--out", tmp_path / "o", check=False)  # defaults: 7 turns < 15
    assert proc.returncode == 1 and "no window has 5 context + 10 completion turns" in proc.stderr
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"A:\nok\n\nB:\n\xff\n")
    proc = run_axpack("script", bad, "--out", tmp_path / "o", check=False)
    # line 5 is a reject (B is left with no speech), then too few turns for a window
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"axpack script: reject {bad}:5: invalid-utf8: not valid UTF-8" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("axpack: error: script: no window has")
    proc = run_axpack("script", src, "--out", tmp_path / "o", "--stride", "0", check=False)
    assert proc.returncode == 2
    nocols = tmp_path / "x.csv"
    nocols.write_text("who,what\na,b\n")
    with pytest.raises(AxpackError, match="CSV header needs a speaker column"):
        script([str(nocols)], tmp_path / "o")


# ----------------------------------------------------------------- bad input: rejects, not aborts

ROWS_GOOD = [{"speaker": "ANN", "text": "one"}, {"speaker": "BO", "text": "two"},
             {"speaker": "ANN", "text": "three"}, {"speaker": "BO", "text": "four"}]


def _rows_file(path: Path) -> Path:
    """JSONL rows with, in between, each kind of unusable row (line numbers in the comments)."""
    lines = [
        json.dumps(ROWS_GOOD[0]).encode(),                        # 1
        b'{"speaker": "ANN", "text": ',                           # 2 invalid JSON (cut)
        json.dumps(ROWS_GOOD[1]).encode(),                        # 3
        b'{"speaker": "BO", "text": "caf\xe9"}',                  # 4 Latin-1, not UTF-8
        b"",                                                      # 5 blank: no row
        b'["ANN", "not an object"]',                              # 6
        json.dumps({"speaker": "", "text": "nobody"}).encode(),   # 7
        json.dumps({"speaker": "BO", "text": None}).encode(),     # 8
        json.dumps(ROWS_GOOD[2]).encode() + b"\r",                # 9 CRLF is fine
        json.dumps(ROWS_GOOD[3]).encode(),                        # 10
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


EXPECTED_REJECTS = [(2, "invalid-json"), (4, "invalid-utf8"), (6, "not-object"), (7, "no-speaker"), (8, "no-text")]


def test_bad_rows_are_rejects_and_the_run_goes_on(tmp_path):
    src = _rows_file(tmp_path / "rows.jsonl")
    out = tmp_path / "o"
    proc = run_axpack("script", src, "--out", out, "--window", "4", "--context", "2", "--min-completion", "1",
                      "--stride", "4", check=False)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    # one stderr line per reject, naming file:line and the reason
    shown = [m for m in proc.stderr.splitlines() if m.startswith("axpack script: reject ")]
    assert [m.split(": ")[1].rsplit(":", 1)[1] + " " + m.split(": ")[2] for m in shown] == [
        f"{line} {code}" for line, code in EXPECTED_REJECTS]
    assert all(f"reject {src}:" in m for m in shown)
    # the rejects file: file, line, reason and the raw text (base64 when not UTF-8)
    rej = rejects(out)
    assert [(r["line"], r["reason"].split(":")[0]) for r in rej] == EXPECTED_REJECTS
    raw_lines = src.read_bytes().split(b"\n")
    for r in rej:
        want = raw_lines[r["line"] - 1]
        assert r["file"] == str(src)
        assert r["raw"] == (base64.b64encode(want).decode() if r["reason"].startswith("invalid-utf8")
                            else want.decode())
    # accounting: every row is a speech or a reject; the good rows still make the example
    summary = json.loads((out / "summary.json").read_text())
    st = summary["inputs"][str(src)]
    assert (st["lines"], st["speeches"], st["rejected"]) == (9, 4, 5)
    assert st["lines"] == st["speeches"] + st["rejected"] and summary["totals"]["rejected"] == 5
    assert summary["reject_reasons"] == {code: 1 for _, code in EXPECTED_REJECTS}
    assert examples(out) == [[{"role": "system", "content": DEFAULT_SYSTEM},
                              {"role": "user", "content": "[ANN] one\n[BO] two"},
                              {"role": "assistant", "content": "[ANN] three\n[BO] four"}]]
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(first) == {"sft.jsonl", "rejects.jsonl", "summary.json"}
    # --strict: the same files, then exit 3
    proc = run_axpack("script", src, "--out", out, "--window", "4", "--context", "2", "--min-completion", "1",
                      "--stride", "4", "--strict", check=False)
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"axpack: error: script --strict: 5 row(s)/line(s) rejected; see {out / 'rejects.jsonl'}")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first


def test_csv_rows_report_their_first_line(tmp_path):
    """A quoted field spanning lines, a blank line, a field over csv's size
    limit and a row with bytes that are not UTF-8: each reject names the line
    the row starts on, and the rows around it are used."""
    src = tmp_path / "d.csv"
    src.write_bytes(b"speaker,line\n"                    # 1
                    b'ANN,"two\nlines"\n'                  # 2-3
                    b"\n"                                 # 4 blank
                    b"BO," + b"x" * 200_000 + b"\n"        # 5 over the field limit
                    b"CY,caf\xe9\n"                        # 6 Latin-1
                    b",stage direction\n"                 # 7 no speaker
                    b"BO,fine\n")                         # 8
    s = script([str(src)], tmp_path / "o", window=2, context=1, min_completion=1, stride=1, warn=lambda m: None)
    st = s["inputs"][str(src)]
    assert (st["lines"], st["speeches"], st["rejected"]) == (5, 2, 3)
    assert [(r["line"], r["reason"].split(":")[0]) for r in rejects(tmp_path / "o")] == [
        (5, "invalid-csv"), (6, "invalid-utf8"), (7, "no-speaker")]
    (ex,) = examples(tmp_path / "o")
    assert (ex[1]["content"], ex[2]["content"]) == ("[ANN] two\nlines", "[BO] fine")


def test_text_line_not_utf8_is_a_reject_and_the_speech_reads_on(tmp_path):
    src = tmp_path / "play.txt"
    src.write_bytes(b"\xef\xbb\xbfANN:\r\nfirst\r\nbad \xff byte\r\nlast\r\n\r\nBO:\r\nreply\r\n")
    msgs: list[str] = []
    s = script([str(src)], tmp_path / "o", window=2, context=1, min_completion=1, stride=1, warn=msgs.append)
    assert s["inputs"][str(src)]["rejected"] == 1 and s["inputs"][str(src)]["lines"] == 7
    (r,) = rejects(tmp_path / "o")
    assert r["line"] == 3 and r["reason"].startswith("invalid-utf8: not valid UTF-8 at byte 5 of the line")
    assert base64.b64decode(r["raw"]) == b"bad \xff byte"
    assert msgs == [f"axpack script: reject {src}:3: {r['reason']}"]
    (ex,) = examples(tmp_path / "o")
    assert (ex[1]["content"], ex[2]["content"]) == ("[ANN] first\nlast", "[BO] reply")


def test_json_array_rows_report_the_line_each_row_starts_on(tmp_path):
    src = tmp_path / "rows.json"
    rows = [ROWS_GOOD[0], {"speaker": "BO"}, ROWS_GOOD[1], 7]
    src.write_text(json.dumps(rows, indent=2) + "\n")
    text_lines = src.read_text().splitlines()
    s = script([str(src)], tmp_path / "o", window=2, context=1, min_completion=1, stride=1, warn=lambda m: None)
    assert s["inputs"][str(src)]["lines"] == 4 and s["inputs"][str(src)]["rejected"] == 2
    got = [(r["line"], r["reason"].split(":")[0]) for r in rejects(tmp_path / "o")]
    # counted by hand from json.dumps(indent=2): [ / row 1 on lines 2-5 / row 2 on 6-8 / row 3 on 9-12 / 7 on 13
    assert got == [(6, "no-text"), (13, "not-object")]
    assert text_lines[5] == "  {" and text_lines[12] == "  7"


def test_out_that_cannot_be_a_folder_is_one_line(tmp_path):
    src = tmp_path / "s.txt"
    src.write_text(TINY)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for args, code in (([blocker / "sub"], 1), ([blocker], 2)):  # under a file / a file (click: usage)
        proc = run_axpack("script", src, "--out", *args, "--window", "4", "--context", "2", "--min-completion",
                          "1", "--stride", "2", check=False)
        assert proc.returncode == code and "Traceback" not in proc.stderr, proc.stderr
        if code == 1:
            (line,) = proc.stderr.strip().splitlines()
            assert line.startswith(f"axpack: error: {blocker / 'sub'}: cannot create the output folder")
    assert blocker.read_text() == "x"


def test_rerun_replaces_the_whole_set(tmp_path):
    """A clean rerun leaves no stale rejects from the run before, and is byte-identical."""
    bad = _rows_file(tmp_path / "rows.jsonl")
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps(r) + "\n" for r in ROWS_GOOD))
    out = tmp_path / "o"
    kw = {"window": 4, "context": 2, "min_completion": 1, "stride": 4, "warn": lambda m: None}
    script([str(bad)], out, **kw)
    assert rejects(out)
    script([str(good)], out, **kw)
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert first["rejects.jsonl"] == b"" and set(first) == {"sft.jsonl", "rejects.jsonl", "summary.json"}
    script([str(good)], out, **kw)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first


def test_one_line_json_array_rows_name_element_and_column(tmp_path):
    src = tmp_path / "rows.json"
    rows = [ROWS_GOOD[0], {"speaker": "BO"}, ROWS_GOOD[1], 7]
    src.write_text(json.dumps(rows), encoding="utf-8")
    text = src.read_text(encoding="utf-8")
    script([str(src)], tmp_path / "o", window=2, context=1, min_completion=1, stride=1, warn=lambda m: None)
    got = [(r["line"], r["reason"]) for r in rejects(tmp_path / "o")]
    col2, col4 = text.index('{"speaker": "BO"}') + 1, text.rindex("7") + 1
    assert [(line, reason.rsplit(" (", 1)[1]) for line, reason in got] == [
        (1, f"array element 2, column {col2})"), (1, f"array element 4, column {col4})")]


# ---- character-name filtering and the positional validation split ---------------------
def _scene_script(n_turns: int, extra: dict[int, str] | None = None) -> str:
    """One scene of n_turns alternating ANN/BEN turns; extra {turn index: speaker} swaps in a one-off speaker."""
    lines = ["SCENE 1", ""]
    for i in range(n_turns):
        who = (extra or {}).get(i, "ANN" if i % 2 == 0 else "BEN")
        lines += [f"{who}:", f"line {i}", ""]
    return "\n".join(lines)


def test_character_filter_counts_every_speech_it_leaves_out(tmp_path):
    src = tmp_path / "s.txt"
    src.write_text(_scene_script(12, {3: "CROWD", 7: "SIGN"}))
    kw = {"window": 4, "context": 1, "min_completion": 1, "stride": 1, "warn": lambda m: None}
    s = script([str(src)], tmp_path / "o", min_speaker_lines=2, **kw)
    assert s["speakers_filtered"] == {"CROWD": 1, "SIGN": 1}
    st = s["inputs"][str(src)]
    assert st["filtered"] == 2 and st["speeches"] == 12
    text = (tmp_path / "o" / "sft.jsonl").read_text()
    assert "CROWD" not in text and "line 3" not in text and "line 4" in text
    cast = tmp_path / "cast.txt"
    cast.write_text("# the cast\nann\n  Ben  \n")
    from axpack.script import read_cast

    s2 = script([str(src)], tmp_path / "o2", cast=read_cast(cast), **kw)
    assert s2["speakers_filtered"] == {"CROWD": 1, "SIGN": 1} and s2["totals"]["filtered"] == 2
    s3 = script([str(src)], tmp_path / "o3", **kw)  # no filter: nothing left out
    assert s3["totals"]["filtered"] == 0 and s3["speakers_filtered"] == {}
    proc = run_axpack("script", src, "--out", tmp_path / "o4", "--min-speaker-lines", "2", "--window", "4",
                      "--context", "1", "--min-completion", "1", "--stride", "1")
    assert "2 speeches by 2 speaker(s) were left out by the character filter: CROWD (1), SIGN (1)" in proc.stderr
    empty = tmp_path / "empty-cast.txt"
    empty.write_text("# nobody\n")
    proc = run_axpack("script", src, "--out", tmp_path / "o5", "--cast", empty, check=False)
    assert proc.returncode == 1 and "--cast" in proc.stderr and "Traceback" not in proc.stderr


def test_validation_windows_are_the_last_of_each_script_and_share_no_turn_with_training(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(_scene_script(40))
    b.write_text(_scene_script(30))
    s = script([str(a), str(b)], tmp_path / "o", window=8, context=2, min_completion=2, stride=2,
               val_fraction=0.2, warn=lambda m: None)
    train = [json.loads(ln) for ln in (tmp_path / "o" / "sft.jsonl").read_text().splitlines()]
    val = [json.loads(ln) for ln in (tmp_path / "o" / "val.jsonl").read_text().splitlines()]
    for f in (a, b):
        st = s["inputs"][str(f)]
        total = st["windows"] + st["val_windows"] + st["overlap_dropped"]
        assert st["val_windows"] == math.ceil(0.2 * total) and st["overlap_dropped"] > 0

    def turns(ex):  # each turn line is "[SPEAKER] line N": unique within a file
        return set((ex["messages"][1]["content"] + "\n" + ex["messages"][2]["content"]).splitlines())

    # the two files share turn texts ("line 3"), so compare within a file: val windows come last
    assert len(val) == s["totals"]["val_windows"] and len(train) == s["totals"]["windows"]
    first_val_line = min(int(t.split()[-1]) for t in turns(val[0]))
    assert all(int(t.split()[-1]) < first_val_line for t in turns(train[0]))
    a_train = train[: s["inputs"][str(a)]["windows"]]
    a_val = val[: s["inputs"][str(a)]["val_windows"]]
    assert not set().union(*map(turns, a_train)) & set().union(*map(turns, a_val))
    assert s["settings"]["val_fraction"] == 0.2
    # without --val-fraction no val.jsonl, and a stale one from an earlier run is removed
    script([str(a)], tmp_path / "o", window=8, context=2, min_completion=2, stride=2, warn=lambda m: None)
    assert not (tmp_path / "o" / "val.jsonl").exists()
