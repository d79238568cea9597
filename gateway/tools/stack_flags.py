"""The flags `meshserve up` takes for its services, and the argv each service's process gets.

Each service declares its flags once (`LM_FLAGS`, `ENCODER_FLAGS`, `GATEWAY_FLAGS`, as
`protos.flags.Flag`s); `up` offers their union and hands every service the values of its own
flags. A flag several services share (--dtype, --device, --trust-remote-code, --task) is
offered once and reaches each of them. The wiring flags (--model, --host, --port,
--grace-seconds, --modality, --lm, --encoder) are no Flags: the launcher sets them per child.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from protos.flags import Flag, add_flags, forward

SERVICES = ("lm", "encoder", "gateway")
GROUP_TITLES = {
    "lm": "lm (each LM replica)",
    "encoder": "encoders (one service per modality the model takes, each replica)",
    "gateway": "gateway",
}
SHARED_TITLE = "shared (each service in [...] gets the value, unless it lacks that choice)"


@dataclass(frozen=True, slots=True, eq=False)
class StackFlag:
    """One flag of `up`: as `up` declares it, and the services that take it."""

    flag: Flag
    services: tuple[str, ...]


def service_flags() -> dict[str, tuple[Flag, ...]]:
    """Each service's own declaration of the flags `up` forwards to it."""
    from encoder_service.cli import ENCODER_FLAGS
    from gateway.tools.gateway_command import GATEWAY_FLAGS
    from lm_service.cli import LM_FLAGS

    return {"lm": LM_FLAGS, "encoder": ENCODER_FLAGS, "gateway": GATEWAY_FLAGS}


def stack_flags(by_service: Mapping[str, Sequence[Flag]]) -> tuple[StackFlag, ...]:
    """Every service flag once, in service order; a shared one lists each service taking it."""
    declared: dict[str, list[tuple[str, Flag]]] = {}
    for service, flags in by_service.items():
        for item in flags:
            declared.setdefault(item.dest, []).append((service, item))
    return tuple(
        StackFlag(_merge([item for _, item in pairs]), tuple(service for service, _ in pairs))
        for pairs in declared.values()
    )


def _merge(declared: Sequence[Flag]) -> Flag:
    """One declaration for a flag several services take: theirs, with the union of choices.

    NOTE: `up` forwards only values that differ from the default, so every service must agree
    on the default (and on names, action and type) for a shared flag to mean one thing.
    """
    first = declared[0]
    for other in declared[1:]:
        if _signature(other) != _signature(first):
            raise ValueError(
                f"{first.names[0]} is declared differently by the services that take it "
                f"({_signature(first)} vs {_signature(other)}); `meshserve up` cannot give "
                "them one value"
            )
    choices = [choice for item in declared for choice in item.choices or ()]
    if not choices:
        return first
    return Flag(first.names, {**first.options, "choices": tuple(dict.fromkeys(choices))})


def _signature(item: Flag) -> tuple[Any, ...]:
    return (item.names, item.action, item.default, item.options.get("type"))


def add_stack_flags(parser: argparse.ArgumentParser) -> None:
    """Every service's flags, grouped by the service that takes them (shared ones apart)."""
    flags = stack_flags(service_flags())
    for service in SERVICES:
        own = [s.flag for s in flags if s.services == (service,)]
        add_flags(parser.add_argument_group(GROUP_TITLES[service]), own)
    shared = parser.add_argument_group(SHARED_TITLE)
    add_flags(shared, [_labelled(s) for s in flags if len(s.services) > 1])


def _labelled(shared: StackFlag) -> Flag:
    help_text = shared.flag.options.get("help", "")
    label = f"[{', '.join(shared.services)}]"
    return Flag(shared.flag.names, {**shared.flag.options, "help": f"{help_text} {label}".strip()})


def service_argv(
    args: argparse.Namespace, overrides: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, tuple[str, ...]]:
    """service -> the argv of its flags that `up` was given (not its defaults).

    Args:
        overrides: service -> {dest: value} that replace `up`'s values for that service
            (the encoders' --device comes from --encoder-device when it is set).
    """
    values = vars(args)
    return {
        service: forward(flags, {**values, **(overrides or {}).get(service, {})})
        for service, flags in service_flags().items()
    }
