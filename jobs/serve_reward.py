"""Serve one registered reward component over HTTP, for the ``remote`` reward (protocol: rewards/remote.py).

    python jobs/serve_reward.py --reward length --options '{"min_words": 5}'      # http://127.0.0.1:8000/score
    python jobs/serve_reward.py --reward validation --config validation.yaml --port 0  # YAML options, any free port
    ssh -L 8000:127.0.0.1:8000 reward-host      # reach it from the trainer; then, in the run's config:
        rewards: {components: [{name: remote, weight: 1.0, options: {url: "http://127.0.0.1:8000/score"}}]}

Binds 127.0.0.1 unless --host says otherwise; there is no authentication, so binding any other address prints a
warning. Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import sys
from pathlib import Path
from typing import Any

import yaml

import rewards.compose  # noqa: F401  (registers the built-in components)
from rewards.base import RewardFn, check_reward_options, get_reward
from rewards.remote import make_server


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reward", required=True, help="registered reward name, e.g. validation")
    options = parser.add_mutually_exclusive_group()
    options.add_argument("--options", help="the component's options as a JSON object, e.g. '{\"min_words\": 5}'")
    options.add_argument("--config", type=Path, help="YAML file holding the component's options (a mapping)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback; no auth!)")
    parser.add_argument("--port", type=int, default=8000, help="port to bind; 0 picks a free one (printed)")
    parser.add_argument("--max-batch", type=int, help="refuse requests of more completions (413); default: no limit")
    return parser.parse_args(argv)


def load_options(args: argparse.Namespace) -> dict[str, Any]:
    """The component's options from --options (JSON) or --config (YAML); {} if neither; ValueError if not a mapping."""
    if args.options is not None:
        source, options = "--options", json.loads(args.options)
    elif args.config is not None:
        source, options = str(args.config), yaml.safe_load(args.config.read_text()) or {}
    else:
        return {}
    if not isinstance(options, dict):
        raise ValueError(f"{source} must hold a mapping of option names to values, got {type(options).__name__}")
    return options


def build_component(name: str, options: dict[str, Any]) -> RewardFn:
    """``factory(**options)`` from the registry; ValueError naming the reward for an unknown name or bad option."""
    check_reward_options(name, options)  # unknown name or option name: did-you-mean
    try:
        return get_reward(name)(**options)
    except Exception as exc:
        raise ValueError(f"reward {name!r} with options {options}: {exc}") from exc


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: may resolve to anything


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        component = build_component(args.reward, load_options(args))
        server = make_server(component, args.reward, args.host, args.port, args.max_batch)
    except (ValueError, OSError, yaml.YAMLError) as exc:  # bad reward or options, unreadable --config, port taken
        print(f"serve_reward: {exc}", file=sys.stderr)
        return 2
    if not is_loopback(args.host):
        print(
            f"WARNING: serving on {args.host} with no authentication: anyone who can reach this port can call the "
            "reward. Prefer the default 127.0.0.1 and an SSH tunnel.",
            file=sys.stderr,
            flush=True,
        )
    host, port = server.server_address[:2]
    print(f"serving reward {args.reward!r} on http://{host}:{port} (POST /score, GET /health)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
