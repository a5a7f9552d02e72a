"""``python -m bfrboost`` (and ``accelerate launch -m bfrboost train …``) runs the CLI."""

from bfrboost.cli import main

main()
