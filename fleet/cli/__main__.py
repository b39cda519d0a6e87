"""`python -m fleet.cli`: the same command as the installed `fleet` script."""

from fleet.cli import main

main()
