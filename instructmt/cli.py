"""The `instructmt` entry point. Subcommands live in instructmt/commands/<name>.py, each exposing
`register(subparsers)`; they are discovered automatically, so a new capability adds one file."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from . import __version__
from . import commands
from .errors import InstructMTError
from .io_safety import user_io_error

EPILOG = """examples:
  instructmt demo --output demo_output            train a tiny T5 on the bundled tasks and evaluate held-out tasks
  instructmt tasks list tasks/                     list the tasks in a directory
  instructmt prompt show TASK --tasks tasks/       print a rendered Tk-Instruct prompt
  instructmt train --config cfg.yaml               train (LoRA by default) on a task mixture
  instructmt eval --model RUN/model --tasks DIR    held-out evaluation with a per-category report
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="instructmt", description="Instruction-tuned multi-task training and held-out-task evaluation.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"instructmt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{commands.__name__}.{info.name}")
        if hasattr(mod, "register"):
            mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except InstructMTError as e:
        print(f"instructmt {args.command}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # backstop: the writers and readers convert these themselves, naming the path
        print(f"instructmt {args.command}: error: {user_io_error(e, action='read or write')}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"instructmt {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
