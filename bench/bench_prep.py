"""Benchmark: ``axpack prep`` against plain orjson load+dump of the same file.

    python bench/bench_prep.py [--n 200000] [--repeat 3] [--workdir .cache/bench-prep]
                               [--inputs messages,mixed,sharegpt]

Generates (once, deterministically, seed 0) a JSONL file of N conversations in
the OpenAI ``messages`` shape: 1-3 user/assistant exchanges, every 10th with a
system prompt, about 5% exact repeats, contents 40-400 characters. From the
same conversations it derives (also once)

- ``mixed``: each record as ShareGPT (``conversations`` with
  ``from``/``value``), Alpaca (``instruction``/``input``/``output``, earlier
  exchanges as ``history``, the system prompt as ``system``) or DPO
  (``prompt`` turns, ``chosen`` = the last answer, ``rejected`` = another
  record's answer), about one third each (picked by content, so a repeated
  line stays a repeat), in one file: mostly prep's general path;
- ``sharegpt``: every record as ShareGPT.

For each input it times

- the bound: ``for line in file: out.write(orjson.dumps(orjson.loads(line)))``
  (read, parse, serialise, write: the least any converter must do), and
- ``axpack.prep.prep`` on the same file (no tokenizer; ``--system strip``),

best of ``--repeat`` runs each (CPU time), and prints records/s for both and
the ratio prep / bound per input (issue #3 goal: >= 0.5, measured on
``messages``). Wall-clock on a shared machine is noisy: compare ratios from
the same run, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from axpack.prep import prep

WORDS = [
    *[
        "the",
        "model",
        "learns",
        "to",
        "answer",
        "short",
        "questions",
        "about",
        "data",
        "training",
        "loss",
        "tokens",
    ],
    *[
        "batch",
        "adapter",
        "rank",
        "alpha",
        "merge",
        "quantize",
        "server",
        "prompt",
        "reply",
        "kind",
        "clear",
        "fast",
    ],
    *[
        "slow",
        "river",
        "mountain",
        "city",
        "station",
        "library",
        "window",
        "garden",
        "coffee",
        "morning",
    ],
]


def _text(rng: random.Random) -> str:
    n = rng.randint(8, 70)
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def generate(path: Path, n: int, seed: int = 0) -> None:
    """Write ``n`` conversations (JSONL) to ``path`` (deterministic for a seed)."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    recent: list[bytes] = []
    with open(path, "wb") as fh:
        for i in range(n):
            if recent and rng.random() < 0.05:
                fh.write(rng.choice(recent))
                continue
            msgs = []
            if i % 10 == 0:
                msgs.append(
                    {"role": "system", "content": "You are a helpful assistant."}
                )
            for _ in range(rng.randint(1, 3)):
                msgs.append({"role": "user", "content": _text(rng)})
                msgs.append({"role": "assistant", "content": _text(rng)})
            line = orjson.dumps({"messages": msgs}) + b"\n"
            fh.write(line)
            recent = (recent + [line])[-100:]


SHAREGPT_NAMES = {"system": "system", "user": "human", "assistant": "gpt"}


def _sharegpt(msgs: list[dict]) -> dict:
    return {
        "conversations": [
            {"from": SHAREGPT_NAMES[m["role"]], "value": m["content"]} for m in msgs
        ]
    }


def _alpaca(msgs: list[dict]) -> dict:
    rec: dict = {}
    if msgs[0]["role"] == "system":
        rec["system"], msgs = msgs[0]["content"], msgs[1:]
    pairs = [
        [msgs[i]["content"], msgs[i + 1]["content"]] for i in range(0, len(msgs), 2)
    ]
    rec.update(instruction=pairs[-1][0], input="", output=pairs[-1][1])
    if len(pairs) > 1:
        rec["history"] = pairs[:-1]
    return rec


def _dpo(msgs: list[dict], other: str) -> dict:
    return {"prompt": msgs[:-1], "chosen": msgs[-1]["content"], "rejected": other}


def derive(src: Path, dst: Path, shape: str) -> None:
    """Rewrite the ``messages`` file ``src`` as ``shape`` (``mixed`` or
    ``sharegpt``, see the module docstring) into ``dst``; repeats stay repeats."""
    lines = src.read_bytes().splitlines()
    with open(dst, "wb") as fh:
        for line in lines:
            msgs = orjson.loads(line)["messages"]
            # the shape follows the content, so a repeated line stays a repeat
            k = int.from_bytes(line[-8:], "big") % 3 if shape == "mixed" else 0
            if k == 0:
                rec = _sharegpt(msgs)
            elif k == 1:
                rec = _alpaca(msgs)
            else:
                pick = int.from_bytes(line[-16:-8], "big") % len(lines)
                other = orjson.loads(lines[pick])["messages"]
                rec = _dpo(msgs, other[-1]["content"] + " (other)")
            fh.write(orjson.dumps(rec) + b"\n")


def bound(src: Path, dst: Path) -> int:
    """Plain orjson load + dump, line by line; returns records."""
    n = 0
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        for line in fin:
            fout.write(orjson.dumps(orjson.loads(line)) + b"\n")
            n += 1
    return n


def best(fn, repeat: int) -> tuple[float, float]:
    """(best CPU seconds, best wall seconds) over ``repeat`` runs. CPU time
    (``time.process_time``) is the ratio's basis: on a shared machine wall
    time mostly measures the neighbours."""
    cpu, wall = [], []
    for _ in range(repeat):
        c, w = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return min(cpu), min(wall)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200_000, help="conversations to generate")
    ap.add_argument(
        "--repeat", type=int, default=3, help="runs of each; the best counts"
    )
    ap.add_argument("--workdir", type=Path, default=ROOT / ".cache" / "bench-prep")
    ap.add_argument(
        "--inputs",
        default="messages,mixed,sharegpt",
        help="comma-separated: messages (fast path), mixed (ShareGPT/Alpaca/DPO), sharegpt",
    )
    args = ap.parse_args()

    base = args.workdir / f"convs-{args.n}.jsonl"
    if not base.exists():
        generate(base, args.n)
    ratios = {}
    for shape in args.inputs.split(","):
        src = base
        if shape != "messages":
            src = args.workdir / f"{shape}-{args.n}.jsonl"
            if not src.exists():
                derive(base, src, shape)
        size_mb = src.stat().st_size / 1e6
        n = bound(src, args.workdir / "bound.jsonl")
        t_bound = best(
            lambda src=src: bound(src, args.workdir / "bound.jsonl"), args.repeat
        )
        t_prep = best(
            lambda src=src: prep(
                [str(src)], args.workdir / "prep", system="strip", warn=lambda m: None
            ),
            args.repeat,
        )
        print(f"input {shape}: {src} ({n} records, {size_mb:.1f} MB)")
        for label, (cpu, wall) in (
            ("orjson load+dump bound", t_bound),
            ("axpack prep", t_prep),
        ):
            print(
                f"  {label:24s} cpu {cpu:6.2f} s  {n / cpu:9,.0f} rec/s   wall {wall:6.2f} s"
            )
        ratios[shape] = t_bound[0] / t_prep[0]
        print(
            f"  ratio prep/bound (cpu): {ratios[shape]:.2f}  (wall: {t_bound[1] / t_prep[1]:.2f})"
        )
    print(
        "ratios (cpu): "
        + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items())
        + "  (goal >= 0.5)"
    )


if __name__ == "__main__":
    main()
