"""Ways of reaching a model: the OpenAI-compatible completions server (vLLM) and the embedded llama.cpp model."""
