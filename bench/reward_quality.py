"""How well do the rewards rank real counselling answers? Pair accuracy on CounselChat preference pairs
(../shared/data/counsel_chat/train_pairs.jsonl: the more-upvoted therapist answer is "chosen"), always beside the
length-only baseline ("the longer answer wins", right on ~61% of these pairs) and on the length-controlled subset
(pairs whose chosen answer is the shorter one, where that baseline is always wrong).

Measured, side by side in one run:
  default      the embedded default reward (rewards.compose.DEFAULT_REWARDS, total and each component) on all pairs
  judge        the embedded SmolLM2 rubric judge on the first --judge-pairs pairs (it is slow on CPU)
  trained      a reward model trained with jobs/train_reward.py on the pairs of 80% of the questions (split by
               question), scored on the held-out questions' pairs; the default reward on those same pairs too
  probe        a ceiling check on the data: a Bradley-Terry linear model on frozen MiniLM embeddings of the answer
               (mean-pooled, 512 tokens, so the whole answer is seen), with and without log(words), 5-fold by
               question, the same on the embedded SmolLM2's hidden states (layer 20 of 30, mean-pooled, 512
               tokens: a causal LM's view of the answer), and on a bag of words (word choice without length);
               if these cannot beat "longer wins", the text carries little upvote signal beyond length
and each component's scoring throughput (pairs/s). Goals: default above the length baseline and >= 0.5
length-controlled; trained >= 0.65 and above the length baseline on the same held-out pairs.

    python bench/reward_quality.py [--data PATH] [--epochs 3] [--judge-pairs 40]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch

from rewards.compose import DEFAULT_REWARDS, RewardComposer
from rewards.judge import Judge
from rewards.training import (
    PairRow,
    RewardTrainingConfig,
    base_model_path,
    evaluate_pairs,
    pair_metrics,
    train_reward_model,
)

DATA = Path(__file__).parents[1] / ".." / "shared" / "data" / "counsel_chat" / "train_pairs.jsonl"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_pairs(path: Path) -> list[PairRow]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [PairRow(r["prompt"], r["chosen"], r["rejected"], None, r["question_id"]) for r in rows]


def score_default(pairs: list[PairRow]) -> dict:
    """The composed default reward and each of its components, on the same pairs."""
    composer = RewardComposer(DEFAULT_REWARDS)
    prompts = [p.prompt for p in pairs]
    start = time.perf_counter()
    chosen = composer(prompts, [p.chosen for p in pairs], category=[None] * len(pairs))
    rejected = composer(prompts, [p.rejected for p in pairs], category=[None] * len(pairs))
    seconds = time.perf_counter() - start
    out = {"total": {**pair_metrics(chosen.rewards, rejected.rewards, pairs), "pairs_per_s": len(pairs) / seconds}}
    for key in chosen.components:
        sign = -1.0 if key.startswith("safety/") or key == "reward/repetition" else 1.0  # penalties: lower is better
        out[key] = pair_metrics(sign * chosen.components[key], sign * rejected.components[key], pairs)
    sample = pairs[:32]
    for key, fn in composer.functions.items():  # per-component throughput, each timed alone on a slice
        start = time.perf_counter()
        fn(prompts=[p.prompt for p in sample], completions=[p.chosen for p in sample])
        out[key]["pairs_per_s"] = len(sample) / 2 / (time.perf_counter() - start)  # a pair = two replies
    return out


def split_by_question(pairs: list[PairRow], held_share: float, seed: int) -> tuple[list[PairRow], list[PairRow]]:
    questions = sorted({p.group for p in pairs})
    order = torch.randperm(len(questions), generator=torch.Generator().manual_seed(seed)).tolist()
    held = {questions[i] for i in order[: round(held_share * len(questions))]}
    return [p for p in pairs if p.group not in held], [p for p in pairs if p.group in held]


def train_and_score(train: list[PairRow], held: list[PairRow], args: argparse.Namespace, workdir: Path) -> dict:
    train_file, eval_file = workdir / "train.jsonl", workdir / "eval.jsonl"
    for path, rows in ((train_file, train), (eval_file, held)):
        path.write_text(
            "".join(json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) + "\n" for p in rows)
        )
    cfg = RewardTrainingConfig.model_validate(
        {
            "output_dir": str(workdir / "rm"),
            "data": {"train": str(train_file), "eval": str(eval_file)},
            "epochs": args.epochs,
            "lr": args.lr,
            "max_length": args.max_length,
            "batch_size": 16,
        }
    )
    start = time.perf_counter()
    out = train_reward_model(cfg)
    report = json.loads((out / "eval.json").read_text())
    return {**report["held_out"], "train_pairs": len(train), "train_seconds": time.perf_counter() - start}


@torch.no_grad()
def embed(texts: list[str], batch: int = 16) -> dict[str, torch.Tensor]:
    """Unit-norm mean-pooled all-MiniLM-L6-v2 embeddings of each distinct text (512 tokens)."""
    from transformers import AutoModel, AutoTokenizer

    path = base_model_path("minilm")
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    unique = sorted(set(texts))
    out = {}
    for i in range(0, len(unique), batch):
        enc = tokenizer(unique[i : i + batch], padding=True, truncation=True, max_length=512, return_tensors="pt")
        mask = enc.attention_mask.unsqueeze(-1).float()
        pooled = (model(**enc).last_hidden_state * mask).sum(1) / mask.sum(1)
        out.update(zip(unique[i : i + batch], torch.nn.functional.normalize(pooled, dim=-1), strict=True))
    return out


@torch.no_grad()
def embed_causal(texts: list[str], layer: int = 20, batch: int = 8) -> dict[str, torch.Tensor]:
    """Mean-pooled hidden states after decoder layer ``layer`` of the embedded SmolLM2 (512 tokens), per distinct
    text; the decoder only, so no (tokens x vocabulary) logits are computed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from policies.embedded import embedded_model_dir

    path = embedded_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    decoder = AutoModelForCausalLM.from_pretrained(path).eval().get_decoder()
    unique = sorted(set(texts), key=len)  # similar lengths per batch: less padding
    out = {}
    for i in range(0, len(unique), batch):
        enc = tokenizer(unique[i : i + batch], padding=True, truncation=True, max_length=512, return_tensors="pt")
        states = decoder(**enc, output_hidden_states=True).hidden_states[layer]
        mask = enc.attention_mask.unsqueeze(-1).float()
        out.update(zip(unique[i : i + batch], (states * mask).sum(1) / mask.sum(1), strict=True))
    return out


def bag_of_words(texts: list[str], min_df: int = 2) -> Callable[[str], torch.Tensor]:
    """A featuriser: log(1 + count) of each word seen in >= ``min_df`` of ``texts``, L2-normalised (so it carries
    word choice, not length)."""
    docs = [re.findall(r"[a-z']+", t.lower()) for t in texts]
    df = Counter(w for d in docs for w in set(d))
    vocab = {w: i for i, w in enumerate(sorted(w for w, n in df.items() if n >= min_df))}

    def features(text: str) -> torch.Tensor:
        x = torch.zeros(len(vocab))
        for word, n in Counter(re.findall(r"[a-z']+", text.lower())).items():
            if word in vocab:
                x[vocab[word]] = math.log1p(n)
        return x / (x.norm() + 1e-6)

    return features


def fit_bradley_terry(x: torch.Tensor, l2: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """A linear scorer w with x = f(chosen) - f(rejected) rows, minimising mean softplus(-x w) + l2 |w|^2 on
    standardised features."""
    scale = x.std(0) + 1e-6
    w = torch.zeros(x.shape[1], requires_grad=True)
    optimiser = torch.optim.LBFGS([w], max_iter=200)

    def closure():
        optimiser.zero_grad()
        loss = torch.nn.functional.softplus(-(x / scale) @ w).mean() + l2 * w.square().sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    w = w.detach()
    return lambda f: (f / scale) @ w


def content_probe(pairs: list[PairRow], folds: int = 5, l2: float = 0.1, seed: int = 0) -> dict:
    """Held-out pair accuracy of linear Bradley-Terry models on fixed answer features, k-fold by question:
    frozen MiniLM embeddings (with and without log(words)), frozen SmolLM2 hidden states, and a bag of words (its
    vocabulary from the training folds' answers)."""
    answers = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    vectors, causal = embed(answers), embed_causal(answers)

    def log_words(text: str) -> torch.Tensor:
        return torch.tensor([math.log(len(text.split()) + 1)])

    featurisers: dict[str, Callable[[list[PairRow]], Callable[[str], torch.Tensor]]] = {
        "embedding": lambda train: vectors.__getitem__,
        "embedding+log_words": lambda train: lambda t: torch.cat([vectors[t], log_words(t)]),
        "smollm2_layer20": lambda train: causal.__getitem__,
        "bag_of_words": lambda train: bag_of_words([t for p in train for t in (p.chosen, p.rejected)]),
    }
    questions = sorted({p.group for p in pairs})
    order = torch.randperm(len(questions), generator=torch.Generator().manual_seed(seed)).tolist()
    out = {}
    for name, featuriser in featurisers.items():
        chosen, rejected, held_pairs = [], [], []
        for fold in range(folds):
            held = {questions[i] for i in order[fold::folds]}
            train = [p for p in pairs if p.group not in held]
            test = [p for p in pairs if p.group in held]
            f = featuriser(train)
            score = fit_bradley_terry(torch.stack([f(p.chosen) - f(p.rejected) for p in train]), l2)
            with torch.no_grad():
                chosen += [score(f(p.chosen)) for p in test]
                rejected += [score(f(p.rejected)) for p in test]
            held_pairs += test
        out[name] = pair_metrics(torch.stack(chosen), torch.stack(rejected), held_pairs)
    return {**out, "folds": folds, "l2": l2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--judge-pairs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    pairs = load_pairs(args.data)
    log(f"{len(pairs)} pairs from {len({p.group for p in pairs})} questions")

    log("scoring with the embedded default reward ...")
    default = score_default(pairs)
    log(json.dumps(default["total"]))

    log(f"scoring {args.judge_pairs} pairs with the embedded SmolLM2 empathy judge ...")
    judge_pairs = pairs[: args.judge_pairs]
    judge = evaluate_pairs(Judge(rubric="empathy", max_prompt_tokens=4096), judge_pairs) if judge_pairs else {}

    log("ceiling check: linear models on frozen MiniLM and SmolLM2 features, 5-fold by question ...")
    probe = content_probe(pairs, seed=args.seed)
    log(json.dumps(probe))

    log("training a reward model on 80% of the questions ...")
    train, held = split_by_question(pairs, 0.2, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        trained = train_and_score(train, held, args, Path(tmp))
    default_on_held = score_default(held)["total"]
    result = {
        "pairs": len(pairs),
        "length_baseline": default["total"]["length_baseline"],
        "default": default,
        "judge": judge,
        "trained_held_out": trained,
        "default_on_same_held_out": default_on_held,
        "probe": probe,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
