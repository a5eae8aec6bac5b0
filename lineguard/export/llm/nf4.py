"""bitsandbytes NF4: the PyTorch-side 4-bit path for CUDA stations, measured against the same reference.

The runtime stays torch-free and never runs this; ``export llm --nf4`` loads the checkpoint in
NF4 on the GPU, measures its greedy agreement with fp32 transformers and its tokens/s, and
records both in the manifest, so a station can compare it with the ONNX INT4 variant.
On a CPU bitsandbytes NF4 runs but slowly (it saves GPU memory; it is no CPU speed path).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from lineguard.export.llm.checkpoint import Checkpoint
from lineguard.runtime.errors import LineguardError


def nf4_available() -> dict[str, Any]:
    """Raise a one-line reason when NF4 cannot run here; else the versions used."""
    try:
        import bitsandbytes
    except ImportError:
        raise LineguardError("--nf4: bitsandbytes is not installed (pip install bitsandbytes; NF4 is for CUDA "
                             "stations, the runtime's CPU 4-bit path is --precision int4)") from None
    if not torch.cuda.is_available():
        raise LineguardError("--nf4: no CUDA device here; bitsandbytes NF4 saves GPU memory and is no CPU "
                             "speed path (use --precision int4 for ONNX Runtime's 4-bit kernels)")
    return {"bitsandbytes": bitsandbytes.__version__, "device": torch.cuda.get_device_name(0)}


def measure_nf4(ck: Checkpoint, prompts: list[list[int]], refs: list[list[int]], eos: list[int],
                n: int) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    info = nf4_available()
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float16)
    model = AutoModelForCausalLM.from_pretrained(ck.root, quantization_config=q, device_map={"": 0}).eval()
    exact, forced, total, tokens, seconds = 0, 0, 0, 0, 0.0
    with torch.no_grad():
        # a short generate first: CUDA's context, cuBLAS handles and kernel choice are not the model's speed
        w = torch.tensor([prompts[0]], device="cuda")
        model.generate(w, attention_mask=torch.ones_like(w), do_sample=False, max_new_tokens=2,
                       pad_token_id=eos[0] if eos else 0)
        for ids, ref in zip(prompts, refs):
            x = torch.tensor([ids], device="cuda")
            t0 = time.perf_counter()
            got = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=n,
                                 eos_token_id=eos or None, pad_token_id=eos[0] if eos else 0)[0, len(ids):].tolist()
            torch.cuda.synchronize()
            seconds += time.perf_counter() - t0
            got = [t for t in got if t not in eos]
            tokens += len(got)
            exact += got == ref
            full = torch.tensor([ids + ref], device="cuda")
            pred = model(full).logits[0, len(ids) - 1 : -1].argmax(-1).tolist()
            forced += sum(int(p == r) for p, r in zip(pred, ref))
            total += len(ref)
    return info | {"format": "bitsandbytes nf4 (compute fp16)", "identical_sequences": exact, "prompts": len(prompts),
                   "teacher_forced_agreement": round(forced / max(total, 1), 4),
                   "tok_s": round(tokens / seconds, 1) if seconds else None,
                   "gpu_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)}
