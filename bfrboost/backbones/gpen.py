"""gpen base restorer (being written)."""

SPECS: list = []
