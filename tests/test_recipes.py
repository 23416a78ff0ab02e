"""Recipe fidelity: every figure of the systems' proven recipes (issue #13), one table.

A config named after a system is that system's recipe, value for value; its
improvements are sibling variants (``-packed``, ``-deltanet``). Each row below
is one figure from a system's own records, checked against the shipped config
and ``axpack plan`` (steps, effective batch, trainable parameters, memory) or
the config's ``# axpack:`` header (quant set, llama-server flags). A failing
row names the figure, so a config change that breaks a recipe says which.

Cost: no model loads; ~6 s here (the transformers import of the template test).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from axpack.cli import main
from axpack.formatting import fmt_params
from axpack.plan import plan_config, render_markdown
from axpack.serving import read_directives
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

PERSONA, PERSONA_DPO = "qwen3.5-9b/sft-qlora.yaml", "qwen3.5-9b/dpo-qlora.yaml"
SCRIPT = "llama-3.2-3b/sft-qlora-script.yaml"
OPS_8GB, OPS_A100 = "qwen2.5-7b/sft-qlora-8gb.yaml", "qwen2.5-7b/sft-qlora-a100.yaml"
PLANC_SFT, PLANC_DPO = "qwen2.5-7b/sft-qlora-v1.yaml", "qwen2.5-7b/dpo-qlora-planc.yaml"
STYLE_Q, STYLE_L = "llama-3.1-8b/sft-qlora-style.yaml", "llama-3.1-8b/sft-lora-style.yaml"
SEVEN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# (figure as the system's records state it, config, training examples, eff. batch, total steps)
STEPS = [
    ("persona SFT: 1,886 examples × 3 epochs ÷ 32 = 177 steps", PERSONA, 1886, 32, 177),
    ("persona DPO: 180 pairs × 2 epochs ÷ 8 = 45 steps", PERSONA_DPO, 180, 8, 45),
    ("script: 9,007 train windows ÷ 16 = 563 steps per epoch", SCRIPT, 9007, 16, 563),
    # "~2,900 examples -> ~1,087 steps": 2,897 and 2,898 are the counts that give 1,087 exactly
    ("ops 8 GB: ~2,900 examples × 3 ÷ 8 = ~1,087 steps", OPS_8GB, 2898, 8, 1087),
    ("ops A100: 4 × GA 4 = eff. batch 16", OPS_A100, 2898, 16, 544),
    ("Plan C SFT v1: 2 × GA 8 = 16", PLANC_SFT, 1000, 16, 188),
    ("Plan C DPO: 2 × GA 8 = 16", PLANC_DPO, 1000, 16, 63),
    ("style QLoRA: 36 train (4 validation in their own file), GA 4", STYLE_Q, 36, 4, 27),
    ("style LoRA: 36 train (4 validation in their own file), GA 4", STYLE_L, 36, 4, 27),
]

# (figure, config, trainable parameters as the records give them, exact count)
PARAMS = [
    ("style QLoRA: 168M trainable (r64, every linear layer, Llama-3.1-8B: 167.8M)", STYLE_Q, "168M", 167_772_160),
    ("style LoRA: 168M trainable (r64, every linear layer, Llama-3.1-8B: 167.8M)", STYLE_L, "168M", 167_772_160),
]

# config -> the recipe's values, key by key (what the records state; nothing else)
VALUES = {
    PERSONA: {"adapter": "qlora", "load_in_4bit": True, "lora_r": 64, "lora_alpha": 128, "lora_dropout": 0.05,
              "lora_target_modules": SEVEN, "learning_rate": 1e-4, "lr_scheduler": "cosine", "warmup_ratio": 0.05,
              "num_epochs": 3, "micro_batch_size": 16, "gradient_accumulation_steps": 2, "sequence_len": 1024,
              "sample_packing": False, "optimizer": "adamw_bnb_8bit", "weight_decay": 0.01, "bf16": True,
              "gradient_checkpointing": True, "val_set_size": 0, "chat_template_kwargs": {"enable_thinking": False}},
    PERSONA_DPO: {"rl": "dpo", "rl_beta": 0.1, "learning_rate": 5e-6, "num_epochs": 2, "micro_batch_size": 4,
                  "gradient_accumulation_steps": 2, "warmup_ratio": 0.1,
                  "chat_template_kwargs": {"enable_thinking": False}},
    SCRIPT: {"adapter": "qlora", "load_in_4bit": True, "lora_r": 32, "lora_alpha": 32, "lora_dropout": 0.1,
             "lora_target_linear": True, "learning_rate": 3e-5, "lr_scheduler": "cosine", "num_epochs": 1,
             "warmup_steps": 50, "micro_batch_size": 4, "gradient_accumulation_steps": 4, "sequence_len": 2048,
             "weight_decay": 0.005, "eval_steps": 50, "save_steps": 50, "logging_steps": 10, "eval_batch_size": 2,
             "val_set_size": 0, "bf16": True},
    OPS_8GB: {"adapter": "qlora", "load_in_4bit": True, "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05,
              "lora_target_linear": True, "learning_rate": 2e-4, "lr_scheduler": "cosine", "warmup_ratio": 0.1,
              "num_epochs": 3, "micro_batch_size": 1, "gradient_accumulation_steps": 8, "sequence_len": 1024,
              "sample_packing": False, "optimizer": "paged_adamw_8bit", "weight_decay": 0.01,
              "gradient_checkpointing": True, "liger_fused_linear_cross_entropy": True, "save_steps": 100,
              "save_total_limit": 3, "use_tensorboard": True},
    OPS_A100: {"adapter": "qlora", "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "learning_rate": 2e-4,
               "warmup_ratio": 0.1, "num_epochs": 3, "micro_batch_size": 4, "gradient_accumulation_steps": 4,
               "sequence_len": 4096, "sample_packing": False, "optimizer": "paged_adamw_8bit", "weight_decay": 0.01,
               "save_steps": 100, "save_total_limit": 3, "use_tensorboard": True},
    PLANC_SFT: {"lora_r": 64, "lora_alpha": 128, "lora_dropout": 0.05, "learning_rate": 2e-5, "warmup_ratio": 0.05,
                "num_epochs": 3, "micro_batch_size": 2, "gradient_accumulation_steps": 8, "sequence_len": 4096,
                "sample_packing": False, "optimizer": "adamw_torch_fused", "weight_decay": 0.01, "max_grad_norm": 1.0},
    PLANC_DPO: {"base_model": "runs/plan-c/sft-merged", "lora_r": 32, "lora_alpha": 64, "learning_rate": 5e-6,
                "warmup_ratio": 0.1, "num_epochs": 1, "micro_batch_size": 2, "gradient_accumulation_steps": 8,
                "rl": "dpo", "rl_beta": 0.1, "dpo_loss_type": ["sigmoid"], "sequence_len": 4096},
    STYLE_Q: {"adapter": "qlora", "load_in_4bit": True, "lora_r": 64, "lora_target_linear": True, "val_set_size": 0,
              "sequence_len": 4096, "warmup_ratio": 0.1, "gradient_accumulation_steps": 4, "optimizer": "adamw_torch"},
    STYLE_L: {"adapter": "lora", "lora_r": 64, "lora_target_linear": True, "val_set_size": 0, "sequence_len": 4096,
              "warmup_ratio": 0.1, "gradient_accumulation_steps": 4, "optimizer": "adamw_torch"},
}
# keys a recipe states are absent (style: "no eval_steps", "no lora_modules_to_save")
ABSENT = {
    STYLE_Q: ["eval_steps", "lora_modules_to_save"],
    STYLE_L: ["eval_steps", "lora_modules_to_save"],
    PERSONA: ["test_datasets"],
}

OPS_SERVE = ["--port", "8081", "--n-gpu-layers", "99", "--ctx-size", "4096", "--threads", "6", "--flash-attn", "on",
             "--cont-batching", "--chat-template", "chatml"]
# (figure, config, quant set, outtype or None, llama-server flags after -m)
EXPORT = [
    ("persona: export q4_k_m, q5_k_m, q6_k; served with thinking off", PERSONA, "q4_k_m,q5_k_m,q6_k", None,
     ["--jinja", "--reasoning", "off"]),
    ("persona DPO: the same export as SFT", PERSONA_DPO, "q4_k_m,q5_k_m,q6_k", None, ["--jinja", "--reasoning", "off"]),
    # the recipe's bare --flash-attn is "--flash-attn on" in the pinned llama.cpp (the flag takes on|off|auto)
    ("ops 8 GB: GGUF F16 + Q4_K_M + Q5_K_M; llama-server --port 8081 -ngl 99 -c 4096 ...", OPS_8GB, "q4_k_m,q5_k_m",
     "f16", OPS_SERVE),
    ("ops A100: the ops export and server", OPS_A100, "q4_k_m,q5_k_m", "f16", OPS_SERVE),
]


def cfg(rel: str) -> dict:
    return yaml.safe_load((CONFIGS / rel).read_text(encoding="utf-8"))


@pytest.mark.parametrize(("figure", "rel", "n", "eff", "steps"), STEPS, ids=[s[0] for s in STEPS])
def test_plan_reproduces_the_recipes_steps(figure, rel, n, eff, steps):
    p = plan_config(CONFIGS / rel, num_examples=n, tokenize=False)
    assert p.eff_batch == eff, f"recipe figure '{figure}': {rel} has effective batch {p.eff_batch}"
    assert p.train_examples == n, f"recipe figure '{figure}': --num-examples {n} must be the training examples"
    assert p.steps_exact and p.total_steps == steps, f"recipe figure '{figure}': {rel} plans {p.total_steps} steps"


@pytest.mark.parametrize(("figure", "rel", "shown", "exact"), PARAMS, ids=[p[0] for p in PARAMS])
def test_plan_reproduces_the_recipes_trainable_params(figure, rel, shown, exact):
    p = plan_config(CONFIGS / rel, num_examples=36, tokenize=False)
    assert p.model == "meta-llama/Llama-3.1-8B-Instruct", f"recipe figure '{figure}': base is {p.model}"
    assert p.trainable_params == exact and fmt_params(p.trainable_params) == shown, (
        f"recipe figure '{figure}': {rel} trains {p.trainable_params:,} ({fmt_params(p.trainable_params)})")


@pytest.mark.parametrize("rel", sorted(VALUES), ids=sorted(VALUES))
def test_config_carries_the_recipes_values(rel):
    c = cfg(rel)
    wrong = {k: (c.get(k, "<absent>"), v) for k, v in VALUES[rel].items() if c.get(k, "<absent>") != v}
    assert not wrong, f"{rel} differs from its recipe (key: (config, recipe)): {wrong}"
    present = [k for k in ABSENT.get(rel, []) if k in c]
    assert not present, f"{rel}: the recipe has no {present}"


@pytest.mark.parametrize(("figure", "rel", "quants", "outtype", "serve"), EXPORT, ids=[e[0] for e in EXPORT])
def test_export_and_serving_come_from_the_config(figure, rel, quants, outtype, serve):
    d = read_directives(CONFIGS / rel)
    assert (d.quants, d.outtype, d.serve) == (quants, outtype, serve), f"recipe figure '{figure}': {rel} says {d}"


def test_style_validation_is_a_separate_file_and_plan_counts_training_examples():
    """`--num-examples N` is the training examples when validation is its own file
    (test_datasets, val_set_size 0): nothing is held out of N."""
    for rel in (STYLE_Q, STYLE_L, SCRIPT):
        c = cfg(rel)
        assert c["test_datasets"] and c["val_set_size"] == 0, rel
        assert plan_config(CONFIGS / rel, num_examples=36, tokenize=False).val_examples == 0, rel


def test_cli_plan_prints_the_script_recipes_563_steps():
    res = CliRunner().invoke(main, ["plan", str(CONFIGS / SCRIPT), "--num-examples", "9007", "--no-tokenizer",
                                    "--format", "markdown"])
    assert res.exit_code == 0, res.output
    assert "| total steps | 563 |" in res.output and "| effective batch | 16 |" in res.output


def test_every_recipe_config_names_its_figure_in_a_comment():
    """The recipe figure is in the config, where a reviewer reads it."""
    for rel, figure in ((PERSONA, "1,886 × 3 ÷ 32 = 177 steps"), (PERSONA_DPO, "180 × 2 ÷ 8 = 45 steps"),
                        (SCRIPT, "9,007 ÷ 16 = 563 steps"), (OPS_8GB, "≈ 1,087 steps"),
                        (STYLE_Q, "168M"), (STYLE_L, "168M")):
        assert figure in (CONFIGS / rel).read_text(encoding="utf-8"), f"{rel}: no comment with '{figure}'"


# ---- memory: the recipes' measured runs are the calibration points -------------------
def test_the_8gb_recipe_fits_the_8gb_card_it_ran_on():
    """The ops recipe trained on an 8 GB card: plan names that card and says it fits."""
    p = plan_config(CONFIGS / OPS_8GB, num_examples=2898, tokenize=False)
    card = next(g for g in p.gpus if g.key == p.named_gpu)
    assert card.vram_gib == 8.0 and card.fits in ("yes", "tight"), (
        f"recipe figure 'ops 8 GB: the run fit an 8 GB card': plan expects {p.memory.reserved:.1f} GiB")
    assert p.memory.reserved < 8.0
    assert "named-gpu-does-not-fit" not in {c.rule for c in p.checks}
    md = render_markdown(p)
    assert "| named for | RTX 3070 8GB: fits" in md and "RTX 3070 8GB (named for)" in md


@pytest.mark.parametrize(("figure", "rel", "measured", "rel_tol"), [
    ("style LoRA --max_steps=3: 24.4 GB peak (RTX 5090)", STYLE_L, 24.4, 0.10),
    # QLoRA: the estimate is 2.8 GiB under the measured 17.5 (the NF4 weights, adapter,
    # checkpointed activations and fp32 loss account for 14.7); the unexplained rest is
    # left visible here rather than absorbed by a constant fitted to one run
    ("style QLoRA --max_steps=3: 17.5 GB peak (RTX 5090)", STYLE_Q, 17.5, 0.20),
])
def test_style_memory_matches_the_recipes_measured_runs(figure, rel, measured, rel_tol):
    """The smoke table's memory is Axolotl's memory/max_allocated (GiB): plan's peak allocated."""
    p = plan_config(CONFIGS / rel, num_examples=36, tokenize=False)
    assert p.memory.peak_alloc == pytest.approx(measured, rel=rel_tol), (
        f"recipe figure '{figure}': plan estimates {p.memory.peak_alloc:.1f} GiB")


# ---- the '# axpack:' header: parsed strictly, used as written --------------------------
def test_serve_flags_become_the_llama_server_command_and_bad_headers_are_one_line(tmp_path):
    from axpack.errors import AxpackError
    from axpack.serving import modelfile_text, server_command

    ops = read_directives(CONFIGS / OPS_8GB)
    cmd = server_command(Path("ops-q4_k_m.gguf"), 1024, flags=ops.serve)
    assert cmd[:3] == ["llama-server", "-m", "ops-q4_k_m.gguf"] and cmd[3:] == OPS_SERVE  # no -c: --ctx-size set
    persona = server_command(Path("p.gguf"), 2048, flags=read_directives(CONFIGS / PERSONA).serve)
    assert persona == ["llama-server", "-m", "p.gguf", "--jinja", "--reasoning", "off", "-c", "2048"]
    assert "--jinja" in server_command(Path("x.gguf"), 2048)  # no header: axpack's defaults
    for body, why in (("# axpack: export --quants q9_z", "q9_z"), ("# axpack: export --bits 4", "unknown option"),
                      ("# axpack: serve -m other.gguf", "names no model"), ("# axpack: deploy now", "unknown"),
                      ("# axpack: serve --jinja\n# axpack: serve --port 1", "second"),
                      ("# axpack: serve --chat-template 'chatml", "quoting")):
        f = tmp_path / "c.yaml"
        f.write_text(body + "\nbase_model: x\n")
        with pytest.raises(AxpackError) as err:
            read_directives(f)
        assert why in str(err.value) and f"{f}:" in str(err.value) and "\n" not in str(err.value)

    class Tok:  # the two attributes modelfile_text reads
        eos_token, all_special_tokens, added_tokens_decoder = "<|im_end|>", ["<|im_end|>"], {}

    text = modelfile_text("p.gguf", Tok(), None, "cannot cut", ["Trained with enable_thinking=false"])
    assert "# Trained with enable_thinking=false" in text.splitlines()


def test_script_data_command_is_the_recipes_windowing():
    """Windows 35 turns, 5 context, >= 10 completion, stride 5 (axpack script's defaults, not
    overridden by the config's data command), character-name filtering and a positional
    validation split writing the val.jsonl the config evaluates on."""
    import inspect
    import re
    import shlex

    from axpack.script import script

    defaults = {k: v.default for k, v in inspect.signature(script).parameters.items()}
    figure = "script: windows 35 turns, 5 context, >= 10 completion, stride 5"
    got = (defaults["window"], defaults["context"], defaults["min_completion"], defaults["stride"])
    assert got == (35, 5, 10, 5), f"recipe figure '{figure}'"
    text = (CONFIGS / SCRIPT).read_text(encoding="utf-8")
    args = shlex.split(re.search(r"^# Data: (axpack script .+)$", text, re.MULTILINE).group(1))
    assert not {"--window", "--context", "--min-completion", "--stride"} & set(args), f"recipe figure '{figure}'"
    assert {"--cast", "--min-speaker-lines"} & set(args), "recipe figure 'script: character-name filtering'"
    assert "--val-fraction" in args and cfg(SCRIPT)["test_datasets"][0]["path"] == "runs/script/data/val.jsonl", (
        "recipe figure 'script: 9,007 train / 1,021 val, split by position'")


def test_persona_modelfile_prompts_with_thinking_off():
    """Axolotl's qwen3_5 template (what the persona trains with) puts an empty think block
    before the final assistant turn of a training row only, so it cuts into pieces for
    what a server renders; with the config's enable_thinking=false the generation prompt
    is the trained '<think>\\n\\n</think>\\n\\n' prefix and the Go template carries it."""
    import importlib.util

    from axpack.serving import go_template, render_parts, template_parts
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    spec = importlib.util.find_spec("axolotl")
    jinja = Path(spec.origin).parent / "utils" / "chat_templates" / "templates" / "qwen3_5.jinja"
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0, "<|im_end|>": 1},
                                                                              unk_token="<unk>")),
                                  eos_token="<|im_end|>", unk_token="<unk>")
    tok.chat_template = jinja.read_text(encoding="utf-8")
    kwargs = cfg(PERSONA)["chat_template_kwargs"]
    with pytest.raises(ValueError):  # a training row's final assistant turn differs from a history turn
        template_parts(tok, kwargs)
    parts = template_parts(tok, kwargs, serving_only=True)
    assert parts.gen_prompt.endswith("<think>\n\n</think>\n\n"), parts.gen_prompt
    chat = [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "Marlow."},
            {"role": "user", "content": "Really?"}]
    assert render_parts(parts, chat, True) == tok.apply_chat_template(chat, tokenize=False,
                                                                        add_generation_prompt=True, **kwargs)
    assert "</think>" in go_template(parts)
