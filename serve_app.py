"""Entry point for ``serve run serve_app:app``."""

from prewarm.api import build_app

app = build_app()
