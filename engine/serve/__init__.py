"""Serving: the embedded OpenAI-compatible server that speaks vLLM's LoRA admin protocol (`tuneloop serve`),
and promotion of adapters to vLLM servers through that protocol."""
