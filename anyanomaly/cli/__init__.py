"""The `anyanomaly` command: detect, serve, eval, plan, token, and the live API (monitors,
events, jobs)."""

from anyanomaly.cli.main import main

__all__ = ["main"]
