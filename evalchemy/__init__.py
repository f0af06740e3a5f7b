"""evalchemy: config-driven LLM benchmark runner on top of lm-evaluation-harness."""

__version__ = "0.1.0"
