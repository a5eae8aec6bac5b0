"""Reading a local Hugging Face causal-LM folder (``save_pretrained`` layout) and refusing bad ones early.

Every refusal is one line naming the folder and what is wrong, before anything is written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lineguard.runtime.errors import LineguardError

# model_type → family name; each was exported and checked against generate() in tests.
SUPPORTED = {"llama": "Llama", "qwen2": "Qwen2", "phi3": "Phi-3", "gemma": "Gemma", "mistral": "Mistral"}
TOKENIZER_FILES = ("tokenizer.json",)


@dataclass
class Checkpoint:
    root: Path
    config: dict[str, Any]
    weights: list[Path]

    @property
    def model_type(self) -> str:
        return self.config["model_type"]

    @property
    def n_layers(self) -> int:
        return int(self.config["num_hidden_layers"])

    @property
    def kv_heads(self) -> int:
        return int(self.config.get("num_key_value_heads") or self.config["num_attention_heads"])

    @property
    def head_dim(self) -> int:
        return int(self.config.get("head_dim") or self.config["hidden_size"] // self.config["num_attention_heads"])

    def chat_template(self) -> str | None:
        """The chat template: ``chat_template.jinja`` (newer transformers) or tokenizer_config.json's."""
        jinja = self.root / "chat_template.jinja"
        if jinja.is_file():
            return jinja.read_text(encoding="utf-8")
        tc = self.root / "tokenizer_config.json"
        if tc.is_file():
            t = json.loads(tc.read_text(encoding="utf-8")).get("chat_template")
            if isinstance(t, list):  # named templates: take the default
                t = next((x["template"] for x in t if x.get("name") == "default"), None)
            return t
        return None


def _weights(root: Path) -> list[Path]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = root / index_name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            except (json.JSONDecodeError, KeyError) as e:
                raise LineguardError(f"{index}: not a valid shard index ({e})") from None
            missing = [s for s in shards if not (root / s).is_file()]
            if missing:
                raise LineguardError(f"{root}: checkpoint is missing {len(missing)} of {len(shards)} shards "
                                     f"listed in {index_name} ({', '.join(missing[:3])}{'…' if len(missing) > 3 else ''})")
            return [root / s for s in shards]
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (root / single).is_file():
            return [root / single]
    raise LineguardError(f"{root}: no weights (expected model.safetensors, pytorch_model.bin or a sharded index)")


def open_checkpoint(path: str | Path) -> Checkpoint:
    root = Path(path)
    if not root.is_dir():
        raise LineguardError(f"--model {root}: not a folder (give a save_pretrained checkpoint folder)")
    cfg_path = root / "config.json"
    if not cfg_path.is_file():
        raise LineguardError(f"{root}: no config.json (not a save_pretrained checkpoint folder)")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise LineguardError(f"{cfg_path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    mt = config.get("model_type")
    if mt not in SUPPORTED:
        raise LineguardError(f"{cfg_path}: model_type {mt!r} is not supported "
                             f"(supported: {', '.join(f'{v} ({k})' for k, v in SUPPORTED.items())})")
    missing = [f for f in TOKENIZER_FILES if not (root / f).is_file()]
    if missing:
        raise LineguardError(f"{root}: no tokenizer files ({', '.join(missing)} missing; save the tokenizer "
                             "with save_pretrained next to the model)")
    return Checkpoint(root, config, _weights(root))
