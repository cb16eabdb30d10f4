"""Stage 1b on the tiny model: one-hot SFT lowers each expert's held-out NLL below the base's; the policy reloads."""

from __future__ import annotations

import json

import pytest
import torch

from policies.adapter_sft import AdapterSFTConfig, specialisation_penalty, split_heldout, train_adapters
from policies.policy import PersonaFusePolicy
from tests.conftest import randomize_experts


def test_specialisation_penalty_is_zero_for_orthogonal_and_one_for_equal_experts(tiny_policy) -> None:
    for layer in tiny_policy.mixture_layers.values():
        with torch.no_grad():
            layer.lora_B.zero_()
            for e in range(layer.lora_B.shape[0]):
                layer.lora_B[e].view(-1)[e] = 1.0  # one-hot, mutually orthogonal
    assert specialisation_penalty(tiny_policy).item() == pytest.approx(0.0)
    for layer in tiny_policy.mixture_layers.values():
        with torch.no_grad():
            layer.lora_B.fill_(1.0)
    assert specialisation_penalty(tiny_policy).item() == pytest.approx(1.0, abs=1e-5)
    randomize_experts(tiny_policy)
    assert 0.0 < specialisation_penalty(tiny_policy).item() < 0.5


def _data(tmp_path, experts):
    folder = tmp_path / "data"
    folder.mkdir()
    for e, name in enumerate(experts):
        word = ["wonderful", "terrible"][e]
        rows = [{"situation": f"Tell me about day {i}.", "reply": f"It was a {word} {word} day."} for i in range(20)]
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.mark.slow
def test_sft_learns_each_experts_replies_and_reloads(tmp_path, tiny_model_dir) -> None:
    experts = ("openness_high", "openness_low")
    cfg = AdapterSFTConfig(
        base_model=str(tiny_model_dir), experts=experts, data_dir=str(_data(tmp_path, experts)),
        output_dir=str(tmp_path / "out"), epochs=8, batch_size=6, lr=1e-2, heldout_fraction=0.2,
    )  # fmt: skip
    out = train_adapters(cfg)
    report = json.loads((out / "sft_report.json").read_text())
    for name in experts:
        after = report["heldout_after"][name]
        assert after["nll_expert"] < 0.6 * report["heldout_before"][name]["nll_expert"]
        assert after["nll_expert"] < after["nll_base"]
    policy = PersonaFusePolicy.from_pretrained(out / "policy")
    assert policy.experts == experts


@pytest.mark.slow
def test_deepspeed_engine_matches_plain_adamw_and_bf16_mixed_learns(tmp_path, tiny_model_dir) -> None:
    """The same SFT through a one-rank DeepSpeed ZeRO-2 engine (fp32) ends at the plain-torch weights (the same
    AdamW and gradient clipping); bf16-mixed (autocast matmuls) through a ZeRO-0 engine in the same process still
    learns."""
    experts = ("openness_high", "openness_low")
    data = _data(tmp_path, experts)

    def run(name: str, **options) -> tuple[dict, dict[str, torch.Tensor]]:
        cfg = AdapterSFTConfig(
            base_model=str(tiny_model_dir), experts=experts, data_dir=str(data), output_dir=str(tmp_path / name),
            epochs=3, batch_size=6, lr=1e-2, heldout_fraction=0.2, **options,
        )  # fmt: skip
        out = train_adapters(cfg)
        lora = {n: p.detach().clone() for n, p in PersonaFusePolicy.from_pretrained(out / "policy").named_parameters()
                if "lora_" in n}  # fmt: skip
        return json.loads((out / "sft_report.json").read_text()), lora

    _, plain = run("torch")
    _, engine = run("zero2", zero_stage=2)
    moved = max((plain[n] - engine[n]).abs().max().item() for n in plain)
    assert moved < 1e-4, moved
    report, _ = run("bf16", dtype="bf16-mixed", zero_stage=0)
    for name in experts:
        assert report["heldout_after"][name]["nll_expert"] < 0.6 * report["heldout_before"][name]["nll_expert"]


def test_every_expert_with_two_rows_holds_one_out() -> None:
    rows = [(0, "s", "r")] * 8 + [(1, "s", "r")] * 2 + [(2, "s", "r")] + [(3, "s", "r")] * 30
    train, held = split_heldout(rows, 4, 0.1)
    assert [sum(r[0] == e for r in held) for e in range(4)] == [1, 1, 0, 3]
    assert len(train) + len(held) == len(rows)
    assert split_heldout(rows, 4, 0.0)[1] == []
