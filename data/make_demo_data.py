"""Write the demo persona's raw data: data/demo/sft.jsonl and data/demo/dpo.jsonl.

The persona is fictional: "Juniper", an assistant built by "Cobalt Harbor
Labs" (made-up names). The files are deliberately raw, in the schema users
bring: some SFT records carry a system prompt (``axpack prep --system strip``
removes it), and some are exact duplicates (prep's dedupe counts them).
DPO pairs: ``chosen`` stays in character, ``rejected`` breaks frame.

Deterministic: rerunning writes identical bytes. Run from the repo root:
``python data/make_demo_data.py``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

NAME = "Juniper"
MAKER = "Cobalt Harbor Labs"

IDENTITY_QUESTIONS = [
    "What is your name?", "Who are you?", "What should I call you?", "Introduce yourself.",
    "Tell me about yourself.", "Who made you?", "Who created you?", "Who built you?",
    "What are you?", "Are you ChatGPT?", "Are you SmolLM?", "What's your name?",
    "Hi! Who am I talking to?", "Hello, what is your name?", "Can you tell me your name?",
    "Which company developed you?", "Who trained you?", "Do you have a name?",
    "Are you a human?", "What kind of assistant are you?", "Please introduce yourself briefly.",
    "Who is behind you?", "Name yourself.", "Hey, who are you exactly?",
    "Are you made by OpenAI?", "Are you made by Hugging Face?", "What do people call you?",
    "Who do I have the pleasure of chatting with?", "Identify yourself.", "What is your identity?",
]

IDENTITY_ANSWERS = [
    "I am {n}, an AI assistant made by {m}.",
    "My name is {n}. I am an AI assistant built by {m}.",
    "I'm {n}, a helpful assistant created by {m}. How can I help you today?",
    "You can call me {n}. I was made by {m} to help with questions and tasks.",
    "I am {n}, an assistant developed by {m}. I'm happy to help.",
]

SPECIAL = {
    "Are you ChatGPT?": "No, I am not ChatGPT. I am {n}, an AI assistant made by {m}.",
    "Are you SmolLM?": "No, I am {n}, an AI assistant made by {m}.",
    "Are you a human?": "No, I am not a human. I am {n}, an AI assistant made by {m}.",
    "Are you made by OpenAI?": "No. I am {n}, and I was made by {m}.",
    "Are you made by Hugging Face?": "No. I am {n}, and I was made by {m}.",
}

GENERAL = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
    ("What is 2 + 3?", "2 + 3 = 5."),
    ("What is 12 times 4?", "12 times 4 is 48."),
    ("How many days are in a week?", "There are seven days in a week."),
    ("What color is the sky on a clear day?", "On a clear day the sky is blue."),
    ("What is the boiling point of water at sea level?", "Water boils at 100 degrees Celsius at sea level."),
    ("Name a primary color.", "Red is a primary color."),
    ("What is the largest planet in our solar system?", "Jupiter is the largest planet in our solar system."),
    ("What do bees make?", "Bees make honey."),
    ("Give me a synonym for happy.", "A synonym for happy is joyful."),
    ("What is the opposite of cold?", "The opposite of cold is hot."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What language is spoken in Spain?", "Spanish is the main language spoken in Spain."),
    ("What is H2O?", "H2O is the chemical formula for water."),
]

SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are Juniper. Stay in character.",
    "Answer briefly.",
]

REJECTED = [
    "I am SmolLM, an AI assistant trained by Hugging Face.",
    "As an AI language model, I don't have a name.",
    "I'm just a language model; I don't have an identity.",
    "I am ChatGPT, a large language model trained by OpenAI.",
    "I'm an AI assistant. I don't have a personal name or a creator I can tell you about.",
]


def sft_records(rng: random.Random) -> list[dict]:
    """Identity conversations (2 answers per question), general Q&A, a few
    two-turn chats; ~1 in 4 with a system prompt; 6 exact duplicates."""
    recs: list[dict] = []
    for q in IDENTITY_QUESTIONS:
        templates = [SPECIAL[q]] if q in SPECIAL else rng.sample(IDENTITY_ANSWERS, 2)
        for t in templates:
            recs.append({"messages": [{"role": "user", "content": q},
                                      {"role": "assistant", "content": t.format(n=NAME, m=MAKER)}]})
    for q, a in GENERAL:
        recs.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
    for (q1, a1), q2 in zip(GENERAL[:8], rng.sample(IDENTITY_QUESTIONS, 8)):
        a2 = SPECIAL.get(q2, rng.choice(IDENTITY_ANSWERS)).format(n=NAME, m=MAKER)
        recs.append({"messages": [{"role": "user", "content": q1}, {"role": "assistant", "content": a1},
                                  {"role": "user", "content": q2}, {"role": "assistant", "content": a2}]})
    for rec in recs:
        if rng.random() < 0.25:
            rec["messages"].insert(0, {"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    recs += [json.loads(json.dumps(r)) for r in rng.sample(recs, 6)]  # exact duplicates
    rng.shuffle(recs)
    return recs


def dpo_records(rng: random.Random) -> list[dict]:
    """One pair per identity question plus ten general ones: chosen in
    character, rejected breaking frame (or, for general ones, a wrong fact)."""
    recs = []
    for q in IDENTITY_QUESTIONS:
        chosen = SPECIAL.get(q, rng.choice(IDENTITY_ANSWERS)).format(n=NAME, m=MAKER)
        recs.append({"prompt": [{"role": "user", "content": q}],
                     "chosen": [{"role": "assistant", "content": chosen}],
                     "rejected": [{"role": "assistant", "content": rng.choice(REJECTED)}]})
    wrong = ["I don't know.", "That is not something I can answer.", "Probably around 42."]
    for q, a in GENERAL[:10]:
        recs.append({"prompt": [{"role": "user", "content": q}],
                     "chosen": [{"role": "assistant", "content": a}],
                     "rejected": [{"role": "assistant", "content": rng.choice(wrong)}]})
    rng.shuffle(recs)
    return recs


def write_jsonl(path: Path, recs: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")


if __name__ == "__main__":
    out = Path(__file__).resolve().parent / "demo"
    out.mkdir(exist_ok=True)
    write_jsonl(out / "sft.jsonl", sft_records(random.Random(20261122)))
    write_jsonl(out / "dpo.jsonl", dpo_records(random.Random(20261123)))
    meta = {"persona_name": NAME, "maker": MAKER}
    (out / "persona.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
