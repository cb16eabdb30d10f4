"""Run outputs: metrics.jsonl (one object per step), TensorBoard events, a progress bar and PNG plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tqdm import tqdm

from policies.atomic_io import atomic_write_text

PLOTS = {"reward": ("reward/mean",), "kl": ("kl",)}


class Tracker:
    def __init__(self, run_dir: Path, total_steps: int, experts: tuple[str, ...], start_step: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = run_dir
        self.experts = experts
        self.metrics_file = run_dir / "metrics.jsonl"
        if start_step:  # resuming: steps after the checkpoint are run again, so their old rows go
            kept = [json.dumps(r) + "\n" for r in self.history() if r["step"] <= start_step]
            atomic_write_text(self.metrics_file, "".join(kept))
        self.writer = SummaryWriter(str(run_dir / "tensorboard"))
        self.bar = tqdm(total=total_steps, initial=start_step, desc="rl", unit="step", dynamic_ncols=True)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        bad = [k for k, v in metrics.items() if not math.isfinite(v)]
        if bad:
            raise FloatingPointError(f"step {step}: non-finite metrics {bad}; stopping rather than logging them")
        with self.metrics_file.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.bar.update(1)
        self.bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}", kl=f"{metrics['kl']:.4f}")

    def history(self) -> list[dict[str, float]]:
        if not self.metrics_file.exists():
            return []
        return [json.loads(line) for line in self.metrics_file.read_text().splitlines() if line.strip()]

    def close(self) -> list[Path]:
        """Flushes TensorBoard and writes reward.png, kl.png and router_usage.png; returns the PNG paths."""
        self.writer.close()
        self.bar.close()
        return plot_history(self.history(), self.experts, self.run_dir)


def plot_history(rows: list[dict[str, float]], experts: tuple[str, ...], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return []
    steps = [r["step"] for r in rows]
    paths = []
    for name, keys in PLOTS.items():
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for key in keys:
            ax.plot(steps, [r[key] for r in rows], marker="o", label=key)
        ax.set_xlabel("step")
        ax.set_title(name)
        ax.legend()
        fig.tight_layout()
        paths.append(out_dir / f"{name}.png")
        fig.savefig(paths[-1])
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4))
    usage = [[r[f"router/weight/{e}"] for r in rows] for e in experts]
    ax.stackplot(steps, usage, labels=experts)
    ax.set_xlabel("step")
    ax.set_ylabel("mean routing weight")
    ax.set_title("router usage")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.tight_layout()
    paths.append(out_dir / "router_usage.png")
    fig.savefig(paths[-1])
    plt.close(fig)
    return paths
