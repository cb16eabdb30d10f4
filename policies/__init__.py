"""The persona model: Big-Five LoRA experts, the situation router, the fused mixture and its export."""

from policies.config import PersonaConfig, RouterConfig
from policies.policy import PersonaFusePolicy, Reply
from policies.traits import BIG_FIVE, DEFAULT_EXPERTS, parse_profile

__all__ = [
    "BIG_FIVE",
    "DEFAULT_EXPERTS",
    "PersonaConfig",
    "PersonaFusePolicy",
    "Reply",
    "RouterConfig",
    "parse_profile",
]
