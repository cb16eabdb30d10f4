"""Stage 2: teach the router which trait poles each situation calls up (Trait Activation Theory).

Legend: N = situations, E = experts, d = base hidden size, H = router hidden size.

The router reads frozen-base features (adapters off), so they are computed once per situation and cached; the
router MLP then trains on them for many cheap epochs:

    loss = D(target || softmax(logits / T))  +  c * SupCon(router embeddings, primary pole)

D is the KL divergence (default) or the cross-entropy to the target distribution; SupCon pulls together the router
embeddings of situations that share a primary pole. Reported on the held-out split: top-1 accuracy (the router's
largest weight is the target's primary pole), top-2 accuracy (the primary pole is among the router's two largest)
and the confusion matrix between primary poles.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from policies.atomic_io import atomic_dir
from policies.config import FrozenConfig, PersonaConfig, RouterConfig
from policies.policy import PersonaFusePolicy
from policies.situations import Situation, load_situations


def target_kl(logits: Tensor, target: Tensor, temperature: float = 1.0) -> Tensor:
    """Mean over rows of KL(q || p) = sum_e q_e (log q_e - log p_e), p = softmax(logits / T), q = target.

    Entries with q_e = 0 contribute 0 (0 log 0 = 0). logits, target (N, E) -> scalar.
    """
    log_p = F.log_softmax(logits.float() / temperature, dim=-1)
    q = target.float()
    return torch.where(q > 0, q * (q.clamp_min(1e-30).log() - log_p), 0.0).sum(-1).mean()


def target_cross_entropy(logits: Tensor, target: Tensor, temperature: float = 1.0) -> Tensor:
    """Mean over rows of -sum_e q_e log p_e (= KL(q || p) + H(q)). logits, target (N, E) -> scalar."""
    return -(target.float() * F.log_softmax(logits.float() / temperature, dim=-1)).sum(-1).mean()


def supervised_contrastive(features: Tensor, labels: Tensor, temperature: float = 0.1) -> Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, arXiv:2004.11362, L_out), z_i = features_i / |features_i|:

        L = mean_{i: |P(i)| > 0}  -1/|P(i)| sum_{p in P(i)} log( exp(z_i.z_p / tau) / sum_{a != i} exp(z_i.z_a / tau) )

    P(i) = the other rows with the same label. Rows without a positive are skipped; 0 when no row has one.
    features (N, D), labels (N,) int -> scalar.
    """
    z = F.normalize(features.float(), dim=-1)
    sim = z @ z.T / temperature  # (N, N)
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    log_prob = sim - torch.logsumexp(sim.masked_fill(eye, float("-inf")), dim=-1, keepdim=True)  # (N, N)
    positives = (labels[:, None] == labels[None, :]) & ~eye  # (N, N)
    counts = positives.sum(-1)  # (N,)
    has = counts > 0
    if not has.any():
        return features.new_zeros(())
    per_anchor = -(log_prob * positives).sum(-1)[has] / counts[has]
    return per_anchor.mean()


def routing_metrics(probs: Tensor, targets: Tensor, experts: tuple[str, ...]) -> dict:
    """Top-1 / top-2 accuracy of the primary pole and the confusion matrix (rows: target primary, cols: router
    top-1). probs, targets (N, E). A target with tied primaries (a 50/50 situation) counts as hit by either, and
    its confusion row is the one the router picked when that is a primary (else the first primary)."""
    primary = targets == targets.amax(-1, keepdim=True)  # (N, E): every primary pole
    top2 = probs.topk(min(2, probs.shape[-1]), dim=-1).indices  # (N, 2)
    hit1 = primary.gather(-1, top2[:, :1]).squeeze(-1)  # (N,)
    row = torch.where(hit1, top2[:, 0], targets.argmax(-1))  # (N,)
    confusion = torch.zeros(len(experts), len(experts), dtype=torch.long)
    confusion.index_put_((row, top2[:, 0]), torch.ones_like(row), accumulate=True)
    return {
        "top1": hit1.float().mean().item(),
        "top2": primary.gather(-1, top2).any(-1).float().mean().item(),
        "confusion": {"experts": list(experts), "counts": confusion.tolist()},
    }


class RouterTrainingConfig(FrozenConfig):
    base_model: str = Field("embedded", description="Base model folder or 'embedded' (when init_from is null).")
    init_from: str | None = Field(None, description="A saved policy (stage 1 output); its experts are kept.")
    output_dir: str = Field(description="The trained policy folder (router + experts), written atomically.")
    situations: str = Field("builtin", description="Labelled situations JSONL (see policies/situations.py).")
    router: RouterConfig = Field(default_factory=RouterConfig, description="Router shape for a fresh policy.")
    loss: Literal["kl", "ce"] = Field("kl", description="Divergence to the target distribution.")
    contrastive_coef: float = Field(0.1, ge=0, description="Weight c of the supervised contrastive term.")
    contrastive_temperature: float = Field(0.1, gt=0, description="SupCon temperature tau.")
    epochs: int = Field(300, ge=1, description="Passes over the cached training features.")
    batch_size: int = Field(64, ge=2, description="Situations per step.")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    max_prompt_tokens: int = Field(256, ge=8, description="Longer situations are an error.")
    seed: int = Field(0, description="Seed of the router init and the batch order.")


def situation_prompts(policy: PersonaFusePolicy, situations: list[Situation], max_tokens: int) -> tuple[Tensor, Tensor]:
    """Left-padded chat-templated prompts (N, P), exactly as the RL loop tokenises a user message."""
    from rlhf.build import tokenize_prompts
    from rlhf.prompts import PromptRecord

    records = [PromptRecord(({"role": "user", "content": s.text},), s.category, s.id) for s in situations]
    _, ids, mask = tokenize_prompts(policy, records, max_tokens)
    return ids, mask


@torch.no_grad()
def cached_features(policy: PersonaFusePolicy, situations: list[Situation], max_tokens: int, batch: int = 16) -> Tensor:
    """(N, d) router inputs, one frozen-base forward per situation."""
    ids, mask = situation_prompts(policy, situations, max_tokens)
    return torch.cat(
        [policy.situation_features(ids[i : i + batch], mask[i : i + batch]) for i in range(0, len(ids), batch)]
    )


def fresh_policy(cfg: RouterTrainingConfig) -> PersonaFusePolicy:
    from policies.embedded import resolve_model_dir

    base = resolve_model_dir(cfg.base_model)
    torch.manual_seed(cfg.seed)
    return PersonaFusePolicy.from_base(PersonaConfig(base_model=base, router=cfg.router))


def train_router(cfg: RouterTrainingConfig) -> Path:
    """Trains the router on the train split, evaluates on the held-out split, writes the policy + router_report."""
    policy = PersonaFusePolicy.from_pretrained(cfg.init_from) if cfg.init_from else fresh_policy(cfg)
    train_set, held_set = load_situations(cfg.situations, "train"), load_situations(cfg.situations, "heldout")
    if not train_set or not held_set:
        raise ValueError(f"{cfg.situations}: needs both train and heldout situations")
    experts = policy.experts
    start = time.perf_counter()
    x_train, x_held = (cached_features(policy, s, cfg.max_prompt_tokens) for s in (train_set, held_set))
    feature_seconds = time.perf_counter() - start
    q_train = torch.stack([s.target_vector(experts) for s in train_set])  # (N, E)
    q_held = torch.stack([s.target_vector(experts) for s in held_set])
    labels = q_train.argmax(-1)
    router = policy.router.train()
    torch.manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(router.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    divergence = target_kl if cfg.loss == "kl" else target_cross_entropy
    temperature = router.config.temperature
    history = []
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(x_train))
        total = 0.0
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            out = router(x_train[idx])
            loss = divergence(out.router_logits, q_train[idx], temperature)
            if cfg.contrastive_coef > 0:
                loss = loss + cfg.contrastive_coef * supervised_contrastive(
                    router.embed(x_train[idx]), labels[idx], cfg.contrastive_temperature
                )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        if epoch % max(1, cfg.epochs // 10) == 0 or epoch == cfg.epochs - 1:
            with torch.no_grad():
                held = routing_metrics(router(x_held).probs, q_held, experts)
            history.append({"epoch": epoch + 1, "train_loss": total / len(order), "heldout_top1": held["top1"]})
    router.eval()
    with torch.no_grad():
        report = {
            "train": {
                k: v for k, v in routing_metrics(router(x_train).probs, q_train, experts).items() if k != "confusion"
            },
            "heldout": routing_metrics(router(x_held).probs, q_held, experts),
            "heldout_kl": target_kl(router(x_held).router_logits, q_held, temperature).item(),
            "train_situations": len(train_set),
            "heldout_situations": len(held_set),
            "feature_seconds": feature_seconds,
            "history": history,
        }
    target = Path(cfg.output_dir)
    with atomic_dir(target) as out:
        policy.save_pretrained(out / "policy")
        (out / "router_report.json").write_text(json.dumps(report, indent=2))
        (out / "training_config.json").write_text(cfg.model_dump_json(indent=2))
        plot_confusion(report["heldout"]["confusion"], out / "router_confusion.png")
    return target


def plot_confusion(confusion: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    experts, counts = confusion["experts"], confusion["counts"]
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(len(experts)), experts, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(experts)), experts, fontsize=7)
    for i, row in enumerate(counts):
        for j, value in enumerate(row):
            if value:
                ax.text(j, i, str(value), ha="center", va="center", fontsize=7)
    ax.set_xlabel("router top-1")
    ax.set_ylabel("target primary pole")
    ax.set_title("held-out routing confusion")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
