"""CLI subcommands: one module each, with `register(subparsers)`; discovered by instructmt.cli.

A command parses arguments and calls one function of `workflows/` (or of the layer it needs). It
imports that function inside its `_run`, for start-up time: `instructmt --help` builds every
subcommand's parser and must not load the model stack."""
