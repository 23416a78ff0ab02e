"""The ``axpack`` command group.

One module per command; each module exposes a pure function and a thin click
command named ``command``. Modules are imported only when their command runs
(or for ``--help`` listings, which import light modules only), so ``axpack
--help`` stays instant. :class:`~axpack.errors.AxpackError` becomes one line on
stderr and its exit code; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import importlib
import logging
import sys

import click

from . import __version__
from .errors import AxpackError

# command name -> module under axpack (each defines ``command``)
COMMANDS: dict[str, str] = {
    "demo-model": "demo_model",
    "prep": "prep",
    "script": "script",
    "stats": "stats",
    "validate": "validate",
    "smoke": "smoke",
    "train": "train",
    "plan": "plan",
    "diff": "diff",
    "merge": "merge",
    "gguf": "gguf",
    "export": "export",
    "verify": "verify",
    "probe": "probe",
    "push": "push",
    "report": "report",
    "fetch": "fetch",
    "doctor": "doctor",
    "launch": "launch",
    "twin": "twin",
}


class _StderrHandler(logging.Handler):
    """One stderr line per record of the ``axpack`` loggers (engines report
    through :mod:`logging` or a callback; the CLI shows INFO and up)."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(self.format(record), err=True)


def _show_engine_log() -> None:
    log = logging.getLogger("axpack")
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        log.addHandler(_StderrHandler())
        log.setLevel(logging.INFO)


def _available() -> dict[str, str]:
    from importlib.util import find_spec

    return {name: mod for name, mod in COMMANDS.items() if find_spec(f"axpack.{mod}") is not None}


class LazyGroup(click.Group):
    """A click group that imports a command's module only when it is needed."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_available())

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        mod = _available().get(name)
        if mod is None:
            return None
        return importlib.import_module(f"axpack.{mod}").command

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except AxpackError as err:
            click.echo(f"axpack: error: {err.message}", err=True)
            sys.exit(err.exit_code)
        except OSError as err:
            # A full disk is an expected failure of every step (the atomic
            # writers have already removed their temp files): one line, exit 1.
            if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            where = f"{err.filename}: " if err.filename else ""
            click.echo(f"axpack: error: {ctx.invoked_subcommand or 'axpack'}: {where}no space left on device; "
                       "free some disk and rerun (finished steps are skipped)", err=True)
            sys.exit(1)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="axpack")
def main() -> None:
    """axpack: raw chat data -> Axolotl SFT/DPO -> merge -> GGUF, on one GPU."""
    _show_engine_log()
