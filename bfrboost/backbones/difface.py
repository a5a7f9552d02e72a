"""difface base restorer (being written)."""

SPECS: list = []
