"""Test infrastructure shipped on purpose: the vLLM stand-in used by tests and benchmarks (not on the runtime path)."""
