"""pbkv: prediction-driven KV-cache management for LLM multi-agent workflows."""

__version__ = "0.1.0"
