"""Entry point for ``serve run serve_app:app``."""

from prewarm.api.app import build_app

app = build_app()
