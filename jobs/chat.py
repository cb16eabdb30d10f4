"""Chat with a PersonaFuse policy and see which persona experts the router activates.

python jobs/chat.py --prompt "My dog died yesterday."               # embedded SmolLM2, fresh experts
python jobs/chat.py --policy runs/x/policy --profile agreeableness=+1
python jobs/chat.py --demo                                          # a few built-in situations
python jobs/chat.py                                                 # interactive; empty line or Ctrl-D quits
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

import torch

from policies import PersonaConfig, PersonaFusePolicy, Reply
from policies.embedded import embedded_model_dir

# Written by the project for the demo; one per kind of situation the router should tell apart.
DEMO_SITUATIONS = (
    "My grandmother passed away last night and I can't stop crying.",
    "I ordered a blender three weeks ago, it arrived broken, and your support line keeps hanging up on me.",
    "I just got promoted to team lead and I'm throwing a party on Saturday!",
    "My roommate keeps eating my food without asking. How do I bring it up without a fight?",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", help="policy folder saved by PersonaFusePolicy (default: embedded, fresh)")
    parser.add_argument("--prompt", help="one message to answer; without it, chat interactively")
    parser.add_argument("--demo", action="store_true", help="answer the built-in demo situations")
    parser.add_argument("--profile", default="auto", help="'auto' (router) or a trait profile, e.g. agreeableness=+1")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--top", type=int, default=3, help="how many activated experts to print")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def load_policy(path: str | None) -> PersonaFusePolicy:
    if path:
        return PersonaFusePolicy.from_pretrained(path)
    return PersonaFusePolicy.from_base(PersonaConfig(base_model=str(embedded_model_dir())))


def show(message: str, reply: Reply, top: int) -> None:
    experts = " | ".join(f"{name} {weight:.2f}" for name, weight in reply.top_experts(top))
    print(f"\nuser:    {message}\nexperts: {experts}\nreply:   {reply.text}", flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    policy = load_policy(args.policy).eval()

    def answer(messages: list[str]) -> None:
        chats = [[{"role": "user", "content": m}] for m in messages]
        replies = policy.generate(
            chats, persona=args.profile, max_new_tokens=args.max_new_tokens, do_sample=args.sample
        )
        for message, reply in zip(messages, replies, strict=True):
            show(message, reply, args.top)

    if args.demo:
        answer(list(DEMO_SITUATIONS))
    elif args.prompt:
        answer([args.prompt])
    else:
        for line in sys.stdin if not sys.stdin.isatty() else typed_lines():
            if not line.strip():
                break
            answer([line.strip()])


def typed_lines() -> Iterator[str]:
    """Lines typed at the prompt until Ctrl-D."""
    while True:
        try:
            yield input("\n> ")
        except EOFError:
            return


if __name__ == "__main__":
    main()
