"""The ``stylestream`` command line (also ``python -m workers.cli``): the composition root.

The commands live in :mod:`workers.commands` by theme; each imports what it runs inside its body, so
``worker classify`` never loads the text miner, ``worker text`` never loads the image models, and ``--help``
loads neither. Configuration and connection errors end a command with one line on stderr and exit status 1;
bad arguments are refused by the parser with exit status 2.
"""

from __future__ import annotations

import json
import logging
import re
import tomllib
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any, get_origin

import typer
from kafka.errors import KafkaError
from pydantic import ValidationError
from pydantic_settings import SettingsError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from typer.core import TyperGroup

from streamcore.exceptions import StylestreamError
from streamcore.faults import install_repeat_filter
from streamcore.runtime import tune_process
from streamcore.settings import Settings
from workers.commands import feedback, models, photo, recommend, review, stream

#: What a user can fix without reading code: bad settings or files, servers that do not answer, refused inputs.
#: A path setting naming a file where a folder goes (or the reverse) is the user's to fix as a missing one is.
_USER_ERRORS = (ValidationError, SettingsError, StylestreamError, KafkaError, RedisError, FileNotFoundError,
                FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError, tomllib.TOMLDecodeError,
                json.JSONDecodeError)


def describe(exc: BaseException) -> str:
    """One line saying what went wrong, for the errors in :data:`_USER_ERRORS`."""
    if isinstance(exc, ValidationError) and exc.title in {s.__name__ for s in Settings.sections().values()}:
        problems = [f"{Settings.variable(exc.title, str(e['loc'][0]))}={_shown(str(e['loc'][0]), e['input'])}: "
                    f"{e['msg']}" if e["loc"] else e["msg"] for e in exc.errors()]
        return "invalid configuration: " + "; ".join(problems)
    if isinstance(exc, ValidationError):
        return f"invalid {exc.title}: " + "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    if isinstance(exc, SettingsError):  # a variable holding a JSON value (KAFKA_OPTIONS) that is not JSON
        return f"invalid configuration: {_not_json(exc)}"
    if isinstance(exc, KafkaError):
        return f"Kafka: {exc}"
    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        return f"cannot reach Redis: {exc}"
    if isinstance(exc, RedisError):
        return f"Redis: {exc}"
    return " ".join(str(exc).split()) or type(exc).__name__


#: How pydantic-settings says a variable of a JSON-valued field (a dict) did not parse as JSON.
_NOT_JSON = re.compile(r'error parsing value for field "(\w+)"')


def _not_json(exc: SettingsError) -> str:
    """Which variable is not JSON and what it must be, without its value (Kafka options may hold credentials)."""
    found = _NOT_JSON.match(str(exc))
    kind = {dict: "a JSON object, e.g. '{\"client_id\": \"me\"}'", list: "a JSON array"}
    fields = [(cls, found.group(1)) for cls in Settings.sections().values() if found and found.group(1) in
              cls.model_fields and get_origin(cls.model_fields[found.group(1)].annotation) in kind]
    if not fields:
        return str(exc)
    cls, field = fields[0]
    what = kind[get_origin(cls.model_fields[field].annotation)]
    variables = " or ".join(c.variables()[f] for c, f in fields)
    reason = f" ({exc.__cause__})" if exc.__cause__ else ""
    return f"{variables} must be {what}{reason}"


#: Parts of setting names whose values may hold a secret (a URL may carry a password).
_SECRET_PARTS = ("password", "secret", "token", "url")


def _shown(field: str, value: Any) -> str:
    """A refused setting's value as an error line may show it: never a secret, and of a JSON object (the
    pass-through Kafka options, which may hold credentials) only its keys."""
    if any(part in field.lower() for part in _SECRET_PARTS):
        return "<hidden>"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key!r}: …" for key in value) + "}"
    return repr(value)


class _Commands(TyperGroup):
    """Runs a command and turns the errors a user can fix into one line on stderr and exit status 1."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except _USER_ERRORS as exc:
            typer.echo(f"stylestream: {describe(exc)}", err=True)
            raise typer.Exit(1) from None


app = typer.Typer(cls=_Commands, help="Event-driven fashion classifier for Instagram posts.", no_args_is_help=True,
                  rich_markup_mode=None)
for _module in (stream, photo, models, recommend, review, feedback):
    _module.register(app)


def _print_version(asked: bool) -> None:
    if asked:
        try:
            typer.echo(f"stylestream {version('stylestream')}")
        except PackageNotFoundError:  # run from a checkout that was never installed
            typer.echo("stylestream (not installed)")
        raise typer.Exit()


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
          _version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", is_eager=True,
                                                 callback=_print_version)] = False) -> None:
    tune_process()  # before any command loads torch: OpenMP reads its wait policy once
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("aiokafka", "kafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # kafka-python's I/O thread warns whenever the GIL kept it waiting >100 ms (image work in the
    # demo's producer thread does): not actionable for a user.
    logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)
    # An outage repeats the same warnings many times a second: the first, then one a window with a count.
    install_repeat_filter()


if __name__ == "__main__":
    app()
