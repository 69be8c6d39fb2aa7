"""`pbkv bench dashboard`: scrape cost of /metrics and /api/stats (see pbkv.dashboard.bench)."""

from pbkv.dashboard.bench import add_arguments, run

__all__ = ["add_arguments", "run"]
