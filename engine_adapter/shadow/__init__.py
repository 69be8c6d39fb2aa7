"""Shadow mode: what pbkv would save on a stock engine that only publishes its KV events."""
