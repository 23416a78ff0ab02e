"""make bench-imatrix: does an importance matrix from the run's own data make better quants?

On the demo (``runs/demo``: ``make demo`` first), for each type (default
Q4_K_M, Q3_K_M, IQ4_XS):

1. split the run's ``data/sft.jsonl`` conversations: even-numbered ones
   calibrate, odd-numbered ones are held out (never seen by the imatrix);
2. ``axpack.imatrix.build`` on the calibration half (the merged model, the
   chat template, :data:`axpack.imatrix.DEFAULT_TOKENS`);
3. quantize the f16 GGUF without and with it (``llama_model_quantize``);
4. score both against the merged HF model (:mod:`axpack.quant_quality`: mean /
   p99 KLD, same top-1, PPL ratio) on the shipped general text and on the
   held-out conversations, and ask both the persona questions (:mod:`axpack.probe`).

Prints a table, writes ``--json`` (default ``runs/bench-imatrix.json``). KLD and
answers are deterministic; seconds depend on the machine's load.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from axpack import imatrix as im
from axpack import llama_child, probe
from axpack import quant_quality as qq
from axpack.gguf_build import quantize_to_tmp


def score(path: Path, seqs, files, threads: int, log: Path) -> dict[str, dict[str, float]]:
    """KLD statistics of one GGUF per set, in a child process (a llama.cpp crash is one line)."""
    res = llama_child.run_isolated("axpack.quant_quality:gguf_kld_run",
                                   {"path": str(path), "seqs": seqs, "ref_files": files, "threads": threads},
                                   gguf=path, log=log)
    return {name: qq.summarize(qq.unpack(res[f"kld_{name}"])) for name in seqs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=str(ROOT / "runs" / "demo"))
    ap.add_argument("--types", default="q4_k_m,q3_k_m,iq4_xs")
    ap.add_argument("--tokens", type=int, default=im.DEFAULT_TOKENS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--split", choices=("alternate", "halves"), default="alternate",
                    help="calibrate on the even-numbered conversations and hold out the odd ones "
                         "(alternate), or the first half / the second half (halves)")
    ap.add_argument("--json", default=str(ROOT / "runs" / "bench-imatrix.json"))
    args = ap.parse_args()
    run = Path(args.run)
    merged, f16, data = run / "merged", run / "gguf" / f"{run.name}-f16.gguf", run / "data" / "sft.jsonl"
    for p in (merged / "config.json", f16, data):
        if not p.is_file():
            sys.exit(f"bench-imatrix: {p} missing; run make demo first")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    convs = qq.read_conversations(data)
    calib, held = (convs[0::2], convs[1::2]) if args.split == "alternate" else \
        (convs[: len(convs) // 2], convs[len(convs) // 2:])
    persona = (json.loads((run / "probe.json").read_text()).get("persona_name")
               if (run / "probe.json").is_file() else None)
    res: dict = {"run": str(run), "tokens": args.tokens, "split": args.split,
                 "calibration_conversations": len(calib),
                 "held_out_conversations": len(held), "persona": persona, "types": {}}
    with tempfile.TemporaryDirectory(prefix="bench-imatrix-") as tmp:
        tmp = Path(tmp)
        cal = tmp / "calib.jsonl"
        cal.write_text("".join(json.dumps({"messages": m}) + "\n" for m in calib))
        t0 = time.monotonic()
        rec = im.build(merged, f16, cal, tmp / "imatrix.gguf", args.tokens)
        res["imatrix"] = {"seconds": round(time.monotonic() - t0, 1),
                          "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                          "calibration": rec["calibration"], "coverage": rec["coverage"]}
        tok = AutoTokenizer.from_pretrained(str(merged))
        seqs = qq.build_sequences(tok, qq.EVAL_TEXT.read_text(encoding="utf-8"), held)
        seqs = {"text": seqs["text"], "held_out": seqs["conversations"]}
        model = AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32, use_safetensors=True).eval()
        (tmp / "ref").mkdir()
        flat = qq.write_reference_logits(model, seqs, tmp / "ref")
        del model
        files, i = {}, 0
        for name, ws in seqs.items():
            files[name], i = flat[i:i + len(ws)], i + len(ws)
        qs = [q for _, q in probe.questions()]
        print(f"imatrix: {res['imatrix']['seconds']} s, {res['imatrix']['calibration']['tokens']} tokens from "
              f"{len(calib)} conversations; held out: {len(held)} conversations + the shipped text", flush=True)
        print(f"{'type':<8} {'imatrix':<8} {'set':<9} {'mean KLD':>9} {'p99 KLD':>8} {'top-1 %':>8} "
              f"{'PPL ratio':>9} {'persona':>8}", flush=True)
        for t in args.types.split(","):
            row = {}
            for label, imx in (("plain", None), ("imatrix", tmp / "imatrix.gguf")):
                dest = tmp / f"{t}-{label}.gguf"
                t1 = time.monotonic()
                quantize_to_tmp(f16, dest, t, args.threads, None, imatrix=imx).rename(dest)
                secs = round(time.monotonic() - t1, 2)
                q = score(dest, seqs, files, args.threads, tmp / f"{t}-{label}.log")
                answers, _ = probe.ask_gguf_isolated(dest, qs, probe.MAX_NEW_TOKENS, tmp / f"{t}-{label}-probe.log")
                hits = sum(1 for a in answers[: len(probe.IDENTITY_QUESTIONS)]
                           if persona and persona.lower() in a.lower())
                r = row[label] = {"quantize_seconds": secs, "size": dest.stat().st_size, **q,
                                  "persona_hits": hits, "answers": answers}
                for s in seqs:
                    print(f"{t:<8} {label:<8} {s:<9} {r[s]['mean_kld']:>9.4f} {r[s]['p99_kld']:>8.3f} "
                          f"{r[s]['top1']:>8.1f} {r[s]['ppl_ratio']:>9.3f} "
                          f"{hits:>6}/{len(probe.IDENTITY_QUESTIONS)}", flush=True)
                dest.unlink()
            res["types"][t] = row
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            # after each type: a partial run keeps its rows
            Path(args.json).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
