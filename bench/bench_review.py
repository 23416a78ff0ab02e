"""Benchmark: ``axpack plan`` and ``axpack diff`` run offline in a few seconds.

    python bench/bench_review.py [--repeat 3] [--budget 5] [--examples 9007]

Times, best of ``--repeat`` runs each:

- the console script as a user runs it (Python start-up and imports included):
  ``axpack plan`` on every config under ``configs/``, ``axpack diff`` of the
  demo siblings, and ``axpack diff --git <first commit>`` (every config);
- in process: :func:`axpack.plan.plan_config` per config, and the token count
  of a synthetic ``--data`` folder of ``--examples`` conversations with the
  demo model's tokenizer and chat template (sampled at 1,000 records), the
  slowest path plan has.

Prints one line per case and exits 1 when a console-script case takes more
than ``--budget`` seconds (issue #5: "plan and diff run offline in a few
seconds"). Wall-clock on a shared 2-core machine is noisy: read the best of
the repeats, not a single run. Needs ``AXPACK_OFFLINE=1`` (set here).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
os.environ["AXPACK_OFFLINE"] = "1"
os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")

from axpack.plan import plan_config

AXPACK = str(Path(sys.executable).parent / "axpack")


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def cli(*args: str) -> None:
    res = subprocess.run([AXPACK, *args], cwd=ROOT, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"axpack {' '.join(args)} failed ({res.returncode}): {res.stderr.strip()[-500:]}")


def synthetic_data(folder: Path, n: int) -> Path:
    """A prep-like folder: sft.jsonl with n 1–3 turn conversations + summary.json."""
    rng = random.Random(0)
    words = ["the", "model", "learns", "to", "answer", "short", "questions", "about", "data", "configs",
             "steps", "tokens"]
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "sft.jsonl", "w", encoding="utf-8") as fh:
        for _ in range(n):
            msgs = []
            for _ in range(rng.randint(1, 3)):
                msgs.append({"role": "user", "content": " ".join(rng.choices(words, k=rng.randint(5, 40)))})
                msgs.append({"role": "assistant", "content": " ".join(rng.choices(words, k=rng.randint(10, 120)))})
            fh.write(json.dumps({"messages": msgs}) + "\n")
    (folder / "summary.json").write_text(json.dumps({"outputs": {"sft": {"kept": n}}}))
    return folder


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--budget", type=float, default=5.0, help="seconds allowed per console-script call")
    ap.add_argument("--examples", type=int, default=9007, help="conversations in the synthetic --data folder")
    args = ap.parse_args()

    configs = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.y*ml"))
    first = subprocess.run(["git", "rev-list", "--max-parents=0", "HEAD"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()[0]
    over = []
    print(f"{len(configs)} configs, best of {args.repeat}, budget {args.budget:g} s per console-script call")

    def report(name: str, seconds: float, budgeted: bool) -> None:
        flag = ""
        if budgeted and seconds > args.budget:
            over.append(name)
            flag = "  OVER BUDGET"
        print(f"  {seconds * 1000:8.0f} ms  {name}{flag}")

    print("console script (start-up included):")
    report("axpack --help", best(lambda: cli("--help"), args.repeat), True)
    for cfg in configs:
        report(f"axpack plan {cfg}", best(lambda c=cfg: cli("plan", c, "--format", "markdown"), args.repeat), True)
    sft, dpo = "configs/smollm2-135m/sft-lora.yaml", "configs/smollm2-135m/dpo-lora.yaml"
    report("axpack diff sft-lora dpo-lora --data data/demo",
           best(lambda: cli("diff", sft, dpo, "--data", "data/demo", "--format", "markdown"), args.repeat), True)
    report(f"axpack diff --git {first[:7]} ({len(configs)} configs)",
           best(lambda: cli("diff", "--git", first, "--format", "markdown"), args.repeat), True)

    print("in process:")
    total = best(lambda: [plan_config(ROOT / c, num_examples=args.examples, tokenize=False) for c in configs],
                 args.repeat)
    report(f"plan_config × {len(configs)} (--num-examples {args.examples})", total, False)
    demo = ROOT / "models" / "smollm2-135m-instruct"
    with tempfile.TemporaryDirectory() as tmp:
        data = synthetic_data(Path(tmp) / "data", args.examples)
        report(f"plan --data ({args.examples:,} conversations, chars/4)",
               best(lambda: plan_config(ROOT / sft, data_dir=data, tokenize=False), args.repeat), False)
        if (demo / "tokenizer.json").is_file():
            report(f"plan --data ({args.examples:,} conversations, demo tokenizer + template, 1,000 sampled)",
                   best(lambda: plan_config(ROOT / sft, data_dir=data, tokenizer_dir=demo), args.repeat), False)
            report(f"axpack plan --data ({args.examples:,}, tokenizer)",
                   best(lambda: cli("plan", sft, "--data", str(data), "--tokenizer", str(demo)), args.repeat), True)
        else:
            print("  (skipped tokenizer cases: models/smollm2-135m-instruct missing; run make setup)")
    if over:
        print(f"bench-review: {len(over)} case(s) over the {args.budget:g} s budget: {', '.join(over)}")
        return 1
    print("bench-review: all console-script cases within budget")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
