"""The ``visattn`` command (``python -m visattn`` is the same): one program, a subcommand per job.

Each subcommand lives in a module of this package with a ``main(argv, *, prog)``; ``tools/*.py`` are thin aliases
of them, so a checkout works without installing. Every subcommand turns a user error (a ``VisattnError`` or an
``OSError``) into one paragraph and exit status 2 (``run_cli``), takes ``--version``, and ends its ``--help`` with
examples. A subcommand imports its application only after parsing its flags, so ``--help`` imports no torch.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from visattn import __version__
from visattn.errors import USER_ERRORS, error_text
from visattn.registry import did_you_mean


def version_text() -> str:
    from importlib.metadata import PackageNotFoundError, version  # ~0.1 s (email, zipfile): only for --version

    try:
        return f"visattn {version('visattn')}"
    except PackageNotFoundError:  # a checkout on sys.path, not installed
        return f"visattn {__version__}"


class VersionAction(argparse.Action):
    """``--version``: prints :func:`version_text` when given (argparse's own action would compute it for every
    parser, i.e. on every command)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **_: object) -> None:
        super().__init__(option_strings, dest=dest, nargs=0, default=argparse.SUPPRESS,
                         help="show the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        print(version_text())
        parser.exit()


def add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action=VersionAction)


def new_parser(prog: str, description: str, epilog: str = "") -> argparse.ArgumentParser:
    """A subcommand's parser: examples at the end of its --help, and ``--version``."""
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog.format(prog=prog),
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    add_version(parser)
    return parser


def ensure_std_streams() -> None:
    """Give a closed stdin/stdout/stderr (``>&-``) /dev/null, so that printing works and no file the command opens
    later (a lock, a checkpoint) becomes descriptor 1 or 2 and receives another library's output."""
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, mode, closefd=False))  # noqa: SIM115 - lives as long as the process


PACKAGE_DIR = str(Path(__file__).resolve().parent.parent)
_python_formatwarning = warnings.formatwarning


def format_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                   line: str | None = None) -> str:
    """visattn's own warnings as one line ``visattn: warning: ...``: the file and source line Python adds say
    nothing to a user; other libraries' warnings keep Python's format."""
    if str(Path(filename).resolve()).startswith(PACKAGE_DIR):
        return f"visattn: warning: {' '.join(str(message).split())}\n"
    return _python_formatwarning(message, category, filename, lineno, line)


def run_cli(main: Callable[[], int | None]) -> None:
    """Run ``main``; a user error prints one paragraph and exits 2 instead of a traceback (anything else is a bug
    and keeps its traceback)."""
    ensure_std_streams()
    warnings.formatwarning = format_warning  # commands only: a library caller keeps Python's format
    try:
        code = main()
    except USER_ERRORS as err:
        print(f"visattn: error: {error_text(err)}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)


# name -> (the module whose main() runs it, one line for the usage)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("visattn.cli.train", "train one run (classification or detection)"),
    "sweep": ("visattn.cli.sweep", "ablation sweep: backbones x blocks x seeds, with tables and plots"),
    "evaluate": ("visattn.cli.evaluate", "metrics of a run's weights on a data set split"),
    "export": ("visattn.cli.export", "ONNX / TorchScript / safetensors, each verified against the eager model"),
    "predict": ("visattn.cli.predict", "predict a folder of images with an exported model"),
    "visualize": ("visattn.cli.visualize", "attention figures of a run; attention mass inside object boxes"),
    "profile": ("visattn.cli.profile", "parameters, MACs and latency of a model"),
    "blocks": ("visattn.cli.blocks", "every attention block: parameters and output shape"),
}

USAGE = """\
usage: visattn <command> [flags]        (visattn <command> --help for its flags)

Plug-in attention blocks for vision backbones: train, ablate, evaluate, export.

commands:
{commands}

examples:
  visattn train --config digits_resnet18_cbam
  visattn train --backbone resnet50 --attn se --data imagefolder --data-dir ~/pets
  visattn evaluate --run runs/digits-resnet18-cbam-s0
  visattn export --run runs/digits-resnet18-cbam-s0 --format onnx
"""


def usage() -> str:
    return USAGE.format(commands="\n".join(f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items()))


def main(argv: Sequence[str] | None = None) -> None:
    """``visattn <command> [flags]``: dispatch to the command, which parses its own flags."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), end="")
        sys.exit(0 if argv else 2)
    if argv[0] == "--version":
        print(version_text())
        sys.exit(0)
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"visattn: error: unknown command {name!r}.{did_you_mean(name, list(COMMANDS))} "
              f"Commands: {', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(2)
    command = importlib.import_module(COMMANDS[name][0]).main
    run_cli(lambda: command(rest, prog=f"visattn {name}"))
