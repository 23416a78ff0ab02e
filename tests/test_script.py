"""axpack script: speaker-tagged dialogue -> sliding-window continuation examples."""

from __future__ import annotations

import itertools
import json
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
        assert (st["turns"], st["scenes"], st["skipped_rows"], st["windows"]) == (4, 3, 1, 1)
        assert st["skipped_reasons"] == {"no speaker": 1}
        (ex,) = examples(out)
        assert (ex[1]["content"], ex[2]["content"]) == ("[Ann] Hi", "[Ben] Hello")


def test_sample_script_windows_stay_inside_scenes(tmp_path):
    out = tmp_path / "o"
    proc = run_axpack("script", "data/script/", "--out", out)
    assert "examples" in proc.stdout
    text = (ROOT / "data" / "script" / "lighthouse.txt").read_text()
    scenes = re.split(r"^SCENE \d+$", text, flags=re.MULTILINE)[1:]
    assert len(scenes) == 3
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
    assert proc.returncode == 1 and "bad.txt:5: not valid UTF-8" in proc.stderr
    proc = run_axpack("script", src, "--out", tmp_path / "o", "--stride", "0", check=False)
    assert proc.returncode == 2
    nocols = tmp_path / "x.csv"
    nocols.write_text("who,what\na,b\n")
    with pytest.raises(AxpackError, match="CSV header needs a speaker column"):
        script([str(nocols)], tmp_path / "o")
