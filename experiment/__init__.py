"""experiment package (see DESIGN.md §2)."""
