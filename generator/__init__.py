"""generator package (see docs/architecture.md)."""
