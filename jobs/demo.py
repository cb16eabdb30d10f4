"""The main job on the embedded default, as a cluster user runs it: start a local Ray head, `ray job submit` the
run (jobs/grpo.py, or jobs/ppo.py for a PPO preset), show where the curves are and one reply before vs after, stop Ray.

    python jobs/demo.py                                       # configs/smollm2_cpu_grpo.yaml (what `make demo` runs)
    python jobs/demo.py --config configs/tiny_test.yaml policy.base_model=DIR    # any preset + overrides
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO_PROMPT = "I didn't get the job I interviewed for, and I feel like I'm never going to be good enough."
HEAD_STARTS = 2  # a head whose ports were taken while it started (see start_head) is replaced once, on fresh ports


class HeadNotReady(RuntimeError):
    """The head exited, or never took the job, before any job was submitted to it."""


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free now (all held open until every one is chosen)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def start_head(env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """`ray start --head --block` on loopback; terminating the process stops the whole head. Every port is a free
    one: another Ray on this machine (a notebook's ``ray.init()``) holds the defaults, and a job agent that cannot
    bind its port leaves the head unable to take any job."""
    names = ("port", "dashboard-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
             "metrics-export-port", "ray-client-server-port")  # fmt: skip  # Ray's defaults: 6379, 8265, 52365, ...
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    dashboard = ports["dashboard-port"]
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
           "--dashboard-host=127.0.0.1", *(f"--{name}={port}" for name, port in ports.items())]  # fmt: skip
    head = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return head, f"http://127.0.0.1:{dashboard}"


def submit(address: str, job: str, job_args: list[str], env: dict[str, str], head: subprocess.Popen) -> None:
    """`ray job submit --no-wait`, then follow the job's log here and check its final status. The submission is
    retried while the head is still starting: its dashboard may refuse or drop the connection, or answer before its
    job agent is up ("No available agent"). The submission id is fixed, so a retry never runs the job twice: if a
    dropped request did create the job, the retry is told it exists, and that counts as submitted."""
    ray = str(Path(sys.executable).parent / "ray")
    job_id = f"personafuse-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    cmd = [
        ray, "job", "submit", f"--address={address}", f"--submission-id={job_id}", "--no-wait", "--working-dir", ".",
        "--", sys.executable,  # the entrypoint runs in a shell on the head: this interpreter, not PATH's `python`
        job, *job_args,
    ]  # fmt: skip
    print("$ RAY_AUTH_MODE=disabled ray " + " ".join(cmd[1:]), flush=True)
    starting = ("No available agent", "Failed to connect", "Connection aborted", "Connection refused")
    for attempt in range(90):
        if head.poll() is not None:
            raise HeadNotReady("the Ray head exited before the job was submitted")
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        said = done.stdout + done.stderr
        if done.returncode == 0 or (attempt > 0 and f"submission_id {job_id} already exists" in said):
            break
        if not any(marker in said for marker in starting):
            raise RuntimeError(f"ray job submit failed (exit {done.returncode}):\n{said}")
        time.sleep(2)
    else:
        raise HeadNotReady(f"the Ray head at {address} did not take the job within 180 s")
    subprocess.run([ray, "job", "logs", "--follow", f"--address={address}", job_id], env=env)
    said = wait_for_job(ray, address, job_id, env, head)
    if f"job '{job_id}' succeeded" not in said:
        raise RuntimeError(f"the GRPO job {job_id} did not succeed:\n{said}")
    print(f"job {job_id} succeeded", flush=True)


def wait_for_job(
    ray: str, address: str, job_id: str, env: dict[str, str], head: subprocess.Popen, timeout_s: float = 3600
) -> str:
    """``ray job status`` until the job has ended; returns what it said, lower-cased. Polled, because the log
    stream above can end early (a dropped connection) and one status call can fail the same way."""
    deadline = time.monotonic() + timeout_s
    while True:
        if head.poll() is not None:
            raise RuntimeError(f"the Ray head exited while the GRPO job {job_id} ran")
        try:
            done = subprocess.run(
                [ray, "job", "status", f"--address={address}", job_id],
                env=env, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            said = (done.stdout + done.stderr).lower()
        except subprocess.TimeoutExpired:
            said = "(ray job status did not answer within 120 s)"
        if any(f"job '{job_id}' {end}" in said for end in ("succeeded", "failed", "was stopped")):
            return said
        if time.monotonic() > deadline:
            raise RuntimeError(f"the GRPO job {job_id} had not ended after {timeout_s:.0f} s:\n{said}")
        time.sleep(5)


def show_results(cfg, run_dir: Path) -> None:
    from policies import PersonaFusePolicy
    from rlhf.build import build_policy

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[0], rows[-1]
    print(f"\nrun folder: {run_dir}")
    print(f"curves:     {run_dir / 'reward.png'}, {run_dir / 'kl.png'}, {run_dir / 'router_usage.png'}")
    print(f"tensorboard --logdir {run_dir / 'tensorboard'}")
    print(
        f"reward/mean: step {first['step']} {first['reward/mean']:.3f} -> step {last['step']} {last['reward/mean']:.3f}"
    )
    half = len(rows) // 2 or 1
    early = sum(r["reward/mean"] for r in rows[:half]) / half
    late = sum(r["reward/mean"] for r in rows[half:]) / max(len(rows) - half, 1)
    print(f"reward/mean, first half vs second half of the run: {early:.3f} -> {late:.3f}")
    if "reward/overlong" in last:  # algorithm.overlong.buffer: reward/mean includes the length penalty
        print(f"  of which the overlong penalty: {first['reward/overlong']:.3f} -> {last['reward/overlong']:.3f}")
    print(
        f"replies cut off at {cfg.rollout.max_new_tokens} tokens: step {first['step']} "
        f"{first['response/clip_frac']:.2f} -> step {last['step']} {last['response/clip_frac']:.2f}"
    )
    if (run_dir / "eval.jsonl").exists():  # run.eval_every: the same held-out prompts and seed each time
        evals = [json.loads(line) for line in (run_dir / "eval.jsonl").read_text().splitlines()]
        trend = " -> ".join(
            f"step {e['step']} {e['eval/reward/mean']:.3f} ({e['eval/response/clip_frac']:.2f} cut off)" for e in evals
        )
        print(f"held-out reward ({run_dir / 'eval.png'}; replies in {run_dir / 'eval'}): {trend}")
    trained = PersonaFusePolicy.from_pretrained(run_dir / "policy").eval()
    fresh = build_policy(cfg)  # exactly the run's seeded initial policy
    chat = [[{"role": "user", "content": DEMO_PROMPT}]]
    for label, policy in (("before", fresh.eval()), ("after", trained)):  # at the length RL trained on
        [reply] = policy.generate(chat, max_new_tokens=cfg.rollout.max_new_tokens)
        experts = ", ".join(f"{n} {w:.2f}" for n, w in reply.top_experts(3))
        print(f"\n{label} RL  [{experts}]\n  {reply.text}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/smollm2_cpu_grpo.yaml")
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides for the job")
    args = parser.parse_args()

    from rlhf.config import ConfigError, load_config

    name = f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    overrides = [f"run.name={name}", *args.overrides]
    try:  # the same validation the job does, before any Ray process starts
        cfg = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run_dir = (ROOT / cfg.run.output_dir / cfg.run.name).resolve()
    overrides = [*overrides, f"run.output_dir={run_dir.parent}"]  # the job runs in Ray's copy of the repo
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}  # loopback-only head; the same mode for start and submit
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # Ray's workers use this venv
    for attempt in range(1, HEAD_STARTS + 1):
        head, address = start_head(env)
        try:
            submit(address, f"jobs/{cfg.algorithm.name}.py", ["--config", args.config, *overrides], env, head)
            break
        except HeadNotReady as exc:
            if attempt == HEAD_STARTS:
                raise
            print(f"{exc}; starting a new head on fresh ports", flush=True)
        finally:
            head.terminate()
            head.wait(timeout=120)
    show_results(cfg, run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
