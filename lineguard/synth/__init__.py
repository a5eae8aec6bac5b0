"""A generated product line: parts with natural variation, defects with pixel masks and types,
written in the MVTec AD layout and as a video of parts passing a camera. Seeded, deterministic."""
