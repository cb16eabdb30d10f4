"""jobs/chat.py end to end on a saved tiny policy, as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def run_chat(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "jobs" / "chat.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, input=stdin, timeout=300, cwd=ROOT)


def test_one_shot_and_profile(tiny_policy, tmp_path) -> None:
    tiny_policy.save_pretrained(tmp_path / "policy")
    done = run_chat("--policy", str(tmp_path / "policy"), "--prompt", "I miss home.", "--max-new-tokens", "4")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "user:    I miss home." in done.stdout and "reply:" in done.stdout
    assert done.stdout.count(" | ") == 1  # top-2 routing: two experts printed
    done = run_chat("--policy", str(tmp_path / "policy"), "--prompt", "hi", "--profile", "openness=-1")
    assert "experts: openness_low 1.00" in done.stdout


def test_interactive_reads_lines_until_empty(tiny_policy, tmp_path) -> None:
    tiny_policy.save_pretrained(tmp_path / "policy")
    done = run_chat("--policy", str(tmp_path / "policy"), "--max-new-tokens", "2", stdin="hello\nthanks\n\nignored\n")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("reply:") == 2


def test_bad_profile_is_a_clear_error(tiny_policy, tmp_path) -> None:
    tiny_policy.save_pretrained(tmp_path / "policy")
    done = run_chat("--policy", str(tmp_path / "policy"), "--prompt", "hi", "--profile", "charisma=+1")
    assert done.returncode != 0 and "unknown trait 'charisma'" in done.stderr
