"""cdn-prewarm: warm CDN edge caches (POPs) before traffic arrives."""

__version__ = "0.1.0"
