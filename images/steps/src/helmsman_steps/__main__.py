"""``python -m helmsman_steps`` is the same as ``helmsman-step``."""

from helmsman_steps.cli import main

main()
