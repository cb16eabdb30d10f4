"""jobs/serve_reward.py: serves as a subprocess and the remote reward scores through it; option and host handling."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from jobs import serve_reward
from rewards.base import RewardFn
from rewards.remote import RemoteReward, RewardServer, make_server
from rewards.rules import Length

ROOT = Path(__file__).parents[2]


def test_serves_as_a_subprocess_and_the_client_scores_through_it() -> None:
    cmd = [sys.executable, "jobs/serve_reward.py", "--reward", "length", "--options", '{"min_words": 3}', "--port", "0"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killer = threading.Timer(300, proc.kill)  # a hung server fails the test instead of blocking the suite
    killer.start()
    try:
        line = proc.stdout.readline()
        match = re.search(r"serving reward 'length' on (http://127\.0\.0\.1:\d+)", line)
        assert match, f"no address in {line!r}; stderr: {proc.stderr.read() if proc.poll() is not None else ''}"
        base = match[1]
        with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
            assert json.loads(response.read()) == {"status": "ok", "reward": "length"}
        prompts, completions = ["a", "b", "c"], ["", "Oh no.", "I am so sorry to hear."]
        scores = RemoteReward(url=f"{base}/score", batch_size=2, timeout_s=5)(prompts=prompts, completions=completions)
        assert scores == Length(min_words=3)(prompts=prompts, completions=completions)
    finally:
        killer.cancel()
        proc.terminate()
        proc.wait(timeout=10)


def ctrl_c() -> None:
    raise KeyboardInterrupt


def fake_make_server(seen: dict[str, Any]) -> Callable[..., RewardServer]:
    """Stands in for make_server: records its arguments, binds loopback whatever the host, and stops at once."""

    def build(component: RewardFn, name: str, host: str, port: int, max_batch: int | None) -> RewardServer:
        seen.update(component=component, name=name, host=host, port=port, max_batch=max_batch)
        server = make_server(component, name, "127.0.0.1", 0, max_batch)
        server.serve_forever = ctrl_c  # as if Ctrl-C was pressed the moment it started
        return server

    return build


def test_other_host_warns_there_is_no_auth(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(serve_reward, "make_server", fake_make_server(seen))
    assert serve_reward.main(["--reward", "validation", "--host", "0.0.0.0", "--max-batch", "8"]) == 0
    assert seen["host"] == "0.0.0.0" and seen["port"] == 8000 and seen["max_batch"] == 8
    assert "WARNING: serving on 0.0.0.0 with no authentication" in capsys.readouterr().err
    assert serve_reward.main(["--reward", "validation"]) == 0
    assert seen["host"] == "127.0.0.1" and "WARNING" not in capsys.readouterr().err


def test_options_from_yaml_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(serve_reward, "make_server", fake_make_server(seen))
    (tmp_path / "length.yaml").write_text("min_words: 2\nmax_words: 4\n")
    assert serve_reward.main(["--reward", "length", "--config", str(tmp_path / "length.yaml")]) == 0
    assert seen["component"] == Length(min_words=2, max_words=4)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--reward", "lenght"], "did you mean 'length'"),
        (["--reward", "length", "--options", '{"min_word": 3}'], "did you mean 'min_words'"),
        (["--reward", "length", "--options", '{"min_words": 0}'], "need 1 <= min_words <= max_words"),
        (["--reward", "length", "--options", "[3]"], "--options must hold a mapping"),
        (["--reward", "length", "--options", "{min_words: 3}"], "Expecting property name"),
        (["--reward", "length", "--max-batch", "0"], "max_batch must be >= 1"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(args: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    assert serve_reward.main(args) == 2
    assert message in capsys.readouterr().err


def test_is_loopback() -> None:
    assert all(serve_reward.is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "127.0.0.2"))
    assert not any(serve_reward.is_loopback(h) for h in ("0.0.0.0", "10.0.0.5", "reward-host"))
