"""Generative judge: a prompted causal LM scores each reply against a written rubric, read off the probabilities of
its score tokens. Nothing is generated and no free text is parsed.

Legend: B = completions, V = judge vocabulary, K = ``scale`` (score tokens "1" .. "K").

The judge sees the rubric, the situation and the reply, then an assistant turn that starts with ``"Score: "``
(``"Score:"`` for byte-level BPEs). With p the judge's next-token distribution there and s_k the token of score k:

    E     = sum_k k * p(s_k) / sum_k p(s_k)            (renormalised over the K score tokens; other tokens ignored)
    score = (E - 1) / (K - 1)                          in [0, 1], higher = better under the rubric

**Rubrics.** ``rubric`` is the name of a built-in project-written rubric (``RUBRICS``: empathy,
social_appropriateness, helpfulness) or the path of a UTF-8 text file written the same way: instructions, then the
judged text with a ``{situation}`` and a ``{reply}`` placeholder (``{scale}`` is optional and becomes K). Everything
above the first line holding ``{situation}`` or ``{reply}`` is the system message; that line and the rest are the user
message. Placeholders are filled in one pass, so braces inside the situation or reply are kept as they are.

**Judge prompt.** With a chat template (the judge tokenizer's own): system = the instructions, user = the filled
template, then the generation prompt + ``"Score: "`` (instructions fold into the user turn when the template has no
system role). Without one: plain text ``instructions + "\\n\\n" + user + "\\n\\nScore: "``. Byte-level BPE
tokenizers end the prompt in ``"Score:"`` instead (see ``score_tokens``). The situation is the last
user turn of a chat-templated RL prompt (ChatML or Llama-3 markers), else the whole prompt.

**Engines.** ``hf``: transformers forward on left-padded batches, logits at the last position only. ``vllm``: one
token per prompt with ``allowed_token_ids`` = the score tokens and ``logprobs_mode="processed_logprobs"``, so the K
log-probs come back already renormalised over the score tokens. Both read the same token ids and give the same scores
(to float error). ``auto`` = vllm when CUDA is available, else hf. Loading is safetensors only, never remote code.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from policies.answer_tokens import answer_tokens
from rewards.base import register_reward

# The judge's turn starts with one of these and the next token is the score: "Score: " then "1" for most
# tokenizers, "Score:" then " 1" for byte-level BPEs (GPT-2, Pythia, OPT) that fold the space into the digit.
ASSISTANT_PREFIXES = ("Score: ", "Score:")
EMBEDDED = "embedded"  # model value meaning the packaged SmolLM2-135M-Instruct (policies.embedded)
PLACEHOLDERS = ("{situation}", "{reply}")  # every rubric needs both; "{scale}" is optional
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# --- built-in rubrics (written for this project) ----------------------------------------------------------------------

_JUDGED = """Situation: {situation}

Reply: {reply}

How well does the reply meet the standard above? Answer with one number from 1 to {scale}."""

RUBRICS: dict[str, str] = {
    "empathy": """You rate the empathy of a reply to a person who describes a situation and how it affects them.
An empathic reply recognises the emotion the person feels, names or reflects it, and treats it as understandable. \
It sounds warm and personal. It does not dismiss, minimise or hurry past the feeling, and it does not lecture, \
moralise or preach.
1 = dismissive or cold: ignores or belittles the feeling (for example "get over it"), or only lectures.
{scale} = clearly recognises and validates the feeling, warmly, without lecturing.
Numbers in between: partly empathic, for example polite but generic, or kind but missing the feeling.

"""
    + _JUDGED,
    "social_appropriateness": """You rate the social appropriateness of a reply to a person who describes a situation.
An appropriate reply fits the situation and the relationship: its tone, formality and length suit what was said, it \
takes the matter as seriously as it deserves, and it respects the person and the people they mention. It is not \
rude, flippant, over-familiar, oddly formal or out of place.
1 = clearly inappropriate: rude, mocking, flippant about something serious, or unrelated to the situation.
{scale} = fits the situation and the relationship well, in a fitting and respectful tone.
Numbers in between: acceptable but off in tone, seriousness or register.

"""
    + _JUDGED,
    "helpfulness": """You rate the helpfulness of a reply to a person who describes a situation.
A helpful reply responds to this person's actual situation and offers something they can use: a concrete, relevant \
next step, an option to consider, or a question that moves things forward. It does this without lecturing, \
preaching or piling on generic advice.
1 = no help: off topic, empty, or only generic advice or a lecture.
{scale} = relevant and concrete: clear next steps or options that fit the situation, offered without lecturing.
Numbers in between: somewhat relevant, or vague, or helpful but preachy.

"""
    + _JUDGED,
}

_USER_TURNS = (  # the content of user turns in chat-templated prompt text
    re.compile(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", re.DOTALL),  # ChatML (SmolLM2, Qwen)
    re.compile(r"<\|start_header_id\|>user<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>", re.DOTALL),  # Llama 3
)
_FIELD = re.compile(r"\{(situation|reply|scale)\}")


# --- math -------------------------------------------------------------------------------------------------------------


def expected_score(logits: Tensor, score_token_ids: list[int]) -> Tensor:
    """Expected score under the score tokens' renormalised probabilities. (B, V), K ids -> (B,) in [1, K].

        E_b = sum_k k * p_b(s_k) / sum_j p_b(s_j) = sum_k k * softmax_k(logits[b, s_1..s_K])

    ``score_token_ids[k - 1]`` is the token of score k. Probability mass on other tokens is ignored. A per-row shift
    of the logits cancels, so log-probabilities work too, and V may be just the K score columns (ids 0..K-1).

    >>> logits = torch.tensor([[0.1, 0.2, 0.3, 0.4, 5.0]]).log()  # (1, 5): token 4 is not a score, so ignored
    >>> round(expected_score(logits, [0, 1, 2, 3]).item(), 4)  # 0.1*1 + 0.2*2 + 0.3*3 + 0.4*4
    3.0
    """
    weights = torch.softmax(logits[:, score_token_ids].float(), dim=-1)  # (B, K)
    values = torch.arange(1, len(score_token_ids) + 1, dtype=weights.dtype, device=weights.device)  # (K,)
    return weights @ values


def unit_score(expected: Tensor, scale: int) -> Tensor:
    """Maps E in [1, K] to (E - 1) / (K - 1) in [0, 1]. (B,) -> (B,)."""
    return (expected - 1.0) / (scale - 1)


# --- rubric and prompt text -------------------------------------------------------------------------------------------


def load_rubric(rubric: str) -> str:
    """The rubric template: a built-in name, or a text file with ``{situation}`` and ``{reply}``; ValueError else."""
    if rubric in RUBRICS:
        return RUBRICS[rubric]
    path = Path(rubric)
    if not path.is_file():
        raise ValueError(f"rubric {rubric!r} is neither a built-in rubric ({', '.join(RUBRICS)}) nor a file")
    text = path.read_text(encoding="utf-8")
    missing = [p for p in PLACEHOLDERS if p not in text]
    if missing:
        raise ValueError(
            f"rubric file {path} lacks the placeholder(s) {' and '.join(missing)}; a rubric needs {{situation}} and "
            "{reply} where the judged situation and reply go (and may use {scale})"
        )
    return text


def situation_of(prompt: str) -> str:
    """The situation in an RL prompt: its last user turn when chat-templated (ChatML, Llama 3), else all of it."""
    for pattern in _USER_TURNS:
        turns = pattern.findall(prompt)
        if turns:
            return turns[-1].strip()
    return prompt.strip()


def score_tokens(
    encode: Callable[[str], list[int]], prompt_for: Callable[[str], str], scale: int, where: str
) -> tuple[str, list[int]]:
    """(prefix, K score-token ids): the first of ASSISTANT_PREFIXES after which every score 1..K is exactly one
    token in context ("<prompt><prefix>" plus one token), K distinct tokens (``policies.answer_tokens``)."""
    try:
        return answer_tokens(encode, prompt_for, [str(k) for k in range(1, scale + 1)], ASSISTANT_PREFIXES)
    except ValueError as err:
        raise ValueError(
            f"scale={scale}: in {where} the scores 1..{scale} are not single tokens ({err}); use a smaller scale "
            "(most tokenizers have single-token digits 1-9)"
        ) from None


def render(template: str, situation: str, reply: str, scale: int) -> tuple[str, str]:
    """(system, user): the instructions above the first placeholder line, and the filled-in rest (one pass)."""
    lines = template.splitlines(keepends=True)
    first = next((i for i, line in enumerate(lines) if "{situation}" in line or "{reply}" in line), None)
    if first is None:
        raise ValueError("a rubric needs a {situation} or {reply} line; the instructions go above the first one")
    values = {"situation": situation, "reply": reply, "scale": str(scale)}

    def fill(text: str) -> str:
        return _FIELD.sub(lambda m: values[m.group(1)], text).strip()

    return fill("".join(lines[:first])), fill("".join(lines[first:]))


# --- the component ----------------------------------------------------------------------------------------------------


@register_reward("judge")
@dataclass
class Judge:
    """A prompted LLM judge: each reply's rubric score in [0, 1], ``(E - 1) / (scale - 1)`` (module docstring).

    Config term: ``{name: judge, weight: 1.0, options: {rubric: empathy}}``. Built once: the judge model loads here.
    The prompts may be chat-templated RL prompts; the judge reads their last user turn as the situation.
    """

    model: str = EMBEDDED  # local HF causal-LM folder (safetensors), or "embedded" (SmolLM2-135M-Instruct)
    rubric: str = "empathy"  # built-in rubric (empathy, social_appropriateness, helpfulness) or a rubric text file
    scale: int = 5  # scores 1..scale; each must be one token after the score prefix (ASSISTANT_PREFIXES)
    engine: Literal["auto", "hf", "vllm"] = "auto"  # auto: vllm when CUDA is available, else hf (transformers)
    batch_size: int = 8  # prompts per transformers forward (vLLM schedules its own batches)
    max_prompt_tokens: int = 1024  # a longer judge prompt is an error naming its index; nothing is truncated
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: float32 on CPU, bfloat16 on CUDA
    gpu_memory_utilization: float = 0.2  # vLLM on GPU: share of GPU memory for the judge (weights + KV cache)
    score_token_ids: list[int] = field(init=False)  # K ids: score_token_ids[k - 1] is the token of score k

    @classmethod
    def preflight(cls, model: str = EMBEDDED, rubric: str = "empathy", **_: object) -> None:
        """The checks that load nothing (``rewards.compose.preflight``): the rubric, and a model folder given by path
        (the embedded one is made at setup)."""
        load_rubric(rubric)
        if model != EMBEDDED:
            resolve_judge_model(model)

    def __post_init__(self) -> None:
        from transformers import AutoConfig, AutoTokenizer

        self._check_options()
        self.template = load_rubric(self.rubric)
        self.folder = resolve_judge_model(self.model)
        config = AutoConfig.from_pretrained(self.folder, trust_remote_code=False)
        context = getattr(config, "max_position_embeddings", None)
        if context and self.max_prompt_tokens + 1 > context:
            raise ValueError(
                f"max_prompt_tokens={self.max_prompt_tokens}: the judge {self.folder} reads at most {context} tokens; "
                f"set max_prompt_tokens <= {context - 1}"
            )
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder, trust_remote_code=False)
        self.chat = self.tokenizer.chat_template is not None
        self.system_role = self.chat and _accepts_system_role(self.tokenizer)
        self.prefix, self.score_token_ids = score_tokens(
            self.encode, lambda prefix: self.prompt_text("", "", prefix), self.scale, f"the tokenizer of {self.folder}"
        )
        engine = self.engine if self.engine != "auto" else ("vllm" if torch.cuda.is_available() else "hf")
        dtype = self.dtype if self.dtype != "auto" else ("bfloat16" if torch.cuda.is_available() else "float32")
        if engine == "vllm":
            self.backend: _HFBackend | _VLLMBackend = _VLLMBackend(self, dtype)
        else:
            self.backend = _HFBackend(self, DTYPES[dtype])

    def _check_options(self) -> None:
        if self.scale < 2:
            raise ValueError(f"scale must be >= 2 (scores 1..scale), got {self.scale}")
        if self.engine not in ("auto", "hf", "vllm"):
            raise ValueError(f"engine must be auto, hf or vllm, got {self.engine!r}")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"dtype must be auto or one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.batch_size < 1 or self.max_prompt_tokens < 1:
            limits = f"batch_size={self.batch_size}, max_prompt_tokens={self.max_prompt_tokens}"
            raise ValueError(f"batch_size and max_prompt_tokens must be >= 1, got {limits}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")

    def prompt_text(self, situation: str, reply: str, prefix: str | None = None) -> str:
        """The full judge prompt for one (situation, reply), ending with the score prefix (``"Score: "``)."""
        prefix = self.prefix if prefix is None else prefix
        system, user = render(self.template, situation, reply, self.scale)
        if not self.chat:
            return "\n\n".join(part for part in (system, user, prefix) if part)
        if system and self.system_role:
            messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        else:
            messages = [{"role": "user", "content": f"{system}\n\n{user}".strip()}]
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return text + prefix

    def encode(self, text: str) -> list[int]:
        """Token ids of a judge prompt; a chat-templated text already holds its special tokens."""
        return self.tokenizer(text, add_special_tokens=not self.chat).input_ids

    def prompt_ids(self, prompts: list[str], completions: list[str]) -> list[list[int]]:
        """B token-id lists of the judge prompts; ValueError naming the first index over ``max_prompt_tokens``."""
        ids = [self.encode(self.prompt_text(situation_of(p), c)) for p, c in zip(prompts, completions, strict=True)]
        for i, row in enumerate(ids):
            if len(row) > self.max_prompt_tokens:
                raise ValueError(
                    f"judge prompt {i} has {len(row)} tokens, more than max_prompt_tokens={self.max_prompt_tokens}; "
                    "shorten the situation or the reply, or raise max_prompt_tokens (prompts are never truncated)"
                )
        return ids

    def expected(self, prompts: list[str], completions: list[str]) -> Tensor:
        """E in [1, scale] for each completion, (B,) float32 on CPU."""
        ids = self.prompt_ids(prompts, completions)
        return self.backend.expected(ids, self.score_token_ids) if ids else torch.zeros(0)

    def __call__(self, prompts: list[str], completions: list[str], **metadata: Any) -> list[float]:
        return unit_score(self.expected(list(prompts), list(completions)), self.scale).tolist()


def resolve_judge_model(model: str) -> Path:
    """The judge's model folder: the embedded SmolLM2 for "embedded", else ``model`` (a local folder)."""
    if model == EMBEDDED:
        from policies.embedded import embedded_model_dir

        return embedded_model_dir()
    folder = Path(model)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"judge model {model!r}: no HF model folder (config.json) at {folder}")
    return folder


def _accepts_system_role(tokenizer: Any) -> bool:
    """Whether the chat template renders a system message (some templates raise on one)."""
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    try:
        tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except Exception:  # jinja2 TemplateError from the template's raise_exception
        return False
    return True


# --- engines: token ids of B judge prompts -> E (B,) ------------------------------------------------------------------


class _HFBackend:
    """transformers: left-padded batches of ``batch_size``, logits at the last position only."""

    def __init__(self, judge: Judge, dtype: torch.dtype) -> None:
        from policies.policy import load_base_model

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = load_base_model(str(judge.folder), dtype).to(self.device).eval()
        tok = judge.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.batch_size = judge.batch_size

    @torch.no_grad()
    def expected(self, prompt_ids: list[list[int]], score_token_ids: list[int]) -> Tensor:
        from policies.policy import position_ids_for

        out = []
        for start in range(0, len(prompt_ids), self.batch_size):
            chunk = prompt_ids[start : start + self.batch_size]
            L = max(len(row) for row in chunk)
            input_ids = torch.tensor([[self.pad_id] * (L - len(r)) + r for r in chunk], device=self.device)  # (b, L)
            mask = torch.tensor([[0] * (L - len(r)) + [1] * len(r) for r in chunk], device=self.device)  # (b, L)
            logits = self.model(
                input_ids=input_ids, attention_mask=mask, position_ids=position_ids_for(mask), logits_to_keep=1
            ).logits[:, -1]  # (b, V)
            out.append(expected_score(logits, score_token_ids).cpu())
        return torch.cat(out)


class _VLLMBackend:
    """vLLM: one token per prompt, restricted to the score tokens, whose K renormalised log-probs come back."""

    def __init__(self, judge: Judge, dtype: str) -> None:
        if not torch.cuda.is_available():
            from rlhf.rollout_vllm import CPU_ENV

            for key, value in {**CPU_ENV, "VLLM_CPU_KVCACHE_SPACE": "1"}.items():
                os.environ.setdefault(key, value)
        from vllm import LLM

        self.llm = LLM(
            model=str(judge.folder),
            dtype=dtype,
            enforce_eager=not torch.cuda.is_available(),  # CUDA graphs on GPU; vllm-cpu runs eager
            max_model_len=judge.max_prompt_tokens + 1,
            max_logprobs=max(20, judge.scale),
            logprobs_mode="processed_logprobs",  # after the allowed-token mask: renormalised over the score tokens
            gpu_memory_utilization=judge.gpu_memory_utilization,
            load_format="safetensors",
            trust_remote_code=False,
            seed=0,
        )

    def expected(self, prompt_ids: list[list[int]], score_token_ids: list[int]) -> Tensor:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        K = len(score_token_ids)
        params = SamplingParams(max_tokens=1, temperature=0.0, allowed_token_ids=score_token_ids, logprobs=K)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=r) for r in prompt_ids], params, use_tqdm=False)
        steps = [output.outputs[0].logprobs[0] for output in outputs]  # B dicts {token id: Logprob}
        logprobs = torch.tensor([[step[t].logprob for t in score_token_ids] for step in steps])  # (B, K)
        return expected_score(logprobs, list(range(K)))
