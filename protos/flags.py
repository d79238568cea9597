"""Command-line flags: declared as data (a service declares each flag once, as a `Flag`), and
the argparse types and server flags every service shares.

Its own parser is built from the declaration (`add_flags`), and so are `meshserve up`'s parser
and the argv `up` hands that service's process (`forward`). No argparse internals are read.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from protos.errors import InvalidRequest

SWITCH_ACTIONS = {"store_true": False, "store_false": True}  # action -> its default


@dataclass(frozen=True, slots=True, eq=False)
class Flag:
    """One option of a service's command line.

    Args:
        names: its option strings, e.g. ("--dtype",); the first is the one forwarded.
        options: the `ArgumentParser.add_argument` keywords (default, type, choices, action,
            help, ...).
    """

    names: tuple[str, ...]
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.names or not all(name.startswith("--") for name in self.names):
            raise ValueError(f"a Flag needs --option names, got {self.names!r}")
        if self.options.get("required"):
            raise ValueError(f"{self.names[0]}: a required option is wiring, not a Flag")

    @property
    def dest(self) -> str:
        return self.options.get("dest") or self.names[0].removeprefix("--").replace("-", "_")

    @property
    def action(self) -> str:
        return self.options.get("action", "store")

    @property
    def default(self) -> Any:
        return self.options.get("default", SWITCH_ACTIONS.get(self.action))

    @property
    def choices(self) -> tuple[Any, ...] | None:
        choices = self.options.get("choices")
        return None if choices is None else tuple(choices)

    def accepts(self, value: Any) -> bool:
        return self.choices is None or value in self.choices

    def argv(self, value: Any) -> tuple[str, ...]:
        """`value` (as parsed) in this flag's own syntax; () for its default.

        NOTE: a value outside this flag's `choices` is () too: when services share a flag,
        a value only some of them take (`--dtype auto`, the LM's) reaches only those.
        """
        if value == self.default or not self.accepts(value):
            return ()
        option = self.names[0]
        if self.action in SWITCH_ACTIONS:
            return (option,)
        if self.action == "append":
            return tuple(arg for item in value for arg in (option, str(item)))
        if isinstance(value, dict | list):
            return (option, json.dumps(value))
        return (option, str(value))


def flag(*names: str, **options: Any) -> Flag:
    """`flag("--dtype", default="float32", help=...)`: add_argument's signature, as data."""
    return Flag(names, options)


class ArgumentContainer(Protocol):
    """An `argparse.ArgumentParser` or one of its argument groups."""

    def add_argument(self, *names: str, **options: Any) -> argparse.Action: ...


def add_flags(container: ArgumentContainer, flags: Sequence[Flag]) -> None:
    """Adds `flags` to a parser or to one of its argument groups, in order."""
    for item in flags:
        container.add_argument(*item.names, **item.options)


def forward(flags: Sequence[Flag], values: Mapping[str, Any]) -> tuple[str, ...]:
    """The argv that gives a service the values set in `values` (by dest) for its `flags`."""
    return tuple(arg for item in flags for arg in item.argv(values.get(item.dest, item.default)))


def add_server_args(parser: argparse.ArgumentParser, default_port: int) -> None:
    """--host, --port, --grace-seconds and --metrics-port, the same for every service."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port",
        type=int,
        default=default_port,
        help=f"port (default {default_port}; 0 = any free)",
    )
    parser.add_argument(
        "--grace-seconds",
        type=float,
        default=30.0,
        help="on SIGTERM, how long in-flight calls may finish (default 30)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus metrics over HTTP on --host and this port (default: none; "
        "0 = any free)",
    )


def parse_bytes(text: str) -> int:
    """ "2GiB", "512MiB", "1e9" or "1048576" -> bytes."""
    units = {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "kb": 10**3, "mb": 10**6, "gb": 10**9}
    lowered = text.strip().lower()
    for suffix, factor in units.items():
        if lowered.endswith(suffix):
            return int(float(lowered[: -len(suffix)]) * factor)
    return int(float(lowered))


def parse_json_object(
    text: str, what: str, error: type[InvalidRequest] = InvalidRequest
) -> dict[str, Any]:
    """`text` as a JSON object, else `error` with a sentence naming `what` (a flag, an option).

    The one JSON-object parser: flags (`json_object`), --limit-mm-per-prompt and
    --override-pooler-config all read their JSON here.
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise error(f"{what}: expected a JSON object like '{{\"key\": 1}}', got {text!r}")
    return value


def json_object(text: str) -> dict[str, Any]:
    """argparse type for flags that take a JSON object (--hf-overrides, ...)."""
    try:
        return parse_json_object(text, "the value")
    except InvalidRequest as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
