"""lineguard benchmarks, generated data and the demo."""
