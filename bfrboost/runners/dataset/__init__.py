"""``restore-dataset``: per-file stages (``stages``) and the Ray Data job that runs them (``cluster``)."""
