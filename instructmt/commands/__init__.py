"""CLI subcommands: one module each, with `register(subparsers)`; discovered by instructmt.cli."""
