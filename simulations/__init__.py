"""Load, scale and micro benchmarks (python -m simulations.<name>)."""
