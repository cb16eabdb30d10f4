"""The evaluation run behind jobs/evaluate.py: config, every section, and the report files."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from policies.atomic_io import atomic_dir
from policies.config import FrozenConfig
from policies.evaluation import (
    ShortAnswerItem,
    evaluate_mc,
    evaluate_short_answer,
    is_short_answer_file,
    load_mc,
    load_short_answer,
    plot_routing,
    report_markdown,
    routing_by_category,
    safety_rates,
    win_rate,
)
from policies.policy import PersonaFusePolicy
from policies.situations import load_situations, spread_over_categories
from policies.trait_probes import MEASURES, trait_direction_table


class EvaluationConfig(FrozenConfig):
    policy: str = Field(description="A saved policy folder (PersonaFusePolicy.save_pretrained).")
    base_model: str | None = Field(None, description="Override the base folder recorded in the policy.")
    output_dir: str = Field(description="report.json, report.md and PNGs, written atomically.")
    multiple_choice: tuple[str, ...] = Field((), description="Generic MC JSONL files (EmoBench-style data you have).")
    reasoning: tuple[str, ...] = Field(
        (), description="Reasoning-retention files: MC JSONL, or short-answer JSONL (question, answer)."
    )
    win_rate_reward: str = Field("reward_model", description="Registered reward component judging the win rate.")
    win_rate_options: dict[str, Any] = Field(default_factory=dict, description="Its options (default: embedded).")
    situations: str = Field("builtin", description="Situations for routing and win rate (held-out split).")
    max_win_rate_prompts: int = Field(
        20, ge=1, description="Held-out situations used for the win rate, taken in turn from each category."
    )
    max_new_tokens: int = Field(64, ge=1, description="Reply length for win rate and safety.")
    trait_references: dict[str, str] = Field(
        default_factory=dict,
        description="Other policy folders (label -> folder) whose trait-direction tables the report shows beside this "
        "policy's; jobs/pipeline.py adds stage 1's experts as 'after stage 1'.",
    )
    sections: tuple[Literal["traits", "multiple_choice", "reasoning", "win_rate", "safety", "routing"], ...] = Field(
        ("traits", "multiple_choice", "reasoning", "win_rate", "safety", "routing"), description="What to run."
    )


def _plot_traits(tables: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tables), figsize=(6 * len(tables), 3.5), squeeze=False)
    for ax, (measure, rows) in zip(axes[0], tables.items(), strict=True):
        colours = ["tab:green" if r["right_direction"] else "tab:red" for r in rows]
        ax.bar([r["expert"] for r in rows], [r["delta"] for r in rows], color=colours)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_ylabel("trait score change vs base")
        ax.tick_params(axis="x", rotation=60, labelsize=7)
        right = sum(r["right_direction"] for r in rows)
        ax.set_title(f"{measure.replace('_', ' ')}: {right}/{len(rows)} right (green)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _load_files(cfg: EvaluationConfig) -> dict[str, dict[str, list]]:
    """Every MC / short-answer file, read and checked before any model work (errors name file and line)."""
    loaded: dict[str, dict[str, list]] = {}
    for section in ("multiple_choice", "reasoning"):
        if section in cfg.sections:
            short = section == "reasoning"  # short answers measure reasoning; the MC section is MC only
            loaded[section] = {
                f: load_short_answer(f) if short and is_short_answer_file(f) else load_mc(f)
                for f in getattr(cfg, section)
            }
    return loaded


def _score_items(policy: PersonaFusePolicy, items: list, cfg: EvaluationConfig) -> dict[str, dict]:
    """Policy ("auto" routing) and base on one file's items."""
    if isinstance(items[0], ShortAnswerItem):
        return {who: evaluate_short_answer(policy, items, persona, cfg.max_new_tokens)
                for who, persona in (("policy", "auto"), ("base", None))}  # fmt: skip
    return {"policy": evaluate_mc(policy, items, "auto"), "base": evaluate_mc(policy, items, None)}


def win_rate_options(cfg: EvaluationConfig) -> dict[str, Any]:
    return cfg.win_rate_options or ({"path": "embedded-social"} if cfg.win_rate_reward == "reward_model" else {})


def check_win_rate_reward(cfg: EvaluationConfig) -> None:
    """The win-rate reward's cheap checks, loading nothing: a registered name, and its ``preflight`` (a missing
    model folder); ValueError naming win_rate_reward."""
    from rewards.compose import check_term

    if "win_rate" not in cfg.sections:
        return
    try:
        check_term(cfg.win_rate_reward, win_rate_options(cfg))
    except (OSError, ValueError) as exc:
        raise ValueError(f"win_rate_reward={cfg.win_rate_reward!r}: {exc}") from exc


def run_evaluation(cfg: EvaluationConfig) -> Path:
    import rewards.compose  # noqa: F401  (registers the reward components)
    from rewards.base import get_reward

    # Everything that can be wrong with the inputs fails here, before minutes of scoring.
    files = _load_files(cfg)
    for folder in (cfg.policy, *cfg.trait_references.values()):
        PersonaFusePolicy.saved_config(folder, base_model=cfg.base_model)  # a policy folder, or a clear error
    check_win_rate_reward(cfg)
    scorer = get_reward(cfg.win_rate_reward)(**win_rate_options(cfg)) if "win_rate" in cfg.sections else None
    policy = PersonaFusePolicy.from_pretrained(cfg.policy, base_model=cfg.base_model).eval()
    held = load_situations(cfg.situations, "heldout")
    report: dict[str, Any] = {"policy": cfg.policy, "experts": list(policy.experts)}
    timings: dict[str, float] = {}

    def timed(name: str, fn):
        start = time.perf_counter()
        result = fn()
        timings[name] = time.perf_counter() - start
        return result

    def traits_of(p: PersonaFusePolicy, prefix: str = "") -> dict[str, list[dict]]:
        return {m: timed(f"traits:{prefix}{m}", lambda m=m: trait_direction_table(p, m)) for m in MEASURES}

    if "traits" in cfg.sections:
        report["trait_directions"] = traits_of(policy)
        report["trait_references"] = {
            label: {
                "policy": folder,
                "trait_directions": traits_of(
                    PersonaFusePolicy.from_pretrained(folder, base_model=cfg.base_model).eval(), f"{label}:"
                ),
            }
            for label, folder in cfg.trait_references.items()
        }
    for section, items_by_file in files.items():
        if items_by_file:
            report[section] = {
                f: timed(f"{section}:{f}", lambda items=items: _score_items(policy, items, cfg))
                for f, items in items_by_file.items()
            }
    if scorer is not None:
        prompts = [s.text for s in spread_over_categories(held, cfg.max_win_rate_prompts)]  # every category
        report["win_rate"] = {
            "reward": cfg.win_rate_reward,
            **timed("win_rate", lambda: win_rate(policy, prompts, scorer, cfg.max_new_tokens)),
        }
    if "safety" in cfg.sections:
        report["safety"] = timed("safety", lambda: safety_rates(policy, cfg.max_new_tokens))
    if "routing" in cfg.sections:
        report["routing"] = timed("routing", lambda: routing_by_category(policy, held))
    report["seconds"] = timings
    target = Path(cfg.output_dir)
    with atomic_dir(target) as out:
        (out / "report.json").write_text(json.dumps(report, indent=2))
        (out / "report.md").write_text(report_markdown(report))
        if "trait_directions" in report:
            _plot_traits(report["trait_directions"], out / "trait_directions.png")
        if "routing" in report:
            plot_routing(report["routing"], policy.experts, out / "routing_heatmap.png")
    return target
