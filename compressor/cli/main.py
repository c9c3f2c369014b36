"""The ``compressor`` command line.

Built-in sub-commands (:mod:`compressor.cli.commands`) and plugin sub-commands are registered
the same way, through ``register_commands``. Every user error ends in one clean message and a
non-zero exit code (2 for a bad recipe or other bad input: :class:`InputError`), never a traceback.
"""

from __future__ import annotations

import argparse
import sys
import traceback
import warnings
from collections.abc import Sequence

from compressor._version import __version__
from compressor.cli import commands
from compressor.contract.errors import CompressorError, InputError, RecipeError
from compressor.host.manager import Plugins, load_plugins
from compressor.train.host import RunHost

err = commands.err


def build_parser(plugins: Plugins) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compressor", description="Compress PyTorch models with declarative recipes."
    )
    parser.add_argument("--version", action="version", version=f"compressor {__version__}")
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="FILE",
        help="load a plugin from a Python file (repeatable)",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an unexpected error"
    )
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch CPU threads (1 is often best on a busy machine)",
    )
    # no global host: every command finds the plugins loaded here on its arguments
    parser.set_defaults(plugins=plugins, host=RunHost(plugins))
    sub = parser.add_subparsers(dest="command", required=True)
    commands.register_commands(sub, plugins)
    plugins.hook.register_commands(cli=sub)
    return parser


def _plugin_files(argv: Sequence[str]) -> list[str]:
    files = []
    for i, arg in enumerate(argv):
        if arg == "--plugin" and i + 1 < len(argv):
            files.append(argv[i + 1])
        elif arg.startswith("--plugin="):
            files.append(arg.split("=", 1)[1])
    return files


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    with warnings.catch_warnings():
        if not debug:  # --debug keeps Python's form, with the file and line that warned
            warnings.showwarning = show_warning
        return _main(argv, debug)


def _main(argv: list[str], debug: bool) -> int:
    plugins: Plugins | None = None
    try:
        plugins = load_plugins(_plugin_files(argv))
        args = build_parser(plugins).parse_args(argv)
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        return int(args.func(args))
    except RecipeError as exc:
        say(str(exc))
        return 2
    except InputError as exc:
        if debug:
            traceback.print_exc()
        say(f"error: {exc}")
        return 2
    except CompressorError as exc:
        if debug:
            traceback.print_exc()
        say(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        say("interrupted: finished checkpoints and reports are intact")
        return 130
    except Exception as exc:  # a bug, here or in a plugin: one line, the traceback on --debug
        if debug:
            traceback.print_exc()
        text = plugins.explain(exc) if plugins is not None else f"{type(exc).__name__}: {exc}"
        say(f"error: {text}" + ("" if debug else " (--debug shows the traceback)"))
        return 1


def say(text: str) -> None:
    err.print(text, markup=False, highlight=False)


def show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: object = None,
    line: str | None = None,
) -> None:
    """A warning as one line for the person at the terminal, not Python's internal path and
    source line (``--debug`` shows those)."""
    say("warning: " + " ".join(str(message).split()))


if __name__ == "__main__":
    sys.exit(main())
