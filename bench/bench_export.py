"""Export benchmarks (make bench-export): merge memory and quantize overhead, as ratios.

1. Merge peak RSS above the process's import baseline, on the same ~1 GB bf16
   model in three ~400 MB shards with an r=16 LoRA on every linear layer:
   - axpack's streaming merge (axpack.lora_merge.merge_lora),
   - a tensor-at-a-time streaming merge (the reference of the goal, like the
     issue's prototype: each tensor read with safetensors' safe_open, merged
     and written at once into an output shard with the same header),
   - PEFT merge_and_unload (load, merge, save_pretrained),
   - optionally Axolotl's merge-lora (--axolotl; slow).
   Each runs in a fresh process: baseline = VmRSS after its imports, then the
   peak counter is reset (/proc/self/clear_refs "5") and VmHWM read at the end.
   Goal: axpack <= 1.2 x the tensor-at-a-time merge.
2. Quantize wall time: ``axpack gguf`` quantizing Q4_K_M and Q8_0 from a
   current f16 intermediate (so: input checks, quantize, checksums, manifest)
   against direct ``llama_cpp.llama_model_quantize`` calls on the same file,
   both in fresh processes, best of --repeat. Goal: overhead <= 5 %.

The bench model and adapter are generated once into .cache/bench-export/
(random weights, seed 0; no download) and reused.

Usage: python bench/bench_export.py [--repeat 2] [--axolotl] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench-export"
BASE = CACHE / "base"
ADAPTER = CACHE / "adapter"
PY = sys.executable
# ~550 M parameters in bf16 = ~1.1 GB, saved in 400 MB shards (3 shards); the
# vocabulary is SmolLM2's, so the converter can use the demo model's tokenizer
SHAPE = {"vocab_size": 49152, "hidden_size": 1536, "intermediate_size": 4096, "num_hidden_layers": 16,
         "num_attention_heads": 12, "num_key_value_heads": 4, "max_position_embeddings": 2048,
         "tie_word_embeddings": False}

RSS_HELPERS = textwrap.dedent('''
    import os, json
    def _kb(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1])
    def baseline():
        b = _kb("VmRSS:")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        return b
    def report(b, **extra):
        print("RESULT " + json.dumps({"baseline_mb": b / 1024, "peak_mb": _kb("VmHWM:") / 1024,
                                      "above_mb": (_kb("VmHWM:") - b) / 1024, **extra}))
''')

MERGERS = {
    "axpack": '''
import torch, safetensors.torch
from axpack.lora_merge import merge_lora
b = baseline()
merge_lora(BASE, ADAPTER, OUT)
report(b)
''',
    "tensor-at-a-time": '''
import torch, safetensors.torch
from safetensors import safe_open
from safetensors.torch import load_file
import json, struct
from pathlib import Path
b = baseline()
cfg = json.load(open(Path(ADAPTER) / "adapter_config.json"))
lora = load_file(str(Path(ADAPTER) / "adapter_model.safetensors"))
scale = cfg["lora_alpha"] / cfg["r"]
Path(OUT).mkdir(parents=True, exist_ok=True)
for shard in sorted(Path(BASE).glob("*.safetensors")):
    raw = open(shard, "rb").read(8)
    n = struct.unpack("<Q", raw)[0]
    head = open(shard, "rb").read(8 + n)
    order = sorted((k for k in json.loads(head[8:]) if k != "__metadata__"),
                   key=lambda k: json.loads(head[8:])[k]["data_offsets"][0])
    with safe_open(str(shard), "pt") as fh, open(Path(OUT) / shard.name, "wb") as out:
        out.write(head)  # same layout: a merge changes values only
        for k in order:
            t = fh.get_tensor(k)
            a = lora.get("base_model.model." + k[:-len(".weight")] + ".lora_A.weight")
            if a is not None:
                bb = lora["base_model.model." + k[:-len(".weight")] + ".lora_B.weight"]
                t = t + (bb.float() @ a.float()) * scale
                t = t.to(torch.bfloat16)
            out.write(t.contiguous().view(torch.uint8).numpy().tobytes())
            del t
report(b)
''',
    "peft": '''
import torch, transformers, peft
from transformers import AutoModelForCausalLM
from peft import PeftModel
b = baseline()
m = AutoModelForCausalLM.from_pretrained(BASE, dtype="auto")
m = PeftModel.from_pretrained(m, ADAPTER).merge_and_unload()
m.save_pretrained(OUT)
report(b)
''',
}


def sh(code: str, env: dict | None = None) -> dict:
    """Run ``code`` in a fresh interpreter; parse its RESULT line."""
    proc = subprocess.run([PY, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False,
                          env={**os.environ, "AXOLOTL_DO_NOT_TRACK": "1", "AXPACK_OFFLINE": "1", **(env or {})})
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"bench step failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def build_model() -> None:
    """Random ~1 GB bf16 Llama in 400 MB shards + an r=16 LoRA on all linear layers (cached)."""
    if (ADAPTER / "adapter_model.safetensors").is_file() and (BASE / "config.json").is_file():
        return
    print(f"bench: generating the bench model in {CACHE} (once)", flush=True)
    code = textwrap.dedent(f'''
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM
        from peft import LoraConfig, get_peft_model
        torch.manual_seed(0)
        m = LlamaForCausalLM(LlamaConfig(**{SHAPE!r})).to(torch.bfloat16)
        m.save_pretrained({str(BASE)!r}, max_shard_size="400MB")
        pm = get_peft_model(m, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.01)
        pm.save_pretrained({str(ADAPTER)!r})
        print("RESULT {{}}")
    ''')
    sh(code)


def bench_merge(which: list[str], tmp: Path) -> dict[str, dict]:
    import shutil

    out = {}
    for name in which:
        dest = tmp / f"merged-{name}"
        shutil.rmtree(dest, ignore_errors=True)
        if name == "axolotl":
            out[name] = bench_axolotl(dest)
        else:
            code = (RSS_HELPERS + f"BASE, ADAPTER, OUT = {str(BASE)!r}, {str(ADAPTER)!r}, {str(dest)!r}\n"
                    + MERGERS[name])
            t0 = time.monotonic()
            out[name] = sh(code)
            out[name]["seconds"] = time.monotonic() - t0
        shutil.rmtree(dest, ignore_errors=True)
        print(f"bench: merge {name:>17}: peak {out[name]['peak_mb']:7.0f} MB, "
              f"imports {out[name]['baseline_mb']:6.0f} MB, "
              f"above imports {out[name]['above_mb']:6.0f} MB, {out[name]['seconds']:.0f} s", flush=True)
    return out


def bench_axolotl(dest: Path) -> dict:
    """Axolotl's merge-lora (memory_efficient) under the same RSS measurement."""
    import yaml

    cfg = CACHE / "axolotl.yaml"
    cfg.write_text(yaml.safe_dump({"base_model": str(BASE), "adapter": "lora", "lora_r": 16, "lora_alpha": 32,
                                   "lora_target_linear": True, "datasets": [{"path": "x", "type": "alpaca"}],
                                   "output_dir": str(dest), "sequence_len": 512, "micro_batch_size": 1,
                                   "num_epochs": 1, "learning_rate": 1e-4, "bf16": False}))
    code = RSS_HELPERS + textwrap.dedent(f'''
        import sys
        from axolotl.cli.merge_lora import do_cli
        b = baseline()
        do_cli(config={str(cfg)!r}, lora_model_dir={str(ADAPTER)!r}, output_dir={str(dest)!r})
        report(b)
    ''')
    t0 = time.monotonic()
    res = sh(code)
    res["seconds"] = time.monotonic() - t0
    return res


def bench_quantize(tmp: Path, repeat: int) -> dict:
    """Wall time of axpack gguf (f16 current, 2 quants) vs direct llama_model_quantize calls."""
    import shutil

    gdir = tmp / "gguf"
    merged = tmp / "merged-for-gguf"
    if not (merged / "config.json").is_file():
        sh(RSS_HELPERS + f"BASE, ADAPTER, OUT = {str(BASE)!r}, {str(ADAPTER)!r}, {str(merged)!r}\n" + MERGERS["axpack"])
        for f in ("tokenizer.json", "tokenizer_config.json"):  # the converter needs a tokenizer
            shutil.copy2(ROOT / "models" / "smollm2-135m-instruct" / f, merged / f)
    axpack = [str(Path(PY).parent / "axpack"), "gguf", str(merged), "--out", str(gdir), "--name", "bench",
              "--quants", "q4_k_m,q8_0"]
    env = {**os.environ, "AXPACK_OFFLINE": "1"}
    subprocess.run(axpack, check=True, capture_output=True, env=env)  # convert once (not timed)
    f16 = gdir / "bench-f16.gguf"
    direct = textwrap.dedent(f'''
        import llama_cpp
        for q, ft in (("q4_k_m", 15), ("q8_0", 7)):
            p = llama_cpp.llama_model_quantize_default_params()
            p.ftype = ft
            assert llama_cpp.llama_model_quantize({str(f16)!r}.encode(),
                                                  ("{tmp}/direct-" + q + ".gguf").encode(), p) == 0
    ''')
    t_ax, t_dir = [], []
    for _ in range(repeat):
        for q in ("q4_k_m", "q8_0"):
            (gdir / f"bench-{q}.gguf").unlink(missing_ok=True)  # force the quants, keep the f16 current
        t0 = time.monotonic()
        subprocess.run(axpack, check=True, capture_output=True, env=env)
        t_ax.append(time.monotonic() - t0)
        t0 = time.monotonic()
        subprocess.run([PY, "-c", direct], check=True, capture_output=True)
        t_dir.append(time.monotonic() - t0)
        print(f"bench: quantize q4_k_m+q8_0: axpack gguf {t_ax[-1]:.1f} s, direct {t_dir[-1]:.1f} s", flush=True)
    same = all((tmp / f"direct-{q}.gguf").read_bytes() == (gdir / f"bench-{q}.gguf").read_bytes()
               for q in ("q4_k_m", "q8_0"))
    return {"axpack_s": min(t_ax), "direct_s": min(t_dir), "ratio": min(t_ax) / min(t_dir), "byte_identical": same,
            "f16_mb": f16.stat().st_size / 2**20}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--axolotl", action="store_true", help="also measure Axolotl's merge-lora (slow)")
    ap.add_argument("--skip-quantize", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    build_model()
    size = sum(f.stat().st_size for f in BASE.glob("*.safetensors"))
    print(f"bench: model {size / 2**20:.0f} MiB in {len(list(BASE.glob('*.safetensors')))} shards", flush=True)
    tmp = CACHE / "work"
    tmp.mkdir(parents=True, exist_ok=True)
    merges = bench_merge(["axpack", "tensor-at-a-time", "peft"] + (["axolotl"] if args.axolotl else []), tmp)
    res = {"model_mb": size / 2**20, "merge": merges,
           "merge_ratio_vs_tensor_at_a_time": merges["axpack"]["above_mb"] / merges["tensor-at-a-time"]["above_mb"],
           "merge_ratio_vs_peft": merges["axpack"]["above_mb"] / merges["peft"]["above_mb"]}
    if not args.skip_quantize:
        res["quantize"] = bench_quantize(tmp, args.repeat)
    print()
    print(f"merge peak RSS above imports: axpack {merges['axpack']['above_mb']:.0f} MB = "
          f"{res['merge_ratio_vs_tensor_at_a_time']:.2f} x tensor-at-a-time "
          f"({merges['tensor-at-a-time']['above_mb']:.0f} MB; goal <= 1.2), "
          f"{res['merge_ratio_vs_peft']:.2f} x PEFT merge_and_unload ({merges['peft']['above_mb']:.0f} MB)")
    if "axolotl" in merges:
        print(f"  Axolotl merge-lora: {merges['axolotl']['above_mb']:.0f} MB above its imports")
    if "quantize" in res:
        q = res["quantize"]
        print(f"quantize q4_k_m+q8_0 from f16 ({q['f16_mb']:.0f} MiB): axpack gguf {q['axpack_s']:.1f} s vs direct "
              f"llama_model_quantize {q['direct_s']:.1f} s = {q['ratio']:.3f} x (goal <= 1.05), "
              f"outputs byte-identical: {q['byte_identical']}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    ok = res["merge_ratio_vs_tensor_at_a_time"] <= 1.2 and ("quantize" not in res or res["quantize"]["ratio"] <= 1.05)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
