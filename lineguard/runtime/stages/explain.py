"""The explanation stage: findings → prompt → the bundle's LLM → text, checked against the findings."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from lineguard.runtime.bundle import Bundle
from lineguard.runtime.bundle.engine import EngineOptions
from lineguard.runtime.errors import BundleError
from lineguard.runtime.stages.constrain import Guard
from lineguard.runtime.stages.grounding import Rules
from lineguard.runtime.stages.llm import CausalLM, Sampling
from lineguard.runtime.stages.prompting import DEFAULT_PROMPT, PromptBuilder, findings_for_prompt
from lineguard.runtime.stages.reference import reference


class Explainer:
    """Loads the ``llm`` stage of a bundle at ``precision`` (default: the smallest it has)."""

    def __init__(self, bundle: Bundle, precision: str | None = None, opts: EngineOptions | None = None,
                 constrain: bool | None = None) -> None:
        """``constrain``: grounded decoding on or off (default: the bundle's ``prompt.constrain``, on)."""
        stage = bundle.stage("llm")
        variants = stage["variants"]
        precision = precision or next(p for p in ("int4", "fp16", "fp32") if p in variants)
        self.precision = precision
        self.lm = CausalLM(bundle.variant_path("llm", precision), stage["options"], opts)
        folder = bundle.root / "llm"
        try:
            from tokenizers import Tokenizer

            self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except (OSError, ValueError) as e:
            raise BundleError(f"{folder}/tokenizer.json: unreadable ({e})") from None
        prompt = {**DEFAULT_PROMPT, **stage.get("prompt", {})}
        try:
            self.prompts = PromptBuilder.from_bundle(folder, prompt)
        except Exception as e:  # jinja2's TemplateSyntaxError and friends: say where to look
            raise BundleError(f"{bundle.root}/manifest.json: stages.llm.prompt or the chat template does not "
                              f"parse ({type(e).__name__}: {e})") from None
        self.product = bundle.product
        self.constrain = bool(prompt.get("constrain", True)) if constrain is None else constrain
        self.classes = list(bundle.manifest.get("classes", {}).get("names", []))
        try:
            self.sampling = Sampling(**prompt.get("sampling", {}),
                                     stop_ids=tuple(stage["options"].get("eos_token_ids", [])))
            self.sampling.validate()
        except (TypeError, ValueError) as e:
            raise BundleError(f"{bundle.root}/manifest.json: stages.llm.prompt.sampling: {e}") from None

    def prompt_ids(self, findings: dict[str, Any]) -> list[int]:
        text = self.prompts.render(self.prompts.messages(findings))
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def explain(self, result: dict[str, Any], on_text: Callable[[str], None] | None = None,
                constrain: bool | None = None, **sampling: Any) -> dict[str, Any]:
        """Explain one inspected frame (an ``inspect`` result); ``sampling`` overrides the bundle's.

        Constrained (the bundle's default, or ``constrain``): the decoder cannot contradict the
        findings, and an explanation that still owes the main finding's position or type when
        its budget runs out is replaced by the rule-written one (``source: "rules"``).
        """
        findings = findings_for_prompt(result, self.product)
        s = dataclasses.replace(self.sampling, **sampling)
        ids = self.prompt_ids(findings)
        made: list[int] = []
        shown = ""

        def stream(tok: int) -> None:
            nonlocal shown
            made.append(tok)
            text = self.tokenizer.decode(made)
            if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                on_text(text[len(shown):])
                shown = text

        guard = Guard(findings, self.classes, self.tokenizer.decode) if (
            self.constrain if constrain is None else constrain) else None
        t0 = time.perf_counter()
        gen = self.lm.generate(ids, s, stream if on_text else None, guard)
        text, source = self.tokenizer.decode(gen.ids).strip(), "model"
        rules = guard.rules if guard is not None else Rules(findings, self.classes)
        grounded, done = rules.check(text), rules.complete(text)
        if guard is not None and not (grounded["consistent"] and done):
            text, source = reference(findings, np.random.default_rng(0)), "rules"
            grounded, done = rules.check(text), rules.complete(text)
        return {"text": text, **grounded, "complete": done, "source": source, "constrained": guard is not None,
                "refused_tokens": guard.refused if guard else 0, "precision": self.precision,
                "prompt_tokens": gen.prompt_tokens, "new_tokens": len(gen.ids), "stop": gen.stop,
                "prefill_ms": round(1e3 * gen.prefill_s, 1), "decode_tok_s": round(gen.decode_tok_s, 1),
                "seconds": round(time.perf_counter() - t0, 3)}
