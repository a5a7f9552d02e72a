"""``python -m bfrboost`` (and ``accelerate launch -m bfrboost train …``) runs the CLI."""

try:
    from bfrboost.cli import main
except KeyboardInterrupt:  # Ctrl-C while the modules load: the documented 130, not a traceback
    raise SystemExit(130) from None

main()
