"""tokenizer side of sglserve (see docs/architecture.md)."""
