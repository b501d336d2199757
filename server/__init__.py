"""server package (see DESIGN.md §2)."""
