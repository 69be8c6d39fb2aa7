"""One gRPC servicer per service of ``pbkv.v1`` (``orchestrator``, ``engines`` for EngineLink,
``operator``), over the CacheManager; their shared wiring is ``wiring``."""
