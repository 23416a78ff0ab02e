"""Benchmark: ``axpack prep`` against plain orjson load+dump of the same file.

    python bench/bench_prep.py [--n 200000] [--repeat 3] [--workdir .cache/bench-prep]

Generates (once, deterministically, seed 0) a JSONL file of N conversations in
the OpenAI ``messages`` shape: 1-3 user/assistant exchanges, every 10th with a
system prompt, about 5% exact repeats, contents 40-400 characters. Then times

- the bound: ``for line in file: out.write(orjson.dumps(orjson.loads(line)))``
  (read, parse, serialise, write: the least any converter must do), and
- ``axpack.prep.prep`` on the same file (no tokenizer; ``--system strip``),

best of ``--repeat`` runs each, and prints records/s for both and the ratio
prep / bound (issue #3 goal: >= 0.5). Wall-clock on a shared machine is
noisy: compare ratios from the same run, not absolute numbers across runs.
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
    args = ap.parse_args()

    src = args.workdir / f"convs-{args.n}.jsonl"
    if not src.exists():
        generate(src, args.n)
    size_mb = src.stat().st_size / 1e6
    n = bound(src, args.workdir / "bound.jsonl")
    t_bound = best(lambda: bound(src, args.workdir / "bound.jsonl"), args.repeat)
    t_prep = best(
        lambda: prep(
            [str(src)], args.workdir / "prep", system="strip", warn=lambda m: None
        ),
        args.repeat,
    )
    print(f"input: {src} ({n} records, {size_mb:.1f} MB)")
    for label, (cpu, wall) in (
        ("orjson load+dump bound", t_bound),
        ("axpack prep", t_prep),
    ):
        print(
            f"{label:24s} cpu {cpu:6.2f} s  {n / cpu:9,.0f} rec/s   wall {wall:6.2f} s"
        )
    print(
        f"ratio prep/bound (cpu): {t_bound[0] / t_prep[0]:.2f}  (wall: {t_bound[1] / t_prep[1]:.2f}; goal >= 0.5)"
    )


if __name__ == "__main__":
    main()
