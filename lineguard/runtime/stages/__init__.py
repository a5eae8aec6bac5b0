"""The model stages a frame passes through: expert, SAM, findings, classes, prompting, LLM, grounding."""
