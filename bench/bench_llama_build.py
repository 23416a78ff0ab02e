"""Decode speed of the installed llama.cpp build (make bench-llama), for issue #11.

Measures what the portable, AMX-free build costs against a native one: load a
GGUF (default: the demo's Q4_K_M), greedy-decode ``--tokens`` tokens after a
short prompt ``--repeat`` times, and report the best decode tokens/s from
llama.cpp's own counters (``llama_perf_context``: ``n_eval`` / ``t_eval_ms``,
prompt processing excluded), with the build's compiled CPU features. Run it
once per build and divide: the ratio is in the README.

Usage: python bench/bench_llama_build.py [GGUF] [--tokens 128] [--repeat 3] [--threads 2] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def decode_tokens_per_s(path: Path, tokens: int, repeat: int, threads: int) -> list[float]:
    """Decode tokens/s of each of ``repeat`` greedy runs of ``tokens`` tokens (prompt excluded)."""
    import llama_cpp
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=512, n_threads=threads, n_threads_batch=threads, seed=0,
                verbose=False)
    rates = []
    for _ in range(repeat):
        llm.reset()
        llama_cpp.llama_perf_context_reset(llm.ctx)
        # min_p 0, top_k 1: greedy; ignore EOS so every run decodes exactly `tokens` tokens
        llm.create_completion("The history of the lighthouse", max_tokens=tokens, temperature=0.0, top_k=1,
                              logit_bias={llm.token_eos(): -1e9})
        perf = llama_cpp.llama_perf_context(llm.ctx)
        rates.append(perf.n_eval / (perf.t_eval_ms / 1000.0) if perf.t_eval_ms else 0.0)
    llm.close()
    return rates


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("gguf", nargs="?", default=str(ROOT / "runs/demo/gguf/demo-q4_k_m.gguf"))
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT / "tools"))
    from axpack.llama_build import build_problems, compiled_features, system_info

    path = Path(a.gguf)
    if not path.is_file():
        print(f"bench-llama: {path}: no such GGUF; run make demo first (or pass a GGUF)", file=sys.stderr)
        return 1
    feats = compiled_features(system_info())
    rates = decode_tokens_per_s(path, a.tokens, a.repeat, a.threads)
    doc = {"gguf": str(path), "compiled": sorted(k for k, v in feats.items() if v == "1"),
           "portable": not build_problems(feats), "tokens": a.tokens, "threads": a.threads,
           "decode_tokens_per_s": [round(r, 1) for r in rates], "best": round(max(rates), 1)}
    print(f"{path.name}: decode {doc['best']} tok/s (best of {a.repeat}; runs {doc['decode_tokens_per_s']}), "
          f"{a.threads} threads; build: {' '.join(doc['compiled'])} "
          f"({'portable' if doc['portable'] else 'NOT portable'})")
    if a.json:
        Path(a.json).write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
