"""PersonaFusePolicy: a frozen HF causal LM, the fused persona mixture on its linear layers, and the router.

Adapters are switched with context managers (``mixture(weights)``, ``adapters_disabled()``) that restore the
previous state, never with flags threaded through ``forward``. The reference policy is the same model with
the adapters off, so no second copy of the base is kept.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedModel

from policies.config import PersonaConfig
from policies.mixture import LoRAMixtureLinear, Routing, RoutingSlot, make_routing
from policies.router import PersonaRouter, RouterOutput, pool_prompt
from policies.traits import parse_profile

Persona = str | Tensor  # "auto" (router), a trait profile such as "agreeableness=+1", or weights (E,) / (B, E)


@dataclass(frozen=True)
class Reply:
    text: str
    weights: Tensor  # (E,) the expert weights the reply was generated with
    experts: tuple[str, ...]

    def top_experts(self, n: int = 3) -> list[tuple[str, float]]:
        order = self.weights.argsort(descending=True)[:n]
        return [(self.experts[i], float(self.weights[i])) for i in order if self.weights[i] > 0]


def load_base_model(path: str, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """Loads a causal LM from a local folder: safetensors only, no remote code."""
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True, trust_remote_code=False)


def eos_token_ids(model: PreTrainedModel, tokenizer) -> list[int]:
    """Every id that ends a reply: the tokenizer's EOS and the model's ``generation_config.eos_token_id`` (an int or
    a list: Qwen2.5-Instruct lists both <|im_end|> and <|endoftext|>), as vLLM stops on all of them."""
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids = [tokenizer.eos_token_id, *([configured] if isinstance(configured, int) else configured or [])]
    return sorted({i for i in ids if i is not None})


def position_ids_for(attention_mask: Tensor) -> Tensor:
    """Positions that skip left padding, as HF generate computes them. (B, L) -> (B, L)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def first_rows(groups: Tensor) -> tuple[Tensor, Tensor]:
    """For group ids (B,): the first row of each distinct group (U,), ordered by group id, and each row's
    position in that list (B,), so ``x[first][row_group]`` rebuilds per-row ``x`` from per-group values."""
    distinct, row_group = torch.unique(groups, return_inverse=True)  # distinct ids sorted; row_group indexes them
    first = torch.full((len(distinct),), len(groups), dtype=torch.long, device=groups.device)
    first = first.scatter_reduce(0, row_group, torch.arange(len(groups), device=groups.device), reduce="amin")
    return first, row_group


def token_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    """log_softmax(logits)[token] without materialising a second (B, T, V) tensor. (B, T, V), (B, T) -> (B, T)."""
    return logits.gather(-1, tokens[..., None]).squeeze(-1) - logits.logsumexp(-1)


def bf16_autocast(enabled: bool = True) -> contextlib.AbstractContextManager:
    """Mixed precision: matmuls in bf16 under torch.autocast, weights, gradients and optimizer state as they are.
    Measured on a 2-core avx512_bf16 CPU (SmolLM2 + 10-expert mixture, 8 x 118 tokens): forward + backward 1.7x
    and forward 2x faster than fp32. ``response_outputs`` keeps the LM head in fp32 either way."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast("cuda" if torch.cuda.is_available() else "cpu", dtype=torch.bfloat16)


class PersonaFusePolicy(nn.Module):
    def __init__(self, model: PreTrainedModel, tokenizer, config: PersonaConfig):
        super().__init__()
        self.config = config
        self.experts = config.experts
        self.model = model
        self.model.requires_grad_(False)
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        self.slot = RoutingSlot()
        self.mixture_layers = self._attach_mixture(config)
        self.router = PersonaRouter(model.config.hidden_size, len(self.experts), config.router).to(model.dtype)

    @classmethod
    def from_base(cls, config: PersonaConfig, dtype: torch.dtype = torch.float32) -> PersonaFusePolicy:
        """A fresh policy on ``config.base_model``: router at init, experts with B = 0 (equal to the base)."""
        model = load_base_model(config.base_model, dtype)
        tokenizer = AutoTokenizer.from_pretrained(config.base_model, trust_remote_code=False)
        return cls(model, tokenizer, config)

    @classmethod
    def without_base(cls, config: PersonaConfig) -> PersonaFusePolicy:
        """The experts and router alone, with the base's modules on the meta device (no weights, no memory): what a
        vLLM rollout needs to fold personas, since vLLM holds the base itself. Adapters are zeros until a snapshot
        is loaded; anything that runs the base (``route``, ``logprobs``, ``generate``) raises."""
        model_config = AutoConfig.from_pretrained(config.base_model, trust_remote_code=False)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(model_config, dtype=torch.float32, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(config.base_model, trust_remote_code=False)
        policy = cls(model, tokenizer, config)  # the router is built on the CPU; the mixture follows the base: meta
        for layer in policy.mixture_layers.values():
            layer.lora_A = nn.Parameter(torch.zeros(layer.lora_A.shape), requires_grad=False)
            layer.lora_B = nn.Parameter(torch.zeros(layer.lora_B.shape), requires_grad=False)
        return policy

    @property
    def has_base_weights(self) -> bool:
        return not self.model.get_input_embeddings().weight.is_meta

    def _require_base(self) -> None:
        if not self.has_base_weights:
            raise RuntimeError(
                "this policy holds the adapters only (PersonaFusePolicy.without_base): running the base needs "
                "PersonaFusePolicy.from_base or from_pretrained"
            )

    def _attach_mixture(self, config: PersonaConfig) -> dict[str, LoRAMixtureLinear]:
        layers: dict[str, LoRAMixtureLinear] = {}
        for name, module in list(self.model.named_modules()):
            if name.rsplit(".", 1)[-1] not in config.target_modules:
                continue
            if not isinstance(module, nn.Linear):
                raise ValueError(f"target_modules: {name} is a {type(module).__name__}, not an nn.Linear")
            parent_name, _, child = name.rpartition(".")
            layer = LoRAMixtureLinear(module, len(config.experts), config.rank, config.scaling, self.slot)
            setattr(self.model.get_submodule(parent_name), child, layer)
            layers[name] = layer
        found = {n.rsplit(".", 1)[-1] for n in layers}
        missing = [m for m in config.target_modules if m not in found]
        if missing:
            raise ValueError(f"target_modules: no nn.Linear named {missing} in {type(self.model).__name__}")
        return layers

    # ---- adapter switching -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _installed(self, routing: Routing | None) -> Iterator[None]:
        previous, self.slot.routing = self.slot.routing, routing
        try:
            yield
        finally:
            self.slot.routing = previous

    def mixture(self, weights: Tensor) -> contextlib.AbstractContextManager[None]:
        """Inside, every mixture layer applies ``weights`` (B, E) per sequence or (B, T, E) per token."""
        return self._installed(make_routing(weights, len(self.experts)))

    def adapters_disabled(self) -> contextlib.AbstractContextManager[None]:
        """Inside, the model is exactly the frozen base (the reference policy)."""
        return self._installed(None)

    # ---- routing ----------------------------------------------------------------------------------------
    def route(self, prompt_ids: Tensor, prompt_mask: Tensor) -> RouterOutput:
        """Weights for each prompt (B, P): the router reads the base's hidden states with adapters off."""
        return self.router(self.situation_features(prompt_ids, prompt_mask))

    @torch.no_grad()
    def situation_features(self, prompt_ids: Tensor, prompt_mask: Tensor) -> Tensor:
        """The router's input (B, d): the frozen base's hidden states (configured layer), adapters off, pooled
        over the prompt tokens. Constant while experts train, so stage 2 can cache it."""
        self._require_base()
        with self.adapters_disabled():
            out = self.model.base_model(
                input_ids=prompt_ids,
                attention_mask=prompt_mask,
                position_ids=position_ids_for(prompt_mask),
                output_hidden_states=True,
                use_cache=False,
            )
        return pool_prompt(out.hidden_states[self.config.router.layer], prompt_mask, self.config.router.pooling)

    def weights_for(self, persona: Persona, prompt_ids: Tensor, prompt_mask: Tensor) -> Tensor:
        """Resolves a persona request into weights (B, E) for this batch of prompts."""
        batch, num_experts = prompt_ids.shape[0], len(self.experts)
        if isinstance(persona, str):
            if persona == "auto":
                return self.route(prompt_ids, prompt_mask).weights.detach()
            return parse_profile(persona, self.experts).expand(batch, num_experts).to(prompt_ids.device)
        weights = (persona if persona.dim() == 2 else persona.expand(batch, -1)).to(prompt_ids.device)
        make_routing(weights, num_experts)  # validates shape, finiteness and sign
        if weights.shape[0] != batch:
            raise ValueError(f"persona weights are for {weights.shape[0]} prompts, the batch has {batch}")
        return weights

    # ---- scoring ----------------------------------------------------------------------------------------
    def logprobs(
        self, input_ids: Tensor, attention_mask: Tensor, response_len: int, weights: Tensor, temperature: float = 1.0
    ) -> Tensor:
        """log pi(y_t | x, y_<t) of the last ``response_len`` tokens under the mixture ``weights``.

        input_ids, attention_mask (B, P+T): left-padded prompts then right-padded responses; T = response_len.
        pi = softmax(logits / temperature), the distribution the sampler drew from (before top-p).
        Returns (B, T); differentiable w.r.t. experts and (through ``weights``) the router.
        """
        with self.mixture(weights):
            return self._response_logprobs(input_ids, attention_mask, response_len, temperature)

    @torch.no_grad()
    def ref_logprobs(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        response_len: int,
        temperature: float = 1.0,
        groups: Tensor | None = None,
    ) -> Tensor:
        """log pi_ref of the last ``response_len`` tokens, pi_ref = the base with every adapter off. (B, T).
        ``groups``: see ``response_outputs``."""
        with self.adapters_disabled():
            logits, _ = self.response_outputs(input_ids, attention_mask, response_len, temperature, groups=groups)
        return token_logprobs(logits, input_ids[:, -response_len:])

    def _response_logprobs(
        self, input_ids: Tensor, attention_mask: Tensor, response_len: int, temperature: float
    ) -> Tensor:
        logits = self.response_logits(input_ids, attention_mask, response_len, temperature)  # (B, T, V)
        return token_logprobs(logits, input_ids[:, -response_len:])

    def response_logits(
        self, input_ids: Tensor, attention_mask: Tensor, response_len: int, temperature: float = 1.0
    ) -> Tensor:
        """Logits / temperature (B, T, V) that predict the last ``response_len`` tokens, under the installed
        routing (call it inside ``mixture`` or ``adapters_disabled``)."""
        return self.response_outputs(input_ids, attention_mask, response_len, temperature)[0]

    def response_outputs(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        response_len: int,
        temperature: float = 1.0,
        with_hidden: bool = False,
        groups: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """(logits / temperature (B, T, V), final hidden states (B, T, H) or None) at the positions that predict
        the last ``response_len`` tokens: position t is the state before response token t (the critic's s_t).

        ``groups`` (B,): rows with the same id share their prompt (GRPO's G samples of one prompt). Each group's
        prompt then runs once and its keys/values serve every row of the group: the same outputs and gradients,
        with the prompt's share of the work divided by G. Needs per-sequence routing, equal within a group."""
        self._require_base()
        routing = self.slot.routing
        if groups is not None and (routing is None or routing.weights.dim() == 2):
            hidden = self._shared_prompt_states(input_ids, attention_mask, response_len, groups)
        else:
            out = self.model.get_decoder()(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids_for(attention_mask),
                use_cache=False,
            )
            hidden = out.last_hidden_state[:, -(response_len + 1) : -1]  # position t predicts response token t
        head = self.model.get_output_embeddings()
        # The head runs outside any bf16 autocast: bf16 logits (~3 digits) would put ~0.05 of noise on every
        # log-prob, hence on the ratios and the KL; it is one matmul on the response positions only.
        with torch.autocast(hidden.device.type, enabled=False):
            logits = head(hidden.to(head.weight.dtype)).float()
        if temperature != 1.0:  # a (B, T, V) copy otherwise spent on dividing by 1
            logits = logits / temperature
        return logits, (hidden if with_hidden else None)

    def _shared_prompt_states(
        self, input_ids: Tensor, attention_mask: Tensor, response_len: int, groups: Tensor
    ) -> Tensor:
        """The final hidden states (B, T, H) that predict the last T = ``response_len`` tokens, each group's prompt
        run once: the prompt forward (one row per group) fills a KV cache that is gathered out to every row, then
        the response tokens but the last (it predicts nothing) attend to it. Gradients reach the prompt positions'
        adapter activations through the gathered keys and values."""
        prompt_len = input_ids.shape[1] - response_len
        first, row_group = first_rows(groups)  # (U,) each group's first row; (B,) each row's group
        prompt_ids, prompt_mask = input_ids[first, :prompt_len], attention_mask[first, :prompt_len]
        if not (
            torch.equal(prompt_ids[row_group], input_ids[:, :prompt_len])
            and torch.equal(prompt_mask[row_group], attention_mask[:, :prompt_len])
        ):
            raise ValueError("rows with the same group id must have the same prompt tokens")
        routing = self.slot.routing
        if routing is not None and not torch.allclose(routing.weights[first][row_group], routing.weights, atol=1e-6):
            raise ValueError("rows with the same group id must have the same routing weights")
        decoder = self.model.get_decoder()
        with self._installed(None if routing is None else routing.rows(first)):
            prompt = decoder(
                input_ids=prompt_ids,
                attention_mask=prompt_mask,
                position_ids=position_ids_for(prompt_mask),
                use_cache=True,
            )
        last_prompt = prompt.last_hidden_state[row_group, -1:]  # predicts response token 0
        if response_len == 1:
            return last_prompt
        cache = prompt.past_key_values
        if cache is None or cache.get_seq_length() != prompt_len:  # gradient checkpointing drops the cache
            raise RuntimeError("the shared prompt forward kept no KV cache; turn gradient checkpointing off")
        cache.batch_select_indices(row_group)
        mask = attention_mask[:, :-1]
        out = decoder(
            input_ids=input_ids[:, prompt_len:-1],
            attention_mask=mask,
            position_ids=position_ids_for(mask)[:, prompt_len:],
            past_key_values=cache,
            use_cache=True,
        )
        return torch.cat([last_prompt, out.last_hidden_state], dim=1)

    # ---- generation -------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        conversations: list[list[dict[str, str]]],
        persona: Persona = "auto",
        max_new_tokens: int = 128,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
    ) -> list[Reply]:
        """Replies to chat conversations with the persona chosen by the router, a profile or explicit weights."""
        self._require_base()
        prompts = [
            self.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations
        ]
        batch = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        weights = self.weights_for(persona, batch.input_ids, batch.attention_mask)
        sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if do_sample else {"do_sample": False}
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=eos_token_ids(self.model, self.tokenizer),
            **sampling,
        )
        with self.mixture(weights):
            out = self.model.generate(**batch, generation_config=config)
        texts = self.tokenizer.batch_decode(out[:, batch.input_ids.shape[1] :], skip_special_tokens=True)
        return [Reply(t.strip(), w.float().cpu(), self.experts) for t, w in zip(texts, weights, strict=True)]

    # ---- training controls ------------------------------------------------------------------------------
    def set_trainable(self, router: bool = True, experts: bool = True, lora_a: bool = True) -> None:
        """Chooses what trains; the base never does. ``lora_a=False`` trains the experts' B only (LoRA-FA)."""
        self.router.requires_grad_(router)
        for layer in self.mixture_layers.values():
            layer.lora_A.requires_grad_(experts and lora_a)
            layer.lora_B.requires_grad_(experts)

    def gradient_checkpointing_enable(self) -> None:
        """Recomputes decoder layers in backward, under the routing that was installed in forward."""

        def contexts() -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
            # Called at forward time: the recompute (possibly after the mixture context closed) reuses it.
            return contextlib.nullcontext(), self._installed(self.slot.routing)

        self.model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False, "context_fn": contexts}
        )

    @property
    def device(self) -> torch.device:
        return self.router.norm.weight.device

    # ---- persistence ------------------------------------------------------------------------------------
    def save_pretrained(self, path: str | Path) -> None:
        """persona_config.json, router.safetensors and one standard PEFT LoRA folder per expert, atomically."""
        from policies.export import save_policy

        save_policy(self, Path(path))

    @classmethod
    def from_pretrained(
        cls, path: str | Path, base_model: str | None = None, dtype: torch.dtype = torch.float32
    ) -> PersonaFusePolicy:
        """Restores a saved policy exactly; ``base_model`` overrides the base folder recorded at save time."""
        from policies.export import load_policy_weights

        policy = cls.from_base(cls.saved_config(path, base_model), dtype)
        load_policy_weights(policy, Path(path))
        return policy

    @staticmethod
    def saved_config(path: str | Path, base_model: str | None = None) -> PersonaConfig:
        """A saved policy's PersonaConfig; ``base_model`` overrides the base folder recorded at save time."""
        config_file = Path(path) / "persona_config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"{config_file} not found: not a PersonaFuse policy folder")
        raw = json.loads(config_file.read_text())
        if base_model is not None:
            raw["base_model"] = base_model
        return PersonaConfig.model_validate(raw)
