"""experiment package (see docs/architecture.md)."""
