"""The vLLM engine adapter: a scheduler-side KV connector that reports block and request events
to pbkv and applies its cache plans to vLLM's prefix cache, plus a host-memory KV tier.

Pinned to vLLM 0.32 (it reorders the block pool's free queue, an internal); ``selftest``
checks every internal it touches at start-up. Nothing here imports vLLM at package import.
"""

SUPPORTED_VLLM = "0.32"
