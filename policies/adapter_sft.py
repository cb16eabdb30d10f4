"""Stage 1b: supervised fine-tuning of each persona expert on its own synthesized replies.

Legend: B = rows, P = prompt tokens, T = reply tokens, E = experts.

Every row trains only its own expert: the mixture runs with one-hot weights per row (B, E), so rows of different
experts share a batch and each expert's LoRA slice receives gradient only from its rows (an expert absent from a
batch still drifts a little on AdamW's momentum from earlier batches; weight decay is off so it does not also
shrink). Loss: mean token NLL of the reply given the chat-templated situation

    L = -1/N sum_{rows, reply tokens} log pi_e(y_t | x, y_<t)  +  c * S,
    S = mean over layers and expert pairs e != f of cos(vec B_e, vec B_f)^2      (optional specialisation term)

S pushes the experts' output directions apart so two poles do not learn the same edit. The optional pole contrast
(``pole_contrast_coef``, see ``pole_contrast_loss``) adds a DPO-style term per row whose situation the opposite pole
also answered: the expert should raise its own pole's reply over the opposite pole's, relative to the base. The
teacher answers every situation in both poles, so the pairs come for free. The optimizer is torch AdamW,
stepped directly or through a DeepSpeed engine (``zero_stage``, the RL learner's engine), in fp32 or bf16-mixed.
"""

from __future__ import annotations

import json
import random
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from policies.atomic_io import atomic_dir
from policies.config import FrozenConfig, PersonaConfig
from policies.policy import PersonaFusePolicy, bf16_autocast
from policies.traits import DEFAULT_EXPERTS
from rlhf.batch import pad_right
from rlhf.masked import masked_mean


class AdapterSFTConfig(FrozenConfig):
    base_model: str = Field("embedded", description="Base model folder or 'embedded' (when init_from is null).")
    init_from: str | None = Field(None, description="Start from a saved policy instead of fresh experts.")
    data_dir: str = Field(description="Stage 1a output: one <expert>.jsonl per expert.")
    output_dir: str = Field(description="Stage folder: policy/ and sft_report.json, written atomically.")
    experts: tuple[str, ...] = Field(DEFAULT_EXPERTS, description="Persona experts (fresh policy).")
    rank: int = Field(8, ge=1, description="LoRA rank of each expert (fresh policy).")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha (fresh policy).")
    epochs: int = Field(2, ge=1, description="Passes over all experts' rows.")
    batch_size: int = Field(8, ge=1, description="Rows per optimizer step (mixed experts).")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="Keep 0: decay would also move experts absent from a batch.")
    grad_clip: float = Field(1.0, ge=0, description="Max global gradient norm (0: no clipping).")
    max_tokens: int = Field(320, ge=16, description="Prompt + reply tokens; longer rows are an error.")
    specialisation_coef: float = Field(0.0, ge=0, description="Weight c of the expert-separation term S.")
    pole_contrast_coef: float = Field(
        0.0, ge=0, description="Weight of the pole contrast (own pole's reply over the opposite pole's); 0: off."
    )
    pole_contrast_beta: float = Field(5.0, gt=0, description="beta of the pole contrast (per-token-mean margins).")
    heldout_fraction: float = Field(0.1, ge=0, lt=1, description="Rows per expert kept out to report NLL.")
    dtype: Literal["fp32", "bf16-mixed"] = Field(
        "fp32", description="bf16-mixed: fp32 weights and AdamW, bf16 autocast matmuls (LM head fp32); ~1.7x on CPU."
    )
    zero_stage: int | None = Field(
        None, ge=0, le=2,
        description="null: plain torch AdamW in this process; 0-2: a DeepSpeed engine (ZeRO stage) on one rank, as "
        "the RL learner runs (gloo on CPU, nccl on GPU).",
    )  # fmt: skip
    seed: int = Field(0, description="Seed of init, split and order.")


def specialisation_penalty(policy: PersonaFusePolicy) -> Tensor:
    """S = mean over mixture layers and expert pairs e != f of cos(vec B_e, vec B_f)^2 (0 for one expert)."""
    terms = []
    for layer in policy.mixture_layers.values():
        flat = F.normalize(layer.lora_B.flatten(1), dim=-1, eps=1e-8)  # (E, d_out * r)
        cos = flat @ flat.T  # (E, E)
        off = ~torch.eye(len(flat), dtype=torch.bool, device=flat.device)
        terms.append(cos[off].square().mean() if off.any() else cos.new_zeros(()))
    return torch.stack(terms).mean()


def pole_contrast_loss(own: Tensor, opposite: Tensor, ref_own: Tensor, ref_opposite: Tensor, beta: float) -> Tensor:
    """DPO's sigmoid loss with the opposite pole's reply to the same situation as the rejected one:

        m = (lp_e(y_own) - lp_ref(y_own)) - (lp_e(y_opp) - lp_ref(y_opp)),   L = mean_pairs softplus(-beta * m)

    lp = mean log-prob per reply token (not DPO's sum, so a pole whose replies run longer is not favoured by length);
    e = the row's expert alone, ref = the base. All inputs (N,); returns a scalar.
    """
    margin = (own - ref_own) - (opposite - ref_opposite)
    return F.softplus(-beta * margin).mean()


def opposite_replies(rows: list[tuple[int, str, str]], experts: tuple[str, ...]) -> dict[tuple[int, str], str]:
    """(expert index, situation) -> the first reply of the opposite pole of the same trait to that situation, for
    every row that has one (an expert whose opposite pole is not in the policy has none)."""
    flip = {"high": "low", "low": "high"}
    index = {name: e for e, name in enumerate(experts)}
    first: dict[tuple[int, str], str] = {}
    for e, situation, reply in rows:
        first.setdefault((e, situation), reply)
    out = {}
    for e, situation, _ in rows:
        trait, _, pole = experts[e].rpartition("_")
        other = index.get(f"{trait}_{flip.get(pole, '')}")
        if other is not None and (other, situation) in first:
            out[(e, situation)] = first[(other, situation)]
    return out


def read_persona_file(path: Path) -> list[tuple[str, str]]:
    """(situation, reply) of every row of one expert's persona JSONL; a malformed row is an error naming file and
    line."""
    return [(situation, reply) for _, situation, reply in persona_rows(path)]


def check_row_lengths(policy: PersonaFusePolicy, data_dir: Path, experts: tuple[str, ...], max_tokens: int) -> None:
    """Before training: every row's prompt + reply + EOS fits ``max_tokens``, else an error naming file and line."""
    for name in experts:
        path = data_dir / f"{name}.jsonl"
        for lineno, situation, reply in persona_rows(path):
            prompt, answer = tokenize_row(policy, situation, reply)
            if len(prompt) + len(answer) > max_tokens:
                raise ValueError(
                    f"{path}: line {lineno}: {len(prompt) + len(answer)} tokens (prompt + reply + EOS), more than "
                    f"max_tokens={max_tokens}; raise max_tokens or shorten the row"
                )


def persona_rows(path: Path) -> list[tuple[int, str, str]]:
    """(line number, situation, reply) of every row of one expert's persona JSONL (``read_persona_file``)."""
    pairs = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue  # blank lines, as in every other JSONL reader here
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: line {lineno}: not JSON ({err.msg})") from None
        if not (
            isinstance(row, dict)
            and isinstance(row.get("situation"), str)
            and isinstance(row.get("reply"), str)
            and row["reply"].strip()
        ):
            raise ValueError(f"{path}: line {lineno}: needs non-empty 'situation' and 'reply' strings")
        pairs.append((lineno, row["situation"], row["reply"]))
    return pairs


def load_rows(data_dir: Path, experts: tuple[str, ...]) -> list[tuple[int, str, str]]:
    """(expert index, situation, reply) for every row of every expert file; a missing file is an error."""
    rows = []
    for e, name in enumerate(experts):
        path = data_dir / f"{name}.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no persona data for expert {name} (run jobs/synthesize_persona_data.py)")
        rows += [(e, situation, reply) for situation, reply in read_persona_file(path)]
    return rows


def tokenize_row(policy: PersonaFusePolicy, situation: str, reply: str) -> tuple[list[int], list[int]]:
    """(chat-templated prompt ids, reply ids + EOS) of one row."""
    tok = policy.tokenizer
    chat = tok.apply_chat_template([{"role": "user", "content": situation}], add_generation_prompt=True, tokenize=False)
    prompt = tok(chat, add_special_tokens=False).input_ids
    return prompt, [*tok(reply, add_special_tokens=False).input_ids, tok.eos_token_id]


def encode(policy: PersonaFusePolicy, rows: list[tuple[int, str, str]], max_tokens: int) -> dict[str, Tensor]:
    """Left-padded prompts + right-padded replies (+ EOS) and one-hot weights (B, E), the RL batch layout, on the
    policy's device."""
    tok = policy.tokenizer
    prompts, replies = zip(*(tokenize_row(policy, situation, reply) for _, situation, reply in rows), strict=True)
    for i, (p, r) in enumerate(zip(prompts, replies, strict=True)):
        if len(p) + len(r) > max_tokens:
            raise ValueError(f"row {i}: {len(p) + len(r)} tokens, more than max_tokens={max_tokens}")
    width = max(len(p) for p in prompts)
    prompt_ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
    prompt_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    response_ids = pad_right(replies, tok.pad_token_id, torch.long)
    response_mask = pad_right([[1] * len(r) for r in replies], 0, torch.long)
    weights = F.one_hot(torch.tensor([e for e, _, _ in rows]), len(policy.experts)).float()
    batch = {
        "input_ids": torch.cat([prompt_ids, response_ids], 1),
        "attention_mask": torch.cat([prompt_mask, response_mask], 1),
        "response_mask": response_mask,
        "weights": weights,
    }
    return {key: value.to(policy.device) for key, value in batch.items()}


def reply_logprobs(policy: PersonaFusePolicy, batch: dict[str, Tensor], weights: Tensor | None = None) -> Tensor:
    """log pi(y_t | x, y_<t) of the reply tokens (B, T) under ``weights`` (default the batch's one-hot experts;
    zeros = the base)."""
    T = batch["response_mask"].shape[1]
    w = batch["weights"] if weights is None else weights
    return policy.logprobs(batch["input_ids"], batch["attention_mask"], T, w)


def reply_nll(policy: PersonaFusePolicy, batch: dict[str, Tensor], weights: Tensor | None = None) -> Tensor:
    """Mean reply-token NLL under ``weights`` (default the batch's one-hot experts; zeros = the base)."""
    return -masked_mean(reply_logprobs(policy, batch, weights), batch["response_mask"])


def row_means(logprobs: Tensor, mask: Tensor) -> Tensor:
    """Per-row mean over the reply tokens: (B, T) -> (B,)."""
    return (logprobs * mask).sum(1) / mask.sum(1)


class PoleContrast:
    """The pole-contrast term of a batch: finds each row's opposite-pole reply, scores both replies under the row's
    expert, and caches the base's scores (they do not change during training)."""

    def __init__(self, policy: PersonaFusePolicy, rows: list[tuple[int, str, str]], beta: float, max_tokens: int):
        self.policy, self.beta, self.max_tokens = policy, beta, max_tokens
        self.opposite = opposite_replies(rows, policy.experts)
        self.ref: dict[tuple[str, str], float] = {}

    @torch.no_grad()
    def _ref_means(self, rows: list[tuple[int, str, str]]) -> Tensor:
        missing = list(dict.fromkeys((s, r) for _, s, r in rows if (s, r) not in self.ref))
        if missing:
            batch = encode(self.policy, [(0, s, r) for s, r in missing], self.max_tokens)
            with self.policy.adapters_disabled():
                base = reply_logprobs(self.policy, batch, torch.zeros_like(batch["weights"]))
            means = row_means(base, batch["response_mask"])
            self.ref.update(zip(missing, means.tolist(), strict=True))
        return torch.tensor([self.ref[(s, r)] for _, s, r in rows], device=self.policy.device)

    def __call__(self, rows: list[tuple[int, str, str]], own_logprobs: Tensor, own_mask: Tensor) -> Tensor | None:
        """The loss over the rows that have a pair (None when none has); ``own_logprobs`` (B, T) are the rows'
        reply log-probs already computed for the NLL."""
        keep = [k for k, (e, s, _) in enumerate(rows) if (e, s) in self.opposite]
        if not keep:
            return None
        own_rows = [rows[k] for k in keep]
        opp_rows = [(e, s, self.opposite[(e, s)]) for e, s, _ in own_rows]
        opp = encode(self.policy, opp_rows, self.max_tokens)
        opposite = row_means(reply_logprobs(self.policy, opp), opp["response_mask"])
        own = row_means(own_logprobs, own_mask)[keep]
        return pole_contrast_loss(own, opposite, self._ref_means(own_rows), self._ref_means(opp_rows), self.beta)


def fresh_policy(cfg: AdapterSFTConfig) -> PersonaFusePolicy:
    from policies.embedded import resolve_model_dir

    base = resolve_model_dir(cfg.base_model)
    torch.manual_seed(cfg.seed)
    return PersonaFusePolicy.from_base(
        PersonaConfig(base_model=base, experts=cfg.experts, rank=cfg.rank, alpha=cfg.alpha)
    )


@torch.no_grad()
def evaluate(policy: PersonaFusePolicy, rows: list[tuple[int, str, str]], cfg: AdapterSFTConfig) -> dict[str, dict]:
    """Per expert: mean reply NLL with that expert alone vs the base (adapters off) on ``rows``."""
    out = {}
    for e, name in enumerate(policy.experts):
        mine = [r for r in rows if r[0] == e]
        if not mine:
            continue
        batch = encode(policy, mine, cfg.max_tokens)
        with policy.adapters_disabled():
            base = reply_nll(policy, batch, torch.zeros_like(batch["weights"])).item()
        out[name] = {"rows": len(mine), "nll_expert": reply_nll(policy, batch).item(), "nll_base": base}
    return out


def split_heldout(rows: list, num_experts: int, fraction: float) -> tuple[list, list]:
    """(train, held): per expert, the rows of the first ``fraction`` of its situations (in the rows' shuffled order)
    are held out whole, so no held-out reply shares its situation with a training one (samples_per_situation > 1);
    rounded, and at least one situation for an expert with two or more (small CPU runs still report held-out NLL)."""
    train, held = [], []
    for e in range(num_experts):
        mine = [r for r in rows if r[0] == e]
        situations = list(dict.fromkeys(r[1] for r in mine))  # first-seen order
        n = len(situations)
        k = min(max(round(fraction * n), 1), n - 1) if fraction > 0 and n >= 2 else 0
        out = set(situations[:k])
        held += [r for r in mine if r[1] in out]
        train += [r for r in mine if r[1] not in out]
    return train, held


def optimizer_step(cfg: AdapterSFTConfig, policy: PersonaFusePolicy) -> Callable[[Tensor], None]:
    """step(loss): backward, gradient clipping to ``cfg.grad_clip`` and an AdamW step on the trainable parameters,
    in plain torch or through a DeepSpeed engine (``cfg.zero_stage``) on a one-rank process group. The group stays
    up for the process (DeepSpeed caches its groups, so a second engine could not start on a fresh one)."""
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.zero_stage is None:

        def torch_step(loss: Tensor) -> None:
            optimizer.zero_grad()
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()

        return torch_step
    from rlhf.learner import import_deepspeed, init_distributed

    deepspeed = import_deepspeed()  # before picking the port: the import takes seconds
    if not torch.distributed.is_initialized():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        init_distributed(0, 1, "127.0.0.1", port)

    engine, *_ = deepspeed.initialize(
        model=policy,
        optimizer=optimizer,
        config={
            "train_micro_batch_size_per_gpu": cfg.batch_size,
            "gradient_accumulation_steps": 1,
            "gradient_clipping": cfg.grad_clip,
            "zero_optimization": {"stage": cfg.zero_stage},
            "zero_allow_untested_optimizer": True,  # torch AdamW, as in the RL learner
            "steps_per_print": 10**9,
        },
    )

    def engine_step(loss: Tensor) -> None:
        engine.backward(loss)
        engine.step()

    return engine_step


def train_adapters(cfg: AdapterSFTConfig) -> Path:
    policy = PersonaFusePolicy.from_pretrained(cfg.init_from) if cfg.init_from else fresh_policy(cfg)
    rows = load_rows(Path(cfg.data_dir), policy.experts)
    check_row_lengths(policy, Path(cfg.data_dir), policy.experts, cfg.max_tokens)
    rng = random.Random(cfg.seed)
    rng.shuffle(rows)
    train, held = split_heldout(rows, len(policy.experts), cfg.heldout_fraction)
    policy.set_trainable(router=False, experts=True)
    policy.train()
    step = optimizer_step(cfg, policy)
    before = evaluate(policy, held, cfg) if held else {}
    contrast = (
        PoleContrast(policy, train, cfg.pole_contrast_beta, cfg.max_tokens) if cfg.pole_contrast_coef > 0 else None
    )
    start, losses = time.perf_counter(), []
    for epoch in range(cfg.epochs):
        rng.shuffle(train)
        for i in range(0, len(train), cfg.batch_size):
            rows = train[i : i + cfg.batch_size]
            batch = encode(policy, rows, cfg.max_tokens)
            logged = {"epoch": epoch + 1}
            with bf16_autocast(cfg.dtype == "bf16-mixed"):
                logprobs = reply_logprobs(policy, batch)
                loss = -masked_mean(logprobs, batch["response_mask"])
                pair_loss = contrast(rows, logprobs, batch["response_mask"]) if contrast else None
            if pair_loss is not None:
                loss = loss + cfg.pole_contrast_coef * pair_loss
                logged["pole_contrast"] = pair_loss.item()
            if cfg.specialisation_coef > 0:
                loss = loss + cfg.specialisation_coef * specialisation_penalty(policy)
            step(loss)
            losses.append({**logged, "loss": loss.item()})
    policy.eval()
    report = {
        "train_rows": len(train),
        "heldout_rows": len(held),
        "seconds": time.perf_counter() - start,
        "heldout_before": before,
        "heldout_after": evaluate(policy, held, cfg) if held else {},
        "specialisation": specialisation_penalty(policy).item(),
        "pole_contrast_pairs": len(contrast.opposite) if contrast else 0,
        "losses": losses,
    }
    target = Path(cfg.output_dir)
    with atomic_dir(target) as out:
        policy.save_pretrained(out / "policy")
        (out / "sft_report.json").write_text(json.dumps(report, indent=2))
        (out / "training_config.json").write_text(cfg.model_dump_json(indent=2))
    return target
