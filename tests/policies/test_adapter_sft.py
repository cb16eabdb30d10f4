"""Stage 1b on the tiny model: one-hot SFT lowers each expert's held-out NLL below the base's; the policy reloads."""

from __future__ import annotations

import json
import math

import pytest
import torch

from policies.adapter_sft import (
    AdapterSFTConfig,
    opposite_replies,
    pole_contrast_loss,
    specialisation_penalty,
    split_heldout,
    train_adapters,
)
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
    AdamW and gradient clipping); bf16-mixed (autocast matmuls) through a ZeRO-0 engine in the same process learns
    about as far as fp32 (held-out NLL within 15%: bf16 rounding moves the path)."""
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

    fp32_report, plain = run("torch")
    _, engine = run("zero2", zero_stage=2)
    moved = max((plain[n] - engine[n]).abs().max().item() for n in plain)
    assert moved < 1e-4, moved
    report, _ = run("bf16", dtype="bf16-mixed", zero_stage=0)
    for name in experts:  # learns (fp32 goes from ~11 to ~6.2-6.7 here), and about as far as fp32
        before, after = report["heldout_before"][name]["nll_expert"], report["heldout_after"][name]["nll_expert"]
        assert after < 0.7 * before
        assert after == pytest.approx(fp32_report["heldout_after"][name]["nll_expert"], rel=0.15)


def test_every_expert_with_two_situations_holds_one_out_whole() -> None:
    rows = (
        [(0, f"s{i}", "r") for i in range(8)] + [(1, f"s{i}", "r") for i in range(2)] + [(2, "s0", "r")]
        + [(3, f"s{i % 10}", f"r{i}") for i in range(30)]  # 10 situations x 3 replies
    )  # fmt: skip
    train, held = split_heldout(rows, 4, 0.1)
    assert [sum(r[0] == e for r in held) for e in range(4)] == [1, 1, 0, 3]  # expert 3: one situation, 3 replies
    assert len(train) + len(held) == len(rows)
    for e in range(4):  # no held-out situation of an expert is in its training rows
        assert not {r[1] for r in held if r[0] == e} & {r[1] for r in train if r[0] == e}
    assert split_heldout(rows, 4, 0.0)[1] == []
    assert split_heldout([(0, "s", "r")] * 5, 1, 0.5)[1] == []  # one situation: nothing to hold out whole


def test_pole_contrast_loss_matches_hand_values() -> None:
    # pair 1: m = (-1 - -1.5) - (-2 - -1.5) = 1.0; pair 2: m = (-2 - -1.75) - (-1 - -1) = -0.25; beta = 2
    loss = pole_contrast_loss(
        torch.tensor([-1.0, -2.0]), torch.tensor([-2.0, -1.0]), torch.tensor([-1.5, -1.75]), torch.tensor([-1.5, -1.0]),
        beta=2.0,
    )  # fmt: skip
    expected = (math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(0.5))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_opposite_replies_pair_the_two_poles_of_a_trait_on_the_same_situation() -> None:
    experts = ("openness_high", "openness_low", "extraversion_high")
    rows = [
        (0, "s1", "curious"), (1, "s1", "plain"), (1, "s1", "plain again"),  # s1: both openness poles
        (0, "s2", "curious too"),  # s2: only the high pole answered
        (2, "s1", "loud"),  # extraversion_low is not in the policy
    ]  # fmt: skip
    assert opposite_replies(rows, experts) == {(0, "s1"): "plain", (1, "s1"): "curious"}


@pytest.mark.slow
def test_pole_contrast_starts_at_log2_and_separates_the_poles(tmp_path, tiny_model_dir) -> None:
    """Fresh experts equal the base, so every margin is 0 and the first contrast loss is log 2; training drives it
    down (each pole's reply gains on the opposite pole's)."""
    experts = ("openness_high", "openness_low")
    cfg = AdapterSFTConfig(
        base_model=str(tiny_model_dir), experts=experts, data_dir=str(_data(tmp_path, experts)),
        output_dir=str(tmp_path / "out"), epochs=4, batch_size=8, lr=1e-2, heldout_fraction=0.0,
        pole_contrast_coef=1.0, pole_contrast_beta=5.0,
    )  # fmt: skip
    report = json.loads((train_adapters(cfg) / "sft_report.json").read_text())
    assert report["pole_contrast_pairs"] == 40  # 20 situations, each answered by both poles
    contrast = [entry["pole_contrast"] for entry in report["losses"]]
    assert contrast[0] == pytest.approx(math.log(2), abs=1e-4)
    assert contrast[-1] < 0.1


def test_persona_file_skips_blank_lines_and_names_bad_ones(tmp_path) -> None:
    from policies.adapter_sft import read_persona_file

    path = tmp_path / "openness_high.jsonl"
    row = json.dumps({"situation": "s", "reply": "r"})
    path.write_text(f"{row}\n\n{row}\n")  # a blank line (an editor's or a concatenation's) is not data
    assert read_persona_file(path) == [("s", "r"), ("s", "r")]
    path.write_text(f"{row}\n\n{{oops\n")
    with pytest.raises(ValueError, match=r"openness_high\.jsonl: line 3: not JSON"):
        read_persona_file(path)


def test_an_over_long_row_is_named_by_file_and_line_before_training(tmp_path, tiny_policy) -> None:
    from policies.adapter_sft import check_row_lengths

    experts = tiny_policy.experts[:2]
    for name in experts:
        rows = [{"situation": "My cat died.", "reply": "I am so sorry."}] * 3
        if name == experts[1]:
            rows[2] = {"situation": "My cat died.", "reply": "so sorry " * 200}
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    check_row_lengths(tiny_policy, tmp_path, experts[:1], max_tokens=64)
    with pytest.raises(ValueError, match=rf"{experts[1]}\.jsonl: line 3: \d+ tokens \(prompt \+ reply \+ EOS\)"):
        check_row_lengths(tiny_policy, tmp_path, experts, max_tokens=64)
