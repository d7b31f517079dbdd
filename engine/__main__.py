"""`python -m slidestream.engine` runs the CLI."""
from .cli import main

main()
