"""``python -m distill`` (and ``torchrun -m distill``) run ``pgn-distill``."""

from .cli import main

main()
