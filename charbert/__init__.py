"""charbert package (filled in as modules land)."""
