"""vqfr base restorer (being written)."""

SPECS: list = []
