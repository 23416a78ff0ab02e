"""How far a quant moved the model: KL divergence and friends, in bounded memory.

The statistics are llama.cpp's (``llama-perplexity --kl-divergence``,
``tools/perplexity/perplexity.cpp``), per scored token position ``t`` with
reference log-probs ``lr = log_softmax(ref_logits[t])``, quant log-probs
``lq`` and the text's next token ``y``:

- KLD ``= Σ_v exp(lr_v) · (lr_v − lq_v)`` (nats), reported as mean and 99th percentile;
- same top-1: ``argmax lr == argmax lq`` (%);
- PPL ratio ``= exp(mean(−lq_y)) / exp(mean(−lr_y))`` (PPL(Q)/PPL(base));
- Δp ``= exp(lq_y) − exp(lr_y)``, reported as RMS in percentage points.

Sequences (:func:`build_sequences`): the evaluation text cut into windows of
:data:`CHUNK` tokens, each evaluated from an empty context (BOS first when the
tokenizer adds one), and the run's conversations rendered with the chat
template, one per window. Every position but a window's last is scored
(llama-perplexity scores only each window's second half, so its absolute PPL
is lower than ours; ratios and KLD compare like with like).

Memory: the reference's logits are written once per window to ``.npy`` files
(float32, ``window × n_vocab``: 100 MB for 512 tokens of a 49k vocab) and
memory-mapped by the quant's child process one window at a time; only the
per-token statistics (five floats per token) come back. Nothing ever holds
``n_tokens × n_vocab`` for the whole text.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

EVAL_TEXT = Path(__file__).with_name("data") / "eval-text.txt"
CHUNK = 512  # tokens per window (llama-perplexity's default -c is 512 too)
CONV_TOKENS = 2048  # token budget for the run's conversations
STATS = ("kld", "same_top1", "ref_logp", "q_logp", "dp")


def log_softmax(x):
    """Row-wise log-softmax of a float array ``[T, V]`` (float32 out, max-subtracted for stability)."""
    import numpy as np

    x = np.asarray(x, dtype=np.float32)
    m = x.max(axis=1, keepdims=True)
    z = x - m
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True, dtype=np.float64)).astype(np.float32)


def token_stats(ref, got, targets) -> dict[str, Any]:
    """Per-position statistics between reference and quant logits.

    Args:
        ref: reference logits ``[T, V]`` (any float dtype; a memory map is fine).
        got: the quant's logits ``[T, V']`` (columns beyond ``min(V, V')`` are ignored:
            some GGUFs pad the vocab).
        targets: the token that follows each position, ``[T]`` ints.

    Returns:
        ``{name: float64 array [T]}`` for :data:`STATS`: ``kld`` (nats, >= 0),
        ``same_top1`` (0/1), ``ref_logp`` and ``q_logp`` (log-prob of the target),
        ``dp`` (probability of the target, quant minus reference).
    """
    import numpy as np

    v = min(ref.shape[1], got.shape[1])
    lr, lq = log_softmax(ref[:, :v]), log_softmax(got[:, :v])
    pr = np.exp(lr)
    kld = np.maximum((pr * (lr - lq)).sum(axis=1, dtype=np.float64), 0.0)
    rows = np.arange(lr.shape[0])
    y = np.asarray(targets, dtype=np.int64)
    ref_lp, q_lp = lr[rows, y].astype(np.float64), lq[rows, y].astype(np.float64)
    return {"kld": kld, "same_top1": (lr.argmax(1) == lq.argmax(1)).astype(np.float64),
            "ref_logp": ref_lp, "q_logp": q_lp, "dp": np.exp(q_lp) - np.exp(ref_lp)}


def summarize(st: dict[str, Any]) -> dict[str, float]:
    """llama.cpp's summary numbers from :func:`token_stats` arrays (concatenated over windows).

    Returns:
        ``tokens``, ``mean_kld``, ``p99_kld`` (nats), ``top1`` (%), ``ppl_ref``,
        ``ppl``, ``ppl_ratio`` (PPL(Q)/PPL(ref)), ``rms_dp`` (percentage points).
    """
    import numpy as np

    n = len(st["kld"])
    if not n:
        return {"tokens": 0}
    ppl_ref, ppl = float(np.exp(-st["ref_logp"].mean())), float(np.exp(-st["q_logp"].mean()))
    return {"tokens": n, "mean_kld": float(st["kld"].mean()), "p99_kld": float(np.percentile(st["kld"], 99)),
            "top1": 100.0 * float(st["same_top1"].mean()), "ppl_ref": ppl_ref, "ppl": ppl,
            "ppl_ratio": float(np.exp(st["ref_logp"].mean() - st["q_logp"].mean())),
            "rms_dp": 100.0 * float(np.sqrt((st["dp"] ** 2).mean()))}


def read_conversations(path: Path) -> list[list[dict[str, str]]]:
    """The ``messages`` lists of a prep output JSONL (``sft.jsonl`` / ``sft.val.jsonl``); other records skipped."""
    convs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        msgs = rec.get("messages") if isinstance(rec, dict) else None
        if isinstance(msgs, list) and msgs and all(isinstance(m, dict) and "content" in m for m in msgs):
            convs.append(msgs)
    return convs


def run_conversations(export_dir: Path) -> Path | None:
    """The run's own conversations beside an export folder: ``../data/sft.val.jsonl``
    (held out, when prep wrote one) else ``../data/sft.jsonl``; None when neither exists."""
    data = Path(export_dir).parent / "data"
    for name in ("sft.val.jsonl", "sft.jsonl"):
        p = data / name
        if p.is_file() and p.stat().st_size:
            return p
    return None


def _windows(ids: list[int], chunk: int, bos: int | None) -> list[list[int]]:
    step = chunk - (bos is not None)
    return [([bos] if bos is not None else []) + ids[i:i + step] for i in range(0, len(ids), step)
            if len(ids[i:i + step]) >= 2]


def build_sequences(tok, text: str, conversations: list[list[dict[str, str]]] | None,
                    chunk: int = CHUNK, conv_tokens: int = CONV_TOKENS) -> dict[str, list[list[int]]]:
    """Token windows to score: ``{"text": [...], "conversations": [...]}``.

    The text is tokenized without special tokens and cut into windows of
    ``chunk`` tokens (BOS first when the tokenizer adds one). Each conversation
    is rendered by the tokenizer's chat template (the full conversation, no
    generation prompt), cut at ``chunk`` tokens, until ``conv_tokens`` tokens
    are taken. ``conversations`` None or empty: no ``"conversations"`` key.
    """
    probe = tok("a", add_special_tokens=True)["input_ids"]
    bos = tok.bos_token_id if tok.bos_token_id is not None and probe and probe[0] == tok.bos_token_id else None
    out = {"text": _windows(list(tok(text, add_special_tokens=False)["input_ids"]), chunk, bos)}
    if conversations:
        seqs, used = [], 0
        for msgs in conversations:
            if used >= conv_tokens:
                break
            ids = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=False, return_dict=True)
            ids = list(ids["input_ids"])[: min(chunk, conv_tokens - used + 1)]
            if len(ids) >= 2:
                seqs.append(ids)
                used += len(ids) - 1
        out["conversations"] = seqs
    return out


def fingerprint(seqs: dict[str, list[list[int]]]) -> str:
    """sha256 of the token windows (what was scored), for verify.json."""
    return hashlib.sha256(json.dumps(seqs, sort_keys=True).encode()).hexdigest()


def write_reference_logits(model, seqs: dict[str, list[list[int]]], dest: Path, device: str = "cpu") -> list[str]:
    """Run the HF ``model`` over every window and save its float32 logits, one ``.npy`` per window.

    Returns:
        The file paths, in the order of ``seqs`` (sets in key order, windows in order).
    """
    import numpy as np
    import torch

    files = []
    for name, windows in seqs.items():
        for i, ids in enumerate(windows):
            with torch.no_grad():
                logits = model(torch.tensor([ids], device=device)).logits[0].to(torch.float32).cpu().numpy()
            f = dest / f"ref-{name}-{i}.npy"
            np.save(f, logits, allow_pickle=False)
            files.append(str(f))
            del logits
    return files


def score_windows(logits_of, windows: list[list[int]], ref_files: list[str]) -> dict[str, Any]:
    """:func:`token_stats` over windows, concatenated; one window's logits in memory at a time.

    Args:
        logits_of: ``ids -> logits [len(ids), V]`` (the quant; llama.cpp in the child).
        windows: token windows.
        ref_files: the reference's logits per window (:func:`write_reference_logits`).
    """
    import numpy as np

    parts: dict[str, list] = {k: [] for k in STATS}
    for ids, f in zip(windows, ref_files):
        ref = np.load(f, mmap_mode="r", allow_pickle=False)
        got = logits_of(ids)
        st = token_stats(ref[:-1], got[:-1], ids[1:])
        for k in STATS:
            parts[k].append(st[k])
        del ref, got, st
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}


def pack(st: dict[str, Any]):
    """:data:`STATS` arrays as one ``[5, T]`` float64 array (the child's transport)."""
    import numpy as np

    return np.stack([st[k] for k in STATS]) if len(st["kld"]) else np.zeros((len(STATS), 0))


def unpack(arr) -> dict[str, Any]:
    """Inverse of :func:`pack`."""
    return {k: arr[i] for i, k in enumerate(STATS)}


def llama_scores(llm, seqs: dict[str, list[list[int]]], ref_files: dict[str, list[str]]) -> dict[str, Any]:
    """Score a loaded ``llama_cpp.Llama`` (``logits_all=True``, ``n_ctx >= CHUNK``) on every set.

    Returns:
        ``{"kld_<set>": [5, T] array}`` (see :func:`pack`) for each set of ``seqs``.
    """
    import numpy as np

    def logits_of(ids: list[int]):
        llm.reset()
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)

    return {f"kld_{name}": pack(score_windows(logits_of, windows, ref_files[name]))
            for name, windows in seqs.items()}


def gguf_kld_run(path: str, seqs: dict[str, list[list[int]]], ref_files: dict[str, list[str]],
                 threads: int) -> dict[str, Any]:
    """Child-process target (:func:`axpack.llama_child.run_isolated`): load ``path`` and :func:`llama_scores`."""
    from llama_cpp import Llama

    from . import llama_child

    n_ctx = max((len(w) for ws in seqs.values() for w in ws), default=CHUNK)
    llama_child.phase("loading")
    llm = Llama(model_path=path, n_ctx=max(n_ctx, 512), n_batch=512, logits_all=True, n_threads=threads,
                n_threads_batch=threads, seed=0, verbose=True)
    llama_child.phase("scoring the evaluation text")
    out = llama_scores(llm, seqs, ref_files)
    llama_child.phase("closing")
    llm.close()
    return out


# KLD gates per GGUF type, checked on every scored set (general text and the run's conversations):
# max mean KLD and max 99th-percentile KLD (nats per token), min same top-1 (%), max PPL(Q)/PPL(ref).
# Source: llama.cpp's published KLD table for Llama-3-8B on Wikitext-2, no imatrix
# (llama-perplexity --kl-divergence; figures as quoted in axpack issue 16): Q8_0 mean KLD 0.0014,
# same top-1 97.7 %; Q6_K 0.0055 / 96.0 %; Q5_K_M 0.0108; Q4_K_M 0.0313 / 91.9 %, PPL ratio 1.028.
# A 135M model is much more fragile. Measured on SmolLM2-135M-Instruct (its own GGUFs vs the
# HF model, this llama.cpp; 1,185 tokens of eval-text.txt / 2,048 tokens of data/demo/sft.jsonl):
#   f16     mean 0.000004 / 0.000011  p99 0.00002 / 0.00008  top-1 99.8 / 99.9 %  PPL ratio 1.000 / 1.002
#   q8_0    mean 0.0039   / 0.0073    p99 0.015   / 0.047    top-1 95.6 / 96.3 %  PPL ratio 1.007 / 1.020
#   q6_k    mean 0.0094   / 0.021     p99 0.046   / 0.112    top-1 94.3 / 93.5 %  PPL ratio 1.011 / 1.041
#   q4_k_m  mean 0.056    / 0.092     p99 0.27    / 0.40     top-1 84.9 / 90.0 %  PPL ratio 1.069 / 1.134
#   q3_k_m  mean 0.134    / 0.237     p99 0.68    / 3.08     top-1 76.6 / 78.5 %  PPL ratio 1.116 / 1.060
#   iq4_xs  mean 0.205    / 0.410     p99 0.90    / 2.45     top-1 73.2 / 73.1 %  PPL ratio 1.219 / 1.173
# i.e. 2-5x llama.cpp's Llama-3-8B KLD (most of SmolLM2's 576-wide rows cannot take 256-blocks
# and fall back to older types). Gates: llama.cpp's mean KLD x10 (Q8_0 0.014, Q6_K 0.055, Q5_K_M 0.11)
# and x6 for Q4_K_M (0.19): each about 2x the worst SmolLM2 measurement above; p99 about 2x
# measured; top-1 llama.cpp's figure minus 6-12 points (measured minus 3-5); PPL ratio about
# 2x the measured excess, except Q4_K_M's 1.4: the test fixture (3 SFT + 2 DPO steps) measured
# 1.237 on its own conversations (text 1.065; mean KLD 0.052 / 0.062, top-1 86.2 / 85.7 %), and
# a model trained on exactly these conversations is peaked there. IQ4_XS's 0.41 fails the 4-bit
# gate on SmolLM2; Q3/Q2 types get no gate (reported only). The unmerged base against the
# tuned reference fails every gate on the conversations (fixture: mean KLD 0.36, top-1 73.9 %,
# PPL ratio 2.3) while on general text it stays within Q8_0's (0.0093): that is the drift check.
QUALITY_GATES: dict[str, dict[str, float]] = {
    **{t: {"mean_kld": 0.001, "p99_kld": 0.01, "top1": 99.0, "ppl_ratio": 1.01} for t in ("f32", "f16", "bf16")},
    "q8_0": {"mean_kld": 0.014, "p99_kld": 0.1, "top1": 92.0, "ppl_ratio": 1.04},
    "q6_k": {"mean_kld": 0.055, "p99_kld": 0.25, "top1": 88.0, "ppl_ratio": 1.12},
    "q5_k_m": {"mean_kld": 0.11, "p99_kld": 0.6, "top1": 84.0, "ppl_ratio": 1.25},
    **{t: {"mean_kld": 0.19, "p99_kld": 1.0, "top1": 80.0, "ppl_ratio": 1.4}
       for t in ("q4_k_m", "q4_k_s", "q4_0", "q4_1", "q5_0", "q5_1", "q5_k_s", "iq4_nl", "iq4_xs")},
}


def quality_failures(q: dict[str, dict[str, float]], gates: dict[str, float] | None) -> list[str]:
    """The KLD gates a GGUF misses, one message each (empty: pass or no gate for its type).

    Args:
        q: ``{set name: summary}`` (:func:`axpack.quant_quality.summarize`).
        gates: :data:`QUALITY_GATES` entry: ``mean_kld``, ``p99_kld`` (max, nats),
            ``top1`` (min, %), ``ppl_ratio`` (max).
    """
    if not gates:
        return []
    fails = []
    for name, s in q.items():
        if not s.get("tokens"):
            continue
        if s["mean_kld"] > gates["mean_kld"]:
            fails.append(f"{name}: mean KLD {s['mean_kld']:.4f} > {gates['mean_kld']:g}")
        if s["p99_kld"] > gates["p99_kld"]:
            fails.append(f"{name}: p99 KLD {s['p99_kld']:.3f} > {gates['p99_kld']:g}")
        if s["top1"] < gates["top1"]:
            fails.append(f"{name}: same top-1 {s['top1']:.1f} % < {gates['top1']:g} %")
        if s["ppl_ratio"] > gates["ppl_ratio"]:
            fails.append(f"{name}: PPL ratio {s['ppl_ratio']:.3f} > {gates['ppl_ratio']:g}")
    return fails
