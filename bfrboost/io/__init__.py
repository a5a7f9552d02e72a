"""Files in and out, one module per job: ``read`` (decode photos), ``write`` (encode, atomic writes),
``inputs`` (files, folders and globs → paths; the one extension list and folder scanner)."""
