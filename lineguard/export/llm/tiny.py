"""Tiny causal LMs with real tokenizers, built in-process: for tests, benchmarks and the demo.

Random weights from a fixed seed in the real ``save_pretrained`` layout, so the exporter reads
them exactly as it reads a downloaded checkpoint. The tokenizer is a byte-level BPE trained
with ``tokenizers`` on a small corpus, wrapped in PreTrainedTokenizerFast with a chat template.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL = ["<|pad|>", "<|bos|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
CORPUS = [
    "A scratch runs across the top-left of the part; it is long and thin.",
    "There is a crack near the center. The defect covers a small area.",
    "No defect was found: the part is normal.",
    "A hole in the bottom-right corner, about two percent of the surface.",
    "A stain in the middle-left cell, mild severity, score 0.71.",
    "The inspection found one region at the top; class unknown.",
    "Defect: blowhole. Position: bottom. Box 0.40 0.70 0.55 0.90.",
]

# Per family: the config class and the extra fields that keep the model tiny but complete.
FAMILIES: dict[str, dict[str, Any]] = {
    "qwen2": {"cls": "Qwen2Config", "extra": {"tie_word_embeddings": True}},
    "llama": {"cls": "LlamaConfig", "extra": {"tie_word_embeddings": False}},
    "mistral": {"cls": "MistralConfig", "extra": {"sliding_window": 4096}},
    "phi3": {"cls": "Phi3Config", "extra": {"pad_token_id": 0}},
    "gemma": {"cls": "GemmaConfig", "extra": {"head_dim": 16}},
}


def train_tokenizer(vocab_size: int = 384, corpus: list[str] | None = None) -> Any:
    """A byte-level BPE tokenizer (``tokenizers.Tokenizer``) with the chat special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator((corpus or CORPUS) * 4, trainer)
    return tok


def wrap_tokenizer(tok: Any) -> Any:
    from transformers import PreTrainedTokenizerFast

    # Without model_input_names the wrapper also returns token_type_ids, which generate() rejects.
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|end|>",
                                   pad_token="<|pad|>", chat_template=CHAT_TEMPLATE,
                                   model_input_names=["input_ids", "attention_mask"])


def tiny_config(tok: Any, family: str = "qwen2", hidden: int = 64, layers: int = 2, heads: int = 4,
                kv_heads: int = 2, intermediate: int = 128, max_positions: int = 512) -> Any:
    """A transformers config of ``family`` sized as asked, with ``tok``'s special token ids."""
    import transformers

    spec = FAMILIES[family]
    cfg = getattr(transformers, spec["cls"])(
        vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv_heads, intermediate_size=intermediate, max_position_embeddings=max_positions,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **spec["extra"])
    if family != "phi3":
        cfg.pad_token_id = tok.pad_token_id
    return cfg


def save_checkpoint(model: Any, tok: Any, out: str | Path, max_new_tokens: int = 48) -> Path:
    """``save_pretrained`` of model, tokenizer and generation config: a checkpoint folder as downloaded."""
    from transformers import GenerationConfig

    out = Path(out)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                     pad_token_id=tok.pad_token_id, max_new_tokens=max_new_tokens).save_pretrained(out)
    return out


def build_tiny(out: str | Path, family: str = "qwen2", hidden: int = 64, layers: int = 2, heads: int = 4,
               kv_heads: int = 2, intermediate: int = 128, vocab: int = 384, seed: int = 0,
               tokenizer: Any = None) -> Path:
    """Write a tiny ``family`` model + tokenizer with ``save_pretrained``; returns the folder."""
    import torch
    from transformers import AutoModelForCausalLM

    tok = wrap_tokenizer(tokenizer or train_tokenizer(vocab))
    cfg = tiny_config(tok, family, hidden, layers, heads, kv_heads, intermediate)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    with torch.no_grad():  # larger weights than the init's 0.02: logits with clear winners, no near-ties
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.08)
    return save_checkpoint(model, tok, out)
