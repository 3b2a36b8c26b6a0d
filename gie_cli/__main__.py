"""`python -m gie_cli` entry point."""

from gie_cli.cli import main

main()
