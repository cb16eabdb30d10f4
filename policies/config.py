"""Typed, frozen configuration of the persona policy (experts + router). Each field is documented once here."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from policies.traits import DEFAULT_EXPERTS, validate_expert_names

DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class FrozenConfig(BaseModel):
    """Base of every config: unknown keys are errors and values cannot change after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class RouterConfig(FrozenConfig):
    layer: int = Field(-1, description="Hidden-state layer of the frozen base the router pools (-1 = last).")
    pooling: Literal["mean", "last"] = Field(
        "mean", description="How prompt tokens are pooled: mean over the prompt, or its last token."
    )
    hidden_size: int = Field(256, ge=1, description="Width of the router MLP's hidden layer.")
    temperature: float = Field(1.0, gt=0, description="Softmax temperature of the routing weights.")
    top_k: int | None = Field(
        2, description="Keep the k largest weights per prompt and renormalise them; null keeps all experts."
    )
    aux_loss: Literal["none", "load_balance", "entropy"] = Field(
        "none",
        description="Router regulariser: load_balance (Switch-style usage balance over the batch) "
        "or entropy (penalises confident routing), scaled by aux_coef.",
    )
    aux_coef: float = Field(0.0, ge=0, description="Weight of the router regulariser in the loss.")

    @field_validator("top_k")
    @classmethod
    def _top_k_positive(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"router.top_k must be >= 1 or null (all experts), got {v}")
        return v


class PersonaConfig(FrozenConfig):
    base_model: str = Field(description="Folder of the base Hugging Face causal LM (safetensors).")
    experts: tuple[str, ...] = Field(DEFAULT_EXPERTS, description="Persona experts, one per Big-Five trait pole.")
    rank: int = Field(8, ge=1, description="LoRA rank r of each expert.")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha of each expert; the update is scaled by alpha / r.")
    target_modules: tuple[str, ...] = Field(
        DEFAULT_TARGET_MODULES,
        description="Names of the base's nn.Linear modules that get the expert mixture.",
    )
    router: RouterConfig = Field(default_factory=RouterConfig, description="The situation router.")

    @field_validator("experts")
    @classmethod
    def _known_experts(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return validate_expert_names(v)

    @model_validator(mode="after")
    def _top_k_fits(self) -> PersonaConfig:
        if self.router.top_k is not None and self.router.top_k > len(self.experts):
            raise ValueError(
                f"router.top_k={self.router.top_k} exceeds the {len(self.experts)} experts; "
                "set router.top_k <= len(experts) or null"
            )
        if not self.target_modules:
            raise ValueError("target_modules is empty; name at least one nn.Linear, e.g. q_proj")
        return self

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank
