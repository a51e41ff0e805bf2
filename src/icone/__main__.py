"""``python -m icone`` (and ``torchrun -m icone``) runs the command line."""

from icone.cli import main

main()
