"""The LLM stage's export side: checkpoint checks, the fused and traced decoder graphs, INT4, NF4."""
