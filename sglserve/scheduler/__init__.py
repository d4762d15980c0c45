"""scheduler side of sglserve (see docs/architecture.md)."""
