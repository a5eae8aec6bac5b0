"""Findings → the language model's prompt, through the bundle's chat template.

The system prompt and the findings template live in the manifest (``stages.llm.prompt``), so a
station can reword them by hand, as it edits thresholds, without re-exporting. The chat template is the checkpoint's own
Jinja template, rendered the way transformers renders it (sandboxed, trim/lstrip blocks).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

DEFAULT_PROMPT: dict[str, Any] = {
    "system": ("You are the inspection assistant of a production line. In one or two short sentences, "
               "explain the defect the vision system found: what it is, where it is and how large. "
               "Use only the positions and defect types given in the findings."),
    "user": (
        "Product: {{ product }}\n"
        "Verdict: {{ verdict }} (score {{ '%.2f'|format(score) }}; 0.50 is the threshold)\n"
        "{% for r in regions %}"
        "Region {{ loop.index }}: {{ r.cell }} cell, box {{ r.box_norm|join(' ') }}, "
        "{{ '%.1f'|format(100 * r.area_frac) }}% of the image, peak {{ '%.2f'|format(r.peak) }}"
        "{{ ', type ' ~ r['class'] if r.get('class') else '' }}\n"  # no block tag here: trim_blocks would eat the \n
        "{% endfor %}"
        "Explain the defect."
    ),
    "sampling": {"max_new_tokens": 64, "temperature": 0.0, "top_p": 1.0, "time_budget_s": 10.0},
    # grounded decoding (stages/constrain.py): no position, type or "normal" the findings contradict,
    # and no end before the main finding's position and type are said
    "constrain": True,
}


def _env() -> Any:
    from jinja2.exceptions import TemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, indent=indent, ensure_ascii=False)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def findings_for_prompt(result: dict[str, Any], product: str) -> dict[str, Any]:
    """The prompt's view of one inspected frame: verdict, score and its regions, boxes as fractions."""
    w, h = result.get("size", (1, 1))
    regions = result.get("defects") or ([result["hottest"]] if result.get("hottest") else [])
    out = []
    for r in regions:
        x0, y0, x1, y1 = r["box"]
        out.append({"cell": r["cell"], "box_norm": [f"{x0 / w:.2f}", f"{y0 / h:.2f}", f"{x1 / w:.2f}", f"{y1 / h:.2f}"],
                    "box": list(r["box"]), "area_frac": float(r["area_frac"]), "peak": float(r["peak"]),
                    "class": r.get("class")})
    score = result.get("score_norm")
    return {"product": product, "verdict": result.get("verdict", "unknown"),
            "score": float(score if score is not None else result.get("score", 0.0)), "size": [w, h],
            "regions": out}


class PromptBuilder:
    """Renders findings into token ids with the bundle's prompt and chat template."""

    def __init__(self, prompt: dict[str, Any], chat_template: str | None, special: dict[str, str]) -> None:
        env = _env()
        self.prompt = prompt
        self.user = env.from_string(prompt["user"])
        self.chat = env.from_string(chat_template) if chat_template else None
        self.special = special

    @classmethod
    def from_bundle(cls, folder: Path, prompt: dict[str, Any]) -> PromptBuilder:
        """``folder``: the bundle's ``llm/`` (chat template, special tokens); ``prompt``: the manifest's."""
        jinja = folder / "chat_template.jinja"
        special: dict[str, str] = {}
        tc = folder / "tokenizer_config.json"
        if tc.is_file():
            for k, v in json.loads(tc.read_text(encoding="utf-8")).items():
                if k.endswith("_token") and isinstance(v, (str, dict)):
                    special[k] = v if isinstance(v, str) else v.get("content", "")
        return cls(prompt, jinja.read_text(encoding="utf-8") if jinja.is_file() else None, special)

    def messages(self, findings: dict[str, Any]) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.prompt["system"]},
                {"role": "user", "content": self.user.render(**findings)}]

    def render(self, messages: list[dict[str, str]]) -> str:
        """The prompt text the model sees (the chat template with the generation prompt)."""
        from jinja2.exceptions import TemplateError

        if self.chat is None:
            return "\n\n".join(m["content"] for m in messages) + "\n\n"
        try:
            return self.chat.render(messages=messages, add_generation_prompt=True, **self.special)
        except TemplateError:
            # Some templates (Gemma's) refuse a system role: fold it into the first user turn.
            sys_msg = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
            rest = [dict(m) for m in messages if m["role"] != "system"]
            rest[0]["content"] = f"{sys_msg}\n\n{rest[0]['content']}"
            return self.chat.render(messages=rest, add_generation_prompt=True, **self.special)
