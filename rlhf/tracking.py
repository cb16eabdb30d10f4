"""Run outputs: metrics.jsonl (one object per step), TensorBoard events, a progress bar and PNG plots; with
run.eval_every, eval.jsonl (one object per evaluation), eval/step_N.jsonl (its replies) and eval.png."""

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
        self.eval_file = run_dir / "eval.jsonl"
        if not start_step:  # a fresh run (prepare_run_dir refused any with metrics): a failed start's evaluation goes
            self.eval_file.unlink(missing_ok=True)
        if start_step:  # resuming: steps after the checkpoint are run again, so their old rows go
            for path in (p for p in (self.metrics_file, self.eval_file) if p.exists()):
                kept = [json.dumps(r) + "\n" for r in read_rows(path) if r["step"] <= start_step]
                atomic_write_text(path, "".join(kept))
        # On resume TensorBoard drops the events after the checkpoint too, so rerun steps are not drawn twice.
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step + 1 if start_step else None)
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

    def log_eval(self, step: int, metrics: dict[str, float], replies: list[dict]) -> None:
        """One evaluation, of the weights after ``step`` updates (0 = before the first)."""
        bad = [k for k, v in metrics.items() if not math.isfinite(v)]
        if bad:
            raise FloatingPointError(f"evaluation at step {step}: non-finite metrics {bad}")
        with self.eval_file.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        atomic_write_text(self.run_dir / "eval" / f"step_{step}.jsonl", "".join(json.dumps(r) + "\n" for r in replies))
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.bar.write(f"eval after step {step}: held-out reward {metrics['eval/reward/mean']:.3f}")

    def history(self) -> list[dict[str, float]]:
        return read_rows(self.metrics_file)

    def close(self) -> list[Path]:
        """Flushes TensorBoard and writes reward.png, kl.png, router_usage.png and, with evaluations, eval.png;
        returns the PNG paths."""
        self.writer.close()
        self.bar.close()
        paths = plot_history(self.history(), self.experts, self.run_dir)
        evals = read_rows(self.eval_file)
        if evals:
            paths.append(plot_eval(evals, self.run_dir / "eval.png"))
        return paths


def read_rows(path: Path) -> list[dict[str, float]]:
    """A JSON-lines file's objects ([] when it does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_eval(rows: list[dict[str, float]], path: Path) -> Path:
    """Held-out reward (mean +- std over the replies) at each evaluation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    mean = [r["eval/reward/mean"] for r in rows]
    std = [r["eval/reward/std"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.errorbar(steps, mean, yerr=std, marker="o", capsize=3)
    ax.set_xlabel("step")
    ax.set_title("held-out reward")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


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
