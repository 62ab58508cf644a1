"""`sltlab` command line. Each subcommand lives in `sltlab.commands.<name>` and registers itself."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import pkgutil
import signal
import sys
import threading
from collections.abc import Iterator
from typing import NoReturn

from sltlab.errors import SltlabError, Terminated

DESCRIPTION = """\
sltlab: strong lottery tickets in transformers, with LayerNorm as a first-class knob.

A strong lottery ticket is a binary mask over the weights of a randomly initialised
network, found without training the weights. Every run is recorded in a SQLite store
(default runs/sltlab.db) keyed by a hash of its config, so sweeps resume where they stopped.
Run `sltlab COMMAND --help` for the details of each command.
"""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line like every other error (argparse prints the whole usage first,
    which buries the message); the subcommand parsers inherit it."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    from sltlab.version import __version__

    parser = _Parser(prog="sltlab", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"sltlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    import sltlab.commands as commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"sltlab.commands.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


_sigterm_seen = threading.Event()


def _raise_terminated(signum: int, frame: object) -> None:
    # remembered too: code between here and main() may turn the exception into a plain KeyboardInterrupt (Ray's
    # ray.wait does), and the exit code should still say SIGTERM
    _sigterm_seen.set()
    raise Terminated


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    # Only where SIGTERM has its default action (and only in the main thread, the one place Python can set a
    # handler): a parent that chose to ignore it keeps that choice, as with SIGINT, which Python leaves ignored when
    # a non-interactive shell starts a job in the background (`cmd &`). Restored after, for callers of main().
    _sigterm_seen.clear()
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGTERM) is _raise_terminated:  # not if the command installed its own (Ray's)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        with _stop_on_sigterm():
            code = int(args.func(args) or 0)
        sys.stdout.flush()  # here, not at exit, so a closed pipe is caught below
        return code
    except SltlabError as err:
        if args.debug:
            raise
        print("sltlab: error: " + " ".join(str(err).splitlines()), file=sys.stderr)  # one line, always
        return 2
    except KeyboardInterrupt:
        if _sigterm_seen.is_set():
            print("sltlab: terminated (SIGTERM); finished runs are kept in the store", file=sys.stderr)
            return 128 + signal.SIGTERM
        print("sltlab: interrupted; finished runs are kept in the store", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`sltlab runs list | head`): stop quietly, like a tool killed by SIGPIPE. Python would
        # otherwise complain again when it flushes stdout at exit, so stdout is pointed at /dev/null first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
