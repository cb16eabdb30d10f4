"""jobs/evaluate.py's run on the tiny model: every section lands in report.json, report.md and the PNGs."""

from __future__ import annotations

import json

import pytest

from policies.evaluation_job import EvaluationConfig, run_evaluation
from policies.trait_probes import MEASURES
from tests.conftest import randomize_experts


@pytest.mark.slow
def test_report_has_every_section(tmp_path, tiny_policy) -> None:
    tiny_policy.save_pretrained(tmp_path / "fresh")  # experts still equal the base: no trait moves
    randomize_experts(tiny_policy, std=0.2)
    tiny_policy.save_pretrained(tmp_path / "policy")
    mc = tmp_path / "mc.jsonl"
    mc.write_text(json.dumps({"scenario": "A friend is sad.", "question": "What helps?", "choices": ["listen", "mock"],
                              "answer_index": 0}) + "\n")  # fmt: skip
    short = tmp_path / "short.jsonl"
    short.write_text(json.dumps({"question": "What is 2 + 2?", "answer": "4"}) + "\n")
    cfg = EvaluationConfig(
        policy=str(tmp_path / "policy"), output_dir=str(tmp_path / "eval"), multiple_choice=(str(mc),),
        reasoning=(str(mc), str(short)), win_rate_reward="length", win_rate_options={"min_words": 1, "max_words": 5},
        max_win_rate_prompts=3, max_new_tokens=6, trait_references={"fresh": str(tmp_path / "fresh")},
    )  # fmt: skip
    out = run_evaluation(cfg)
    report = json.loads((out / "report.json").read_text())
    for section in ("trait_directions", "multiple_choice", "reasoning", "win_rate", "safety", "routing"):
        assert report.get(section), section
    assert set(report["reasoning"][str(short)]["base"]) == {"items", "accuracy"}  # scored as short answer
    assert "loglik_accuracy" in report["reasoning"][str(mc)]["policy"]
    assert [len(report["trait_directions"][m]) for m in MEASURES] == [10] * len(MEASURES)
    assert 0.0 <= report["win_rate"]["win_rate"] <= 1.0
    assert set(report["safety"]) == {"policy", "base"} and len(report["routing"]) == 7  # the 7 categories
    fresh = report["trait_references"]["fresh"]["trait_directions"]
    assert [sum(r["right_direction"] for r in fresh[m]) for m in MEASURES] == [0] * len(MEASURES)
    assert fresh["situational"] != report["trait_directions"]["situational"]
    markdown = (out / "report.md").read_text()
    assert "Trait expression" in markdown and "routing_heatmap.png" in markdown
    assert "| situational | 0/10 |" in markdown and "## Trait expression, situational, fresh (0/10" in markdown
    assert (out / "trait_directions.png").is_file() and (out / "routing_heatmap.png").is_file()


def test_a_malformed_file_fails_before_the_model_loads(tmp_path) -> None:
    bad = tmp_path / "short.jsonl"
    bad.write_text(json.dumps({"question": "What is 2 + 2?"}) + "\n")
    cfg = EvaluationConfig(policy=str(tmp_path / "no-policy-here"), output_dir=str(tmp_path / "eval"),
                           reasoning=(str(bad),))  # fmt: skip
    with pytest.raises(ValueError, match=r"short\.jsonl: line 1"):  # not the missing policy folder
        run_evaluation(cfg)


def test_bad_references_rewards_and_sections_fail_before_any_scoring(tmp_path, tiny_policy) -> None:
    """A misspelt reward, a reference folder that holds no policy, or an unknown section: an error before the
    minutes of trait scoring, not after them."""
    from pydantic import ValidationError

    folder = tmp_path / "policy"
    tiny_policy.save_pretrained(folder)
    base = {"policy": str(folder), "output_dir": str(tmp_path / "eval"), "sections": ("traits", "win_rate")}
    with pytest.raises(ValueError, match="reward_modle"):
        run_evaluation(EvaluationConfig(**base, win_rate_reward="reward_modle"))
    with pytest.raises(FileNotFoundError, match="not a PersonaFuse policy folder"):
        run_evaluation(EvaluationConfig(**base, trait_references={"stage 1": str(tmp_path / "nothing")}))
    with pytest.raises(ValidationError, match="sections"):
        EvaluationConfig(**{**base, "sections": ("traits", "safty")})
    assert not (tmp_path / "eval").exists()
