"""Config validation: clear errors before any compute, and every field documented."""

from __future__ import annotations

import pytest

from policies import PersonaConfig, PersonaFusePolicy, RouterConfig


def test_config_rejects_bad_values(tiny_model_dir) -> None:
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        RouterConfig(top_k=-1)
    with pytest.raises(ValueError, match="exceeds the 1 experts"):
        PersonaConfig(base_model="x", experts=("openness_high",))
    with pytest.raises(ValueError, match="unknown expert"):
        PersonaConfig(base_model="x", experts=("charm_high",))
    with pytest.raises(ValueError, match="Extra inputs"):
        PersonaConfig(base_model="x", rnak=4)
    with pytest.raises(ValueError, match=r"no nn\.Linear named"):
        PersonaFusePolicy.from_base(PersonaConfig(base_model=str(tiny_model_dir), target_modules=("qkv_proj",)))


def test_every_config_field_is_documented() -> None:
    for model in (PersonaConfig, RouterConfig):
        undocumented = [name for name, field in model.model_fields.items() if not field.description]
        assert not undocumented, f"{model.__name__} fields without description: {undocumented}"
