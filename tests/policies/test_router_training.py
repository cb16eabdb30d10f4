"""Stage 2: the losses against hand values, the metrics, and a router that learns a separable labelling."""

from __future__ import annotations

import json
import math

import pytest
import torch

from policies.policy import PersonaFusePolicy
from policies.router_training import (
    RouterTrainingConfig,
    routing_metrics,
    supervised_contrastive,
    target_cross_entropy,
    target_kl,
    train_router,
)


def test_target_kl_and_cross_entropy_hand_values() -> None:
    logits = torch.tensor([[0.0, math.log(3.0)]])  # p = [0.25, 0.75]
    target = torch.tensor([[0.5, 0.5]])
    kl = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert target_kl(logits, target).item() == pytest.approx(kl, abs=1e-6)
    assert target_cross_entropy(logits, target).item() == pytest.approx(kl + math.log(2.0), abs=1e-6)  # + H(q)
    one_hot = torch.tensor([[0.0, 1.0]])
    assert target_kl(logits, one_hot).item() == pytest.approx(-math.log(0.75), abs=1e-6)  # 0 log 0 = 0
    assert target_kl(logits * 2, target, temperature=2.0).item() == pytest.approx(kl, abs=1e-6)


def test_supervised_contrastive_hand_value() -> None:
    features = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    tau = 0.5
    # anchor 0: positive 1 (sim 1), negatives {2} (sim 0): -log(e^{2} / (e^{2} + e^{0})); same for anchor 1;
    # anchor 2 has no positive and is skipped.
    expected = -math.log(math.exp(2.0) / (math.exp(2.0) + 1.0))
    assert supervised_contrastive(features, labels, tau).item() == pytest.approx(expected, abs=1e-6)
    assert supervised_contrastive(features, torch.tensor([0, 1, 2])).item() == 0.0


def test_routing_metrics_count_top1_top2_and_confusion() -> None:
    probs = torch.tensor([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.3, 0.05, 0.65]])
    targets = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 1.0, 0]])
    m = routing_metrics(probs, targets, ("a", "b", "c"))
    assert m["top1"] == pytest.approx(1 / 3) and m["top2"] == pytest.approx(2 / 3)
    assert m["confusion"]["counts"] == [[1, 0, 0], [1, 0, 1], [0, 0, 0]]
    tied = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.5, 0.0, 0.5]])  # 50/50 situations: either pole is right
    m = routing_metrics(torch.tensor([[0.2, 0.7, 0.1], [0.7, 0.2, 0.1], [0.1, 0.8, 0.1]]), tied, ("a", "b", "c"))
    assert m["top1"] == pytest.approx(2 / 3) and m["top2"] == pytest.approx(1.0)
    assert m["confusion"]["counts"] == [[1, 1, 0], [0, 1, 0], [0, 0, 0]]


@pytest.mark.slow
def test_router_learns_a_separable_labelling(tmp_path, tiny_model_dir) -> None:
    """Two kinds of situations (money complaints vs. grief) mapped to two poles: held-out top-1 must be perfect."""
    money = ["I was charged twice for my {} order.", "My {} refund never arrived.", "The {} bill is wrong again."]
    grief = ["My {} passed away last week.", "I keep crying since my {} died.", "We buried our {} yesterday."]
    things = ["grocery", "phone", "shoe", "laptop", "book", "sofa", "ticket", "gym"]
    people = ["grandma", "uncle", "cat", "dog", "friend", "teacher", "neighbour", "aunt"]
    rows = []
    for i, (templates, fill, pole) in enumerate(
        ((money, things, "conscientiousness_high"), (grief, people, "agreeableness_high"))
    ):
        for j, word in enumerate(fill):
            for k, template in enumerate(templates):
                split = "heldout" if j >= 6 else "train"
                rows.append({"id": f"s{i}-{j}-{k}", "category": "c", "situation": template.format(word),
                             "target": {pole: 1.0}, "split": split})  # fmt: skip
    data = tmp_path / "situations.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = RouterTrainingConfig(
        base_model=str(tiny_model_dir), output_dir=str(tmp_path / "out"), situations=str(data), epochs=150, lr=3e-3
    )
    out = train_router(cfg)
    report = json.loads((out / "router_report.json").read_text())
    assert report["heldout"]["top1"] == 1.0 and report["heldout_situations"] == 12
    assert report["history"][-1]["train_loss"] < report["history"][0]["train_loss"]
    assert (out / "router_confusion.png").is_file()
    policy = PersonaFusePolicy.from_pretrained(out / "policy")  # the stage output reloads
    reply = policy.generate([[{"role": "user", "content": "We buried our aunt yesterday."}]], max_new_tokens=1)[0]
    assert reply.top_experts(1)[0][0] == "agreeableness_high"
