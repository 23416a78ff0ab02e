"""make bench-quant: what proving a quant costs, as ratios to plain quantization.

On the demo model (``runs/demo/merged`` when ``make demo`` has run, else the
embedded SmolLM2-135M), each step in its own process, wall seconds and peak RSS
(``getrusage(RUSAGE_CHILDREN).ru_maxrss`` of a wrapper that runs only that step):

1. plain quantize: the f16 GGUF -> Q4_K_M (``axpack.gguf_build.quantize``, llama_model_quantize);
2. verify: ``axpack verify --types q4_k_m`` — metadata, argmax agreement, stops,
   and the KLD statistics on the shipped text and the run's conversations
   (``--no-drift``: drift is a per-run check, not per quant);
3. imatrix: ``axpack.imatrix.build`` on the run's conversations (the merged model's
   activations, :data:`axpack.imatrix.DEFAULT_TOKENS`), then the same Q4_K_M quantize with it.

Prints a table and writes ``--json`` (default ``runs/bench-quant.json``).
Numbers depend on the machine's load: compare ratios, not seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
WRAP = ("import resource, subprocess, sys, time; t = time.monotonic(); rc = subprocess.call(sys.argv[1:]); "
        "print('BENCH', rc, time.monotonic() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def timed(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    """Run ``cmd`` under the wrapper; ``{"seconds", "peak_rss_mib"}``. Raises SystemExit on failure."""
    proc = subprocess.run([sys.executable, "-c", WRAP, *cmd], capture_output=True, text=True, env=env, cwd=ROOT,
                          check=False)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("BENCH ")), None)
    if line is None or line.split()[1] != "0":
        sys.exit(f"bench-quant: {' '.join(cmd[:4])} … failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    _, _, secs, rss = line.split()
    return {"seconds": round(float(secs), 2), "peak_rss_mib": round(int(rss) / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="HF folder [default: runs/demo/merged, else the demo model]")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=str(ROOT / "runs" / "bench-quant.json"))
    args = ap.parse_args()
    model = Path(args.model) if args.model else next(
        p for p in (ROOT / "runs/demo/merged", ROOT / "models/smollm2-135m-instruct") if (p / "config.json").is_file())
    env = {**os.environ, "AXPACK_OFFLINE": "1", "AXOLOTL_DO_NOT_TRACK": "1"}
    axpack = str(BIN / "axpack")
    with tempfile.TemporaryDirectory(prefix="bench-quant-") as tmp:
        run = Path(tmp) / "run"
        out = run / "gguf"
        # setup (not timed as a step): the one f16 intermediate, and the run's conversations if any
        subprocess.run([axpack, "gguf", str(model), "--out", str(out), "--name", "b", "--quants", "q8_0"],
                       cwd=ROOT, env=env, check=True, capture_output=True)
        data = model.parent / "data" / "sft.jsonl"
        data = data if data.is_file() else ROOT / "data" / "demo" / "sft.jsonl"  # the demo's raw conversations
        if data.is_file():
            (run / "data").mkdir()
            (run / "data" / "sft.jsonl").write_bytes(data.read_bytes())
        f16, q4 = out / "b-f16.gguf", out / "b-q4_k_m.gguf"
        res = {"model": str(model), "threads": args.threads}
        quant = ("import sys; from pathlib import Path; from axpack.gguf_build import quantize; "
                 f"quantize(Path(sys.argv[1]), Path(sys.argv[2]), 'q4_k_m', {args.threads})")
        res["quantize"] = timed([sys.executable, "-c", quant, str(f16), str(q4)], env)
        man = json.loads((out / "manifest.json").read_text())
        man["artifacts"]["b-q4_k_m.gguf"] = {"type": "q4_k_m", "size": q4.stat().st_size}
        (out / "manifest.json").write_text(json.dumps(man))
        res["verify"] = timed([axpack, "verify", str(out), "--types", "q4_k_m", "--threads", str(args.threads),
                               "--no-drift"], env)
        if data.is_file():
            imx = ("import sys; from pathlib import Path; from axpack import imatrix; "
                   "from axpack.gguf_build import quantize_to_tmp; a = [Path(x) for x in sys.argv[1:]]; "
                   "imatrix.build(a[0], a[1], a[2], a[3]); "
                   f"quantize_to_tmp(a[1], a[4], 'q4_k_m', {args.threads}, None, a[3]).rename(a[4])")
            res["imatrix_quantize"] = timed([sys.executable, "-c", imx, str(model), str(f16),
                                             str(run / "data" / "sft.jsonl"), str(out / "b-imatrix.gguf"),
                                             str(out / "b-q4_k_m-imatrix.gguf")], env)
    base = res["quantize"]
    res["ratios"] = {k: {"seconds": round(res[k]["seconds"] / base["seconds"], 2),
                         "peak_rss": round(res[k]["peak_rss_mib"] / base["peak_rss_mib"], 2)}
                     for k in ("verify", "imatrix_quantize") if k in res}
    print(f"model {model}, {args.threads} thread(s)")
    print(f"{'step':<16} {'seconds':>8} {'peak RSS MiB':>13} {'x quantize (s)':>15} {'x quantize (RSS)':>17}")
    for k in ("quantize", "imatrix_quantize", "verify"):
        if k not in res:
            continue
        r = res[k]
        ratio = res["ratios"].get(k, {"seconds": 1.0, "peak_rss": 1.0})
        print(f"{k:<16} {r['seconds']:>8.1f} {r['peak_rss_mib']:>13.0f} "
              f"{ratio['seconds']:>15.2f} {ratio['peak_rss']:>17.2f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
