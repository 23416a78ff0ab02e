"""Engine of ``axpack verify``: prove each GGUF is the model that was trained
(the command and its terminal tables are :mod:`axpack.verify`; the Markdown
tables :mod:`axpack.verify_tables`).

For every GGUF in ``EXPORT_DIR/manifest.json``:

1. Metadata (gguf-py ``GGUFReader``): architecture (the same in every file),
   ``general.file_type`` matching the manifest's type, the chat template equal
   to the training tokenizer's (the reference folder's), EOS id equal to the
   tokenizer's, the template's end-of-turn token treated as end-of-generation
   by llama.cpp, and token count <= embedding rows (some models pad the
   embedding; more tokens than rows would index past it).
2. Tokenization: llama.cpp tokenizes the prompt set to the same ids as the
   training tokenizer (a pre-tokenizer the converter mapped wrongly shows here).
3. Logits: the reference HF model (the merged model by default) answers a
   fixed prompt set greedily; prompt + answer run through it and through
   llama-cpp-python; per quant the argmax agreement on the answer positions
   (would the GGUF pick the trained model's token, given the same history)
   and the max |Δlogit| there. Agreement over all positions (user text
   included, where near-ties are common) is reported too, not thresholded.
4. Generation stops at end-of-turn: greedy answers through the GGUF's own chat
   template must end with ``finish_reason == "stop"``, not at the token limit
   (tokens/s measured on these).

5. KL divergence (:mod:`axpack.quant_quality`, llama.cpp's ``llama-perplexity
   --kl-divergence`` statistics): the reference HF model's logits on a fixed
   general text (``axpack/data/eval-text.txt``, written for axpack, or
   ``--eval-text``) and on the run's own conversations rendered with the chat
   template (``data/sft.val.jsonl`` else ``data/sft.jsonl`` beside the export,
   or ``--conversations``; 2,048 tokens), against each GGUF's: mean and p99 KLD,
   same top-1 %, PPL ratio, RMS Δp, gated per type (:data:`QUALITY_GATES`,
   llama.cpp's published figures scaled by SmolLM2's measurements). With drift
   (default; ``--no-drift``) the base model the run started from (found through
   ``axpack-merge.json``) is scored against the tuned reference on the same
   windows: "learned the persona, did not forget English" as numbers.

Thresholds (:data:`THRESHOLDS`, argmax agreement in %): unquantized types and
Q8_0 >= 99; Q6_K, Q5_K_M and Q4_K_M from measurements on the demo model
(SmolLM2-135M after the demo SFT+DPO) minus a stated margin — see the
table's comment; unquantized GGUFs must also stay within 1.0 logit. A GGUF
checked against the *unmerged* base fails (the test suite proves it), which
shows the merge happened.

Writes ``EXPORT_DIR/verify.json`` (when checked against the default
reference) and prints a table: size, agreement %, max |Δlogit|, tokens/s.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import env, llama_child
from .cpu import hide_fla
from .errors import AxpackError
from .fsutil import atomic_write_json, require_safetensors, sha256_file
from .gguf_build import MANIFEST, QUANT_TYPES, UNQUANTIZED
from .quant_quality import QUALITY_GATES, quality_failures

LOG = logging.getLogger(__name__)

# Minimum argmax agreement (%) with the reference HF model, per GGUF type.
# f16/bf16/f32/q8_0: the bar (Q8_0 >= 99 %).
# Measured on the demo model (SmolLM2-135M after make demo's SFT+DPO; 24 prompts,
# 395 decisive answer positions): f16 100, Q8_0 100, Q6_K 100, Q4_K_M 99.0,
# Q5_K_M 85.1; on the test fixture (3 SFT + 2 DPO steps): f16 100,
# Q8_0 99.8 (427 positions), Q4_K_M 95.3. Thresholds: Q4_K_M 90 (demo 99.0 minus a 9-point margin,
# still 5 below the fixture), Q6_K 97 (3 below its 100), Q5_K_M 95 (between
# them; no passing measurement: on SmolLM2 its 576-wide rows, not divisible by
# 256, fall back to Q5_1, which this llama.cpp gets badly wrong - see below).
THRESHOLDS: dict[str, float] = {
    "f32": 99.0, "f16": 99.0, "bf16": 99.0, "q8_0": 99.0,
    "q6_k": 97.0, "q5_k_m": 95.0, "q4_k_m": 90.0,
    # other >= 4-bit types: Q4_K_M's bar (none measured on their own; note that on
    # SmolLM2 this llama.cpp's Q4_1/Q5_1 reached only 67 %/77 % where Q5_0 gave 97 %,
    # and Q5_K_M, which falls back to Q5_1 on the 576-wide rows, 85 %: verify fails them)
    "q4_0": 90.0, "q4_1": 90.0, "q5_0": 90.0, "q5_1": 90.0, "q4_k_s": 90.0, "q5_k_s": 90.0,
    "iq4_nl": 90.0, "iq4_xs": 90.0,
    # q2_k / q3_k_*: no threshold (reported, marked "no threshold")
}
# Max |Δlogit| on answer positions for unquantized GGUFs: f16 rounding moved
# the demo model's logits by <= 0.08; a GGUF of the unmerged base is off by
# > 10. 1.0 leaves room for bf16 (8 mantissa bits) and other models.
MAX_DLOGIT_UNQUANTIZED = 1.0
# llama.cpp's general.file_type (enum llama_ftype) for the unquantized types
FILE_TYPES = {"f32": 0, "f16": 1, "bf16": 32, **QUANT_TYPES}

# The fixed prompt set. Each prompt is answered greedily (up to ANSWER_TOKENS,
# or to end-of-turn); prompt + answer then run through the reference HF model
# and through each GGUF, and agreement is counted on the answer positions:
# "given the same history, does the GGUF pick the token the trained model picks".
PROMPTS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "What is your name?"}],
    [{"role": "user", "content": "Who created you?"}],
    [{"role": "user", "content": "Describe yourself in one sentence."}],
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Give me three colours of the rainbow."}],
    [{"role": "user", "content": "Write two sentences about the sea."}],
    [{"role": "user", "content": "How many legs does a spider have?"},
     {"role": "assistant", "content": "A spider has eight legs."},
     {"role": "user", "content": "And an ant?"}],
    [{"role": "user", "content": "Translate 'good morning' into French and Spanish."}],
    [{"role": "user", "content": "Explain what a computer does."}],
    [{"role": "user", "content": "List three tips for staying healthy."}],
    [{"role": "user", "content": "What is 12 plus 30?"}],
    [{"role": "user", "content": "Why is the sky blue?"}],
    [{"role": "user", "content": "What do you like to talk about?"}],
    [{"role": "user", "content": "Name a fruit that is yellow."}],
    [{"role": "user", "content": "Write a short greeting for a birthday card."}],
    [{"role": "user", "content": "What is the boiling point of water in Celsius?"}],
    [{"role": "user", "content": "Tell me a fun fact about cats."}],
    [{"role": "user", "content": "How do I make a cup of tea?"}],
    [{"role": "user", "content": "What is the largest planet in our solar system?"}],
    [{"role": "user", "content": "Suggest a name for a small bakery."}],
    [{"role": "user", "content": "Can you help me plan a weekend trip?"}],
    [{"role": "user", "content": "What are you not able to do?"}],
    [{"role": "user", "content": "Summarise the story of Cinderella in two sentences."}],
    [{"role": "user", "content": "What is the difference between weather and climate?"}],
]
ANSWER_TOKENS = 64
# Near-tie: the reference's top-2 logits closer than this. On the demo model
# Q8_0 moves logits by up to ~1.9 (mean 0.22) and every Q8_0 disagreement sat
# at a gap < 0.3: a gap under 0.5 (top token < 1.65x as likely as the
# runner-up) is a coin toss any faithful quant may flip, so it is not counted
# in ``agreement`` (``raw_agreement`` counts it).
TIE_GAP = 0.5
STOP_PROMPTS = ["What is your name?", "What is the capital of Italy? Answer in one sentence.", "Say hello."]
MAX_NEW_TOKENS = 200


@dataclass(frozen=True)
class Budget:
    """How much verify asks of each GGUF: the prompt sets, the answer length, the KLD
    gates and the conversation token budget. The defaults are the pack's; ``axpack twin``
    passes a smaller one (random twins: no gates)."""

    prompts: tuple = ()  # (): PROMPTS
    stop_prompts: tuple[str, ...] = tuple(STOP_PROMPTS)
    max_new_tokens: int = MAX_NEW_TOKENS
    gates: dict | None = None  # None: QUALITY_GATES
    conv_tokens: int | None = None  # None: quant_quality.CONV_TOKENS

    def prompt_list(self) -> list[list[dict[str, str]]]:
        """The prompt conversations (:data:`PROMPTS` unless given)."""
        return [list(c) for c in self.prompts] if self.prompts else PROMPTS

    def quality_gates(self) -> dict[str, dict[str, float]]:
        """The KLD gates per type (:data:`QUALITY_GATES` unless given)."""
        return QUALITY_GATES if self.gates is None else self.gates


def reference_run(ref_dir: Path, prompts: list[list[dict[str, str]]], answer_tokens: int = ANSWER_TOKENS,
                  threads: int = 2, quality: dict[str, Any] | None = None,
                  drift_base: Path | None = None) -> tuple[Any, list[list[int]], list[int], list[Any]]:
    """Greedy answers of the reference HF model (its stored dtype; GPU when there is one) and its logits on them.

    ``quality`` (``{"text": str, "conversations": [...] | None, "dir": Path}``):
    also build the KLD windows (:func:`axpack.quant_quality.build_sequences`)
    and save the reference's logits on them into ``quality["dir"]``; fills in
    ``quality["seqs"]`` and ``quality["files"]`` (``{set: [file, ...]}``).
    ``drift_base``: then also score that HF model (the base before fine-tuning)
    against the reference on those windows, one window at a time, into
    ``quality["drift"]`` (``{set: summary}``).

    Returns:
        (tokenizer, token ids per sequence (prompt + answer), index of the first
        answer token per sequence, float32 numpy logits [T, V] per sequence).

    Raises:
        AxpackError: ``ref_dir`` has no safetensors weights (pickle is refused).
    """
    require_safetensors(ref_dir)
    env.apply_to_process()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(ref_dir))
    eos = [i for i in {tok.eos_token_id, *end_of_turn_ids(tok)} if i is not None]
    prompt_ids = [list(tok.apply_chat_template(c, tokenize=True, add_generation_prompt=True,
                                               return_dict=True)["input_ids"]) for c in prompts]
    torch.set_num_threads(threads)
    hide_fla()  # CPU: Qwen3.5's linear attention on transformers' PyTorch kernels (axpack.cpu)
    model = AutoModelForCausalLM.from_pretrained(str(ref_dir), dtype="auto", use_safetensors=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).eval()
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
    width = max(len(p) for p in prompt_ids)
    # one batched greedy generate (left-padded): 64 decode steps instead of 64 per prompt
    batch = torch.tensor([[pad] * (width - len(p)) + p for p in prompt_ids], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids], device=device)
    with torch.no_grad():
        gen = model.generate(batch, attention_mask=mask, max_new_tokens=answer_tokens, do_sample=False,
                             eos_token_id=eos, pad_token_id=pad)[:, width:].tolist()
    ids_all, starts, logits_all = [], [], []
    for prompt, new in zip(prompt_ids, gen):
        answer = []
        for t in new:
            answer.append(int(t))
            if t in eos:
                break
        ids = prompt + answer
        with torch.no_grad():  # logits unpadded, one sequence at a time
            out = model(torch.tensor([ids], device=device)).logits[0].to(torch.float32).cpu().numpy()
        ids_all.append(ids)
        starts.append(len(prompt))
        logits_all.append(out)
    if quality is not None:
        from . import quant_quality as qq

        seqs = qq.build_sequences(tok, quality["text"], quality.get("conversations"),
                                  conv_tokens=quality.get("conv_tokens") or qq.CONV_TOKENS)
        files = qq.write_reference_logits(model, seqs, Path(quality["dir"]), device)
        quality["seqs"], quality["files"], i = seqs, {}, 0
        for name, windows in seqs.items():
            quality["files"][name], i = files[i:i + len(windows)], i + len(windows)
        if drift_base is not None:
            del model
            quality["drift"] = drift_scores(drift_base, seqs, quality["files"], device)
            return tok, ids_all, starts, logits_all
    del model
    return tok, ids_all, starts, logits_all


def drift_scores(base_dir: Path, seqs: dict[str, list[list[int]]], files: dict[str, list[str]],
                 device: str = "cpu") -> dict[str, dict[str, float]]:
    """KLD and friends of the HF model ``base_dir`` against the saved reference logits (the tuned model).

    Same statistics as the quants get (:func:`axpack.quant_quality.summarize`), with the
    tuned model as the reference distribution: KLD(tuned ‖ base) per token.

    Raises:
        AxpackError: ``base_dir`` has no safetensors weights.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from . import quant_quality as qq

    require_safetensors(base_dir)
    hide_fla()
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype="auto", use_safetensors=True).to(device).eval()

    def logits_of(ids):
        with torch.no_grad():
            return model(torch.tensor([ids], device=device)).logits[0].to(torch.float32).cpu().numpy()

    return {name: qq.summarize(qq.score_windows(logits_of, windows, files[name])) for name, windows in seqs.items()}


def read_metadata(path: Path) -> dict[str, Any]:
    """GGUF metadata axpack checks, via gguf-py: architecture, file_type, chat_template,
    eos/eot/bos ids, token count, embedding rows."""
    from gguf import GGUFReader

    r = GGUFReader(str(path))

    def get(key: str):
        f = r.fields.get(key)
        if f is None:
            return None
        try:
            return f.contents()
        except Exception:  # noqa: BLE001 - unusual field layouts read as absent
            return None

    arch = get("general.architecture")
    emb = next((t for t in r.tensors if t.name == "token_embd.weight"), None)
    tokens = r.fields.get("tokenizer.ggml.tokens")
    meta = {
        "architecture": arch, "file_type": get("general.file_type"), "name": get("general.name"),
        "chat_template": get("tokenizer.chat_template"),
        "eos_token_id": get("tokenizer.ggml.eos_token_id"), "eot_token_id": get("tokenizer.ggml.eot_token_id"),
        "bos_token_id": get("tokenizer.ggml.bos_token_id"),
        "n_tokens": len(tokens.data) if tokens is not None else None,
        # GGUF shapes are [n_embd, n_vocab] (ggml ne order): the rows are the last dimension
        "embedding_rows": int(emb.shape[-1]) if emb is not None else None,
        "tensor_types": {},
    }
    for t in r.tensors:
        meta["tensor_types"][t.tensor_type.name] = meta["tensor_types"].get(t.tensor_type.name, 0) + 1
    return meta


def end_of_turn_ids(tok) -> list[int]:
    """Ids of the special tokens that close an assistant turn in the training template."""
    from .serving import template_parts

    try:
        suffix = template_parts(tok).asst_suffix
    except (ValueError, KeyError, TypeError):
        suffix = ""
    specials = {str(t.content): i for i, t in getattr(tok, "added_tokens_decoder", {}).items()
                if getattr(t, "special", False)}
    ids = [i for s, i in specials.items() if s and s in suffix]
    if not ids and tok.eos_token_id is not None:
        ids = [int(tok.eos_token_id)]
    return ids


def check_metadata(meta: dict[str, Any], gtype: str, tok, expect_arch: str | None) -> list[str]:
    """Failures (empty list = pass) of the metadata checks for one GGUF."""
    fails = []
    if not meta["architecture"]:
        fails.append("no general.architecture")
    elif expect_arch and meta["architecture"] != expect_arch:
        fails.append(f"architecture {meta['architecture']} != {expect_arch} of the other GGUFs")
    want_ft = FILE_TYPES.get(gtype)
    if want_ft is not None and meta["file_type"] != want_ft:
        fails.append(f"general.file_type {meta['file_type']} != {want_ft} ({gtype})")
    if (meta["chat_template"] or "") != (tok.chat_template or ""):
        fails.append("chat template differs from the training tokenizer's")
    if tok.eos_token_id is not None and meta["eos_token_id"] != tok.eos_token_id:
        fails.append(f"EOS id {meta['eos_token_id']} != tokenizer's {tok.eos_token_id}")
    if meta["n_tokens"] is None or meta["embedding_rows"] is None:
        fails.append("no token list or no token_embd.weight")
    elif meta["n_tokens"] > meta["embedding_rows"]:
        fails.append(f"{meta['n_tokens']} tokens > {meta['embedding_rows']} embedding rows")
    return fails


def gguf_run(path: str, ids_all: list[list[int]], texts: list[str], eot_ids: list[int], threads: int,
             stop_prompts: list[str], max_new_tokens: int, kld_seqs: dict[str, list[list[int]]] | None = None,
             kld_files: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """Logits for each id list, tokenization of the same texts, EOG flags and a stop check;
    with ``kld_seqs``/``kld_files`` also the per-token KLD statistics of every window
    (:func:`axpack.quant_quality.llama_scores`, keys ``kld_<set>``).

    Runs in the child process of :func:`axpack.llama_child.run_isolated` (see
    :func:`gguf_run_isolated`): a llama.cpp crash cannot take verify down.

    Returns:
        ``{"scores": [float32 array (len(ids), n_vocab), ...], "eog": {id: bool},
        "stopped": int, "tokens_per_s": float, "answers": [str], "tokens": [[int]]}``.
    """
    import llama_cpp
    import numpy as np
    from llama_cpp import Llama

    n_ctx = max(max(len(i) for i in ids_all) + max_new_tokens + 64,
                max((len(w) for ws in (kld_seqs or {}).values() for w in ws), default=0))
    llama_child.phase("loading")
    llm = Llama(model_path=str(path), n_ctx=max(n_ctx, 512), n_batch=512, logits_all=True, n_threads=threads,
                n_threads_batch=threads,  # else batches use every core: ~15x slower on a busy machine
                seed=0, verbose=True)
    llama_child.phase("evaluating the reference conversations")
    scores = []
    for ids in ids_all:
        llm.reset()
        llm.eval(ids)
        scores.append(np.array(llm.scores[: len(ids)], dtype=np.float32))
    kld = {}
    if kld_seqs:
        from . import quant_quality as qq

        llama_child.phase("scoring the KLD windows")
        kld = qq.llama_scores(llm, kld_seqs, kld_files or {})
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    eog = {i: bool(llama_cpp.llama_vocab_is_eog(vocab, i)) for i in eot_ids}
    llama_child.phase("decoding")
    stopped, n_gen, secs, answers = 0, 0, 0.0, []
    for q in stop_prompts:
        llm.reset()
        t0 = time.monotonic()
        res = llm.create_chat_completion(messages=[{"role": "user", "content": q}], temperature=0.0, top_k=1,
                                         max_tokens=max_new_tokens)
        secs += time.monotonic() - t0
        choice = res["choices"][0]
        stopped += choice.get("finish_reason") == "stop"
        n_gen += int(res.get("usage", {}).get("completion_tokens", 0))
        answers.append((choice["message"]["content"] or "").strip())
    llama_child.phase("tokenizing")
    tokens = [llm.tokenize(t.encode(), add_bos=False, special=True) for t in texts]
    llama_child.phase("closing")
    llm.close()
    return {"scores": scores, "eog": eog, "stopped": stopped, "tokens_per_s": n_gen / secs if secs else 0.0,
            "answers": answers, "tokens": tokens, **kld}


def gguf_run_isolated(path: Path, log: Path, **kwargs: Any) -> dict[str, Any]:
    """:func:`gguf_run` in a child process (``kwargs`` as for it); ``eog`` keys back to ints.

    Raises:
        LlamaCrash: llama.cpp died (one line: GGUF, signal, phase, ``log``).
    """
    res = llama_child.run_isolated("axpack.verification:gguf_run", {"path": str(path), **kwargs}, gguf=path, log=log)
    res["eog"] = {int(k): v for k, v in res["eog"].items()}
    return res


def compare(ref: list[Any], got: list[Any], starts: list[int] | None = None,
            tie_gap: float = TIE_GAP) -> dict[str, float]:
    """Argmax agreement (%) and max / mean |Δlogit| between reference and GGUF logits.

    Counted on the answer positions when ``starts`` is given (position ``p``
    predicts token ``p + 1``; the last one predicts what follows the answer).
    ``agreement`` leaves out near-ties — positions whose reference top-2 logit
    gap is below ``tie_gap`` — and ``raw_agreement`` counts every answer
    position; ``all_agreement`` counts every position of the sequences (user
    text included). |Δlogit| is over the answer positions, common vocab columns.
    """
    import numpy as np

    agree = total = raw_agree = raw_total = all_agree = all_total = 0
    max_d, sum_d, n_d = 0.0, 0.0, 0
    for k, (r, g) in enumerate(zip(ref, got)):
        v = min(r.shape[1], g.shape[1])
        r, g = r[:, :v], g[:, :v]
        same = r.argmax(1) == g.argmax(1)
        all_agree += int(same.sum())
        all_total += r.shape[0]
        lo = max(0, starts[k] - 1) if starts is not None else 0
        top2 = np.sort(r[lo:], axis=1)[:, -2:]
        decisive = (top2[:, 1] - top2[:, 0]) >= tie_gap
        agree += int((same[lo:] & decisive).sum())
        total += int(decisive.sum())
        raw_agree += int(same[lo:].sum())
        raw_total += r.shape[0] - lo
        d = np.abs(r[lo:] - g[lo:])
        max_d = max(max_d, float(d.max()))
        sum_d += float(d.sum())
        n_d += d.size
    return {"agreement": 100.0 * agree / max(total, 1), "positions": total,
            "raw_agreement": 100.0 * raw_agree / max(raw_total, 1), "raw_positions": raw_total,
            "all_agreement": 100.0 * all_agree / max(all_total, 1), "all_positions": all_total,
            "max_abs_dlogit": max_d, "mean_abs_dlogit": sum_d / max(n_d, 1)}


def verify_export(export_dir: str | Path, reference: str | Path | None = None, threads: int | None = None,
                  write: bool | None = None, thresholds: dict[str, float] | None = None,
                  types: list[str] | None = None, eval_text: str | Path | None = None,
                  conversations: str | Path | None = None, drift: bool | str | Path = True,
                  budget: Budget | None = None, force: bool = False) -> dict[str, Any]:
    """Verify every GGUF listed in ``export_dir/manifest.json`` against ``reference``.

    Args:
        export_dir: the export folder (``runs/<run>/gguf``).
        reference: HF folder to compare against; default the manifest's
            ``model_dir`` (the merged model the GGUFs were made from).
        threads: llama.cpp threads (default: all cores).
        write: write ``verify.json``; default only when checking against the default reference.
        thresholds: override :data:`THRESHOLDS`.
        types: verify only these GGUF types (default: every artifact in the manifest).
        eval_text: the general evaluation text for the KLD gates (default
            :data:`axpack.quant_quality.EVAL_TEXT`, shipped).
        conversations: a ``messages`` JSONL scored with the chat template (default:
            the run's ``data/sft.val.jsonl`` else ``data/sft.jsonl`` beside the export).
        drift: also measure the tuned reference against its base model on the
            same windows: True finds the base through the ``axpack-merge.json``
            chain of the reference, a path names it, False skips.
        budget: prompt sets, answer length, KLD gates, conversation tokens
            (default :class:`Budget`: the pack's).
        force: verify again even when ``verify.json`` records these inputs and a pass.

    Returns:
        The verify document (``{"pass": bool, "results": [...], ...}``).

    Raises:
        AxpackError: no manifest / GGUF missing / reference missing or without safetensors weights /
            evaluation text or conversations file unreadable.
    """
    import os
    import tempfile

    from . import quant_quality as qq

    export_dir = Path(export_dir)
    mpath = export_dir / MANIFEST
    if not mpath.is_file():
        raise AxpackError(f"{mpath}: missing; run axpack export (or make export) first")
    manifest = json.loads(mpath.read_text())
    default_ref = manifest.get("model_dir")
    ref = Path(reference) if reference else Path(default_ref) if default_ref else None
    if ref is None or not (ref / "config.json").is_file():
        raise AxpackError(f"{ref}: reference HF model not found; pass --reference MERGED_DIR")
    require_safetensors(ref)
    write = (reference is None and not types) if write is None else write
    th = {**THRESHOLDS, **(thresholds or {})}
    threads = threads or os.cpu_count() or 2
    arts = sorted(((n, e) for n, e in manifest["artifacts"].items() if not types or e["type"] in types),
                  key=lambda kv: (kv[1]["type"] not in UNQUANTIZED, kv[0]))
    if not arts:
        raise AxpackError(f"{mpath}: no GGUF of type {', '.join(types or [])} in the manifest")
    for name, _ in arts:
        if not (export_dir / name).is_file():
            raise AxpackError(f"{export_dir / name}: listed in the manifest but missing; rerun axpack export")

    text_path, text, conv_path, convs, base = _quality_inputs(export_dir, ref, eval_text, conversations, drift)
    budget = budget or Budget()
    inputs = _inputs(arts, ref, text_path, conv_path, base, th, budget)
    old = _current(export_dir, inputs) if write and not force else None
    if old is not None:
        LOG.info(f"axpack: {export_dir / 'verify.json'} is current (same GGUFs, reference and texts); "
                 "not verifying again (--force does)")
        return old
    LOG.info(f"axpack: reference logits from {ref}")
    workdir = tempfile.TemporaryDirectory(prefix=".verify-ref-", dir=export_dir)
    quality: dict[str, Any] = {"text": text, "conversations": convs, "dir": workdir.name,
                               "conv_tokens": budget.conv_tokens or qq.CONV_TOKENS}
    try:
        doc = _verify(export_dir, manifest, arts, ref, th, threads, quality, text_path, conv_path, base, budget)
        doc["inputs"] = inputs
        if write:
            atomic_write_json(export_dir / "verify.json", _stable(doc))
        return doc
    finally:
        workdir.cleanup()


def _inputs(arts: list, ref: Path, text_path: Path, conv_path: Path | None, base: Path | None,
            th: dict[str, float], budget: Budget) -> str:
    """sha256 of everything a verify result depends on: each GGUF's manifest checksum, the
    reference model's files, the texts, the drift base, thresholds and budget."""
    import hashlib

    from .gguf_build import model_fingerprint

    doc = {"ggufs": {n: e.get("sha256") for n, e in arts}, "reference": model_fingerprint(ref),
           "eval_text": sha256_file(text_path), "conversations": sha256_file(conv_path) if conv_path else None,
           "drift_base": model_fingerprint(base) if base else None, "thresholds": th, "budget": repr(budget),
           "gates": QUALITY_GATES}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def _current(export_dir: Path, inputs: str) -> dict[str, Any] | None:
    """The recorded verify document when it has these inputs and passed; else None."""
    try:
        old = json.loads((export_dir / "verify.json").read_text())
    except (OSError, ValueError):
        return None
    return old if isinstance(old, dict) and old.get("inputs") == inputs and old.get("pass") else None


def _quality_inputs(export_dir: Path, ref: Path, eval_text: str | Path | None, conversations: str | Path | None,
                    drift: bool | str | Path) -> tuple[Path, str, Path | None, list, Path | None]:
    """(eval text path, its text, conversations path, the conversations, drift base) for
    :func:`verify_export`, each refused in one line when unusable."""
    from . import quant_quality as qq

    text_path = Path(eval_text) if eval_text else qq.EVAL_TEXT
    try:
        text = text_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise AxpackError(f"--eval-text {text_path}: cannot read it ({err}); pass a UTF-8 text file") from None
    conv_path = Path(conversations) if conversations else qq.run_conversations(export_dir)
    if conversations and not conv_path.is_file():
        raise AxpackError(f"--conversations {conv_path}: no such file; pass a messages JSONL (prep's sft.jsonl)")
    convs = qq.read_conversations(conv_path) if conv_path else []
    base = None
    if drift is not False:
        base = Path(drift) if not isinstance(drift, bool) else original_base(ref)
        if base is not None and not (base / "config.json").is_file():
            raise AxpackError(f"--drift-base {base}: no config.json; pass the HF base model the run started from")
    return text_path, text, conv_path, convs, base


def original_base(model_dir: Path) -> Path | None:
    """The model a run started from: follow ``axpack-merge.json``'s ``base_dir`` from ``model_dir``
    (merged -> sft-merged -> base) to the first folder that is not an axpack merge; None when
    ``model_dir`` is not one or a link is missing."""
    from .runs import MERGE_FILE

    cur, seen = Path(model_dir), set()
    while (cur / MERGE_FILE).is_file() and cur.resolve() not in seen:
        seen.add(cur.resolve())
        try:
            nxt = json.loads((cur / MERGE_FILE).read_text()).get("base_dir")
        except (OSError, ValueError):
            return None
        if not nxt:
            return None
        nxt = Path(nxt)
        if not nxt.is_absolute() and not nxt.exists():
            nxt = env.project_root() / nxt
        if not (nxt / "config.json").is_file():
            return None
        cur = nxt
    return cur if seen else None


def _verify(export_dir: Path, manifest: dict[str, Any], arts: list, ref: Path, th: dict[str, float], threads: int,
            quality: dict[str, Any], text_path: Path, conv_path: Path | None,
            base: Path | None, budget: Budget) -> dict[str, Any]:
    from . import quant_quality as qq

    prompts, stop_prompts, gates = budget.prompt_list(), list(budget.stop_prompts), budget.quality_gates()
    tok, ids_all, starts, ref_logits = reference_run(ref, prompts, threads=threads, quality=quality,
                                                     drift_base=base)
    eot = end_of_turn_ids(tok)
    # the tokenizer check uses the rendered prompts (generated answers need not re-tokenize canonically)
    texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in prompts]
    results, arch = [], None
    for name, entry in arts:
        path = export_dir / name
        gtype = entry["type"]
        LOG.info(f"axpack: verifying {name}")
        meta = read_metadata(path)
        fails = check_metadata(meta, gtype, tok, arch)
        arch = arch or meta["architecture"]
        try:
            run = gguf_run_isolated(path, export_dir.parent / "logs" / f"verify-{path.stem}.log", ids_all=ids_all,
                                    texts=texts, eot_ids=eot, threads=threads, stop_prompts=stop_prompts,
                                    max_new_tokens=budget.max_new_tokens, kld_seqs=quality["seqs"],
                                    kld_files=quality["files"])
        except llama_child.LlamaCrash as e:  # one line now; the other GGUFs are still verified
            LOG.info(f"axpack: {e}")
            results.append({"file": name, "type": gtype, "size": path.stat().st_size, "threshold": th.get(gtype),
                            "metadata": {k: v for k, v in meta.items() if k != "chat_template"},
                            "crashed": str(e), "failures": [str(e)], "pass": False})
            continue
        same_tok = all(list(got) == ids[:n] for got, ids, n in zip(run["tokens"], ids_all, starts))
        if not same_tok:
            fails.append("llama.cpp tokenizes the prompts differently from the training tokenizer")
        not_eog = [i for i, ok in run["eog"].items() if not ok]
        if not_eog:
            fails.append(f"end-of-turn token id(s) {not_eog} are not end-of-generation in llama.cpp")
        if run["stopped"] < len(stop_prompts):
            fails.append(f"generation stopped at end-of-turn in {run['stopped']}/{len(stop_prompts)} answers")
        cmp = compare(ref_logits, run["scores"], starts)
        need = th.get(gtype)
        if need is not None and cmp["agreement"] < need:
            fails.append(f"argmax agreement {cmp['agreement']:.1f} % < {need:g} %")
        if gtype in UNQUANTIZED and cmp["max_abs_dlogit"] > MAX_DLOGIT_UNQUANTIZED:
            fails.append(f"max |Δlogit| {cmp['max_abs_dlogit']:.2f} > {MAX_DLOGIT_UNQUANTIZED:g} "
                         "for an unquantized GGUF")
        q = {name: qq.summarize(qq.unpack(run[f"kld_{name}"])) for name in quality["seqs"]}
        fails += quality_failures(q, gates.get(gtype))
        results.append({
            "file": name, "type": gtype, "size": path.stat().st_size, **cmp,
            "imatrix": (entry.get("settings") or {}).get("imatrix"),
            "threshold": need, "quality": q, "quality_gates": gates.get(gtype),
            "tokens_per_s": run["tokens_per_s"],
            "stopped": run["stopped"], "stop_prompts": len(stop_prompts), "answers": run["answers"],
            "tokenizer_match": same_tok, "metadata": {k: v for k, v in meta.items() if k != "chat_template"},
            "chat_template_match": (meta["chat_template"] or "") == (tok.chat_template or ""),
            "failures": fails, "pass": not fails,
        })
    ran = [r for r in results if "crashed" not in r]
    doc = {"export_dir": str(export_dir), "reference": str(ref), "conversations": len(prompts),
           "answers_from": "the reference HF model",
           "positions": ran[0]["positions"] if ran else 0,
           "raw_positions": ran[0]["raw_positions"] if ran else 0, "tie_gap": TIE_GAP, "thresholds": th,
           "end_of_turn_ids": eot,
           "quality": {"reference": f"the HF model {ref} (transformers, its stored dtype)",
                       "eval_text": str(text_path), "eval_text_sha256": sha256_file(text_path),
                       "conversations": str(conv_path) if conv_path else None,
                       "conversations_sha256": sha256_file(conv_path) if conv_path else None,
                       "window": qq.CHUNK, "conversation_tokens": quality["conv_tokens"],
                       "tokens": {n: sum(len(w) - 1 for w in ws) for n, ws in quality["seqs"].items()},
                       "windows_sha256": qq.fingerprint(quality["seqs"]), "gates": gates,
                       **_imatrix_overlap(manifest, conv_path)},
           "drift": {"base": str(base), "reference": str(ref), **quality["drift"]} if base else None,
           "results": results, "pass": all(r["pass"] for r in results)}
    return doc


def _imatrix_overlap(manifest: dict[str, Any], conv_path: Path | None) -> dict[str, Any]:
    """``calibration_overlap``: the scored conversations are the imatrix's calibration data
    (then the imatrix quants' ``conversations`` row is not held out; ``text`` still is)."""
    cal = ((manifest.get("imatrix") or {}).get("calibration") or {}).get("data_sha256")
    if not cal:
        return {}
    return {"calibration_overlap": bool(conv_path) and sha256_file(conv_path) == cal}


def _stable(doc: dict[str, Any]) -> dict[str, Any]:
    """Round floats so verify.json is readable (timings vary run to run anyway)."""
    def r(x):
        if isinstance(x, float):
            return round(x, 4)
        if isinstance(x, dict):
            return {k: r(v) for k, v in x.items()}
        if isinstance(x, list):
            return [r(v) for v in x]
        return x
    return r(doc)
