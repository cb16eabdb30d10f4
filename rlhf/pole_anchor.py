"""Stage 1b's pole contrast kept alive during RL (``algorithm.pole_anchor``).

The policy loss moves every routed expert towards what the reward favours; nothing in it keeps a trait's two poles
apart (measured on the CPU pipeline: experts moving their trait the right way fell from 8 to 6 of 10 over 8 GRPO
steps). As InstructGPT mixes pretraining batches into PPO, every optimizer step here adds

    coef * L_pole,    L_pole = mean_pairs softplus(-beta * m)    (``policies.adapter_sft.pole_contrast_loss``)

over ``pairs_per_step`` pairs of stage 1a's persona data: a situation, the expert's own pole's reply and the opposite
pole's reply, each scored with that expert alone against the base (adapters off, also RL's reference).

The driver reads the persona files (malformed rows fail before Ray starts) and hands their text to the learners, so
learners on other nodes need no shared path.
"""

from __future__ import annotations

import random
from pathlib import Path

from torch import Tensor

from policies.adapter_sft import PoleContrast, encode, read_persona_file, reply_logprobs, tokenize_row
from policies.policy import PersonaFusePolicy
from rlhf.config import PoleAnchorConfig

PersonaData = dict[str, list[tuple[str, str]]]  # expert name -> (situation, reply) rows


def load_persona_data(folder: str | Path) -> PersonaData:
    """Every ``<expert>.jsonl`` of a stage 1a folder; a missing or empty folder and a malformed row are errors."""
    folder = Path(folder)
    files = sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
    if not files:
        raise FileNotFoundError(
            f"algorithm.pole_anchor.data_dir={folder}: no <expert>.jsonl files (run jobs/synthesize_persona_data.py)"
        )
    return {path.stem: read_persona_file(path) for path in files}


class PoleAnchor:
    """The pole-contrast term of one learner rank: a fixed shuffled list of paired rows, visited in blocks of
    ``pairs_per_step`` indexed by the optimizer step, so a resumed run sees the same pairs."""

    def __init__(self, policy: PersonaFusePolicy, data: PersonaData, cfg: PoleAnchorConfig, seed: int):
        unknown = sorted(set(data) - set(policy.experts))
        missing = [name for name in policy.experts if name not in data]
        if unknown or missing:
            raise ValueError(
                f"algorithm.pole_anchor.data_dir={cfg.data_dir}: the files must match the policy's experts "
                f"{list(policy.experts)}; missing {missing}, unexpected {unknown}"
            )
        for name in policy.experts:  # every row is someone's own or opposite reply: check all before training
            for line, (situation, reply) in enumerate(data[name], start=1):
                prompt, answer = tokenize_row(policy, situation, reply)
                if len(prompt) + len(answer) > cfg.max_tokens:
                    raise ValueError(
                        f"{cfg.data_dir}/{name}.jsonl: line {line}: {len(prompt) + len(answer)} tokens, more than "
                        f"algorithm.pole_anchor.max_tokens={cfg.max_tokens}"
                    )
        rows = [(e, s, r) for e, name in enumerate(policy.experts) for s, r in data[name]]
        self.policy, self.pairs_per_step = policy, cfg.pairs_per_step
        self.contrast = PoleContrast(policy, rows, cfg.beta, cfg.max_tokens)
        self.rows = [row for row in rows if (row[0], row[1]) in self.contrast.opposite]
        if not self.rows:
            raise ValueError(
                f"algorithm.pole_anchor.data_dir={cfg.data_dir}: no situation is answered by both poles of a trait"
            )
        random.Random(seed).shuffle(self.rows)

    def rows_at(self, index: int) -> list[tuple[int, str, str]]:
        """Block ``index`` of the shuffled pairs, wrapping around the end."""
        n, k = len(self.rows), self.pairs_per_step
        return [self.rows[(index * k + i) % n] for i in range(k)]

    def loss(self, index: int) -> Tensor:
        """L_pole over block ``index``; the own replies are scored with gradient, the base's scores are cached."""
        rows = self.rows_at(index)
        batch = encode(self.policy, rows, self.contrast.max_tokens)
        loss = self.contrast(rows, reply_logprobs(self.policy, batch), batch["response_mask"])
        assert loss is not None  # every kept row has a pair
        return loss
