"""Orchestrator-framework integrations: report workflows to pbkv and tag the LLM calls
(``reporter.py`` is framework-agnostic; ``langgraph.py`` needs the ``langgraph`` extra)."""
