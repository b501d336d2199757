"""generator package (see DESIGN.md §2)."""
