"""`limit_mm_per_prompt`: how many items of each media modality one prompt may carry.

The seed: to enable several multimodal items per text prompt, set `limit_mm_per_prompt`
(offline, `{"image": 4}`) or `--limit-mm-per-prompt` (online, `image=4`). Without it a prompt
may carry one item of each modality the model takes. The limits are checked against the model's
modality spec once, at start-up, so that a request is never refused for a configuration mistake.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.rules.modalities import ModalitySpec, owner_name
from protos.errors import InvalidRequest
from protos.flags import parse_json_object
from protos.modality import MEDIA_MODALITIES, Modality

LimitsInput = str | Mapping[str, int] | None

_FLAG = "--limit-mm-per-prompt"


class InvalidLimit(InvalidRequest, ValueError):
    """A `limit_mm_per_prompt` that is malformed or that the model's modality spec rules out."""


def parse_limit_mm_per_prompt(value: LimitsInput) -> dict[str, int]:
    """Parse `image=4,video=1`, a JSON object `{"image": 4}`, or a mapping; None or "" -> {}.

    Names must be media modalities (image, video, audio) and values non-negative integers.
    """
    if value is None:
        return {}
    if isinstance(value, Mapping):
        pairs = list(value.items())
    elif value.strip().startswith(("{", "[")):
        pairs = list(parse_json_object(value, _FLAG, InvalidLimit).items())
    else:
        pairs = [_split_pair(item) for item in value.split(",") if item.strip()]
    return _limits_from_pairs(pairs)


def validate_limits(
    spec: ModalitySpec,
    limits: LimitsInput = None,
    architecture: str = "",
    task: str = "generate",
) -> dict[str, int]:
    """The effective limit of every media modality, refusing limits the spec rules out.

    A modality the spec has defaults to 1, one it lacks is 0. Refused: a limit above 1 for a
    modality without a trailing `+` in any alternative, a positive limit for a modality the spec
    lacks, a negative limit, an unknown modality name.
    """
    requested = parse_limit_mm_per_prompt(limits)
    effective: dict[str, int] = {}
    for modality in MEDIA_MODALITIES:
        default = 1 if modality in spec.modalities else 0
        limit = requested.get(modality.label, default)
        _require_within_spec(spec, modality, limit, owner_name(architecture, task))
        effective[modality.label] = limit
    return effective


def _require_within_spec(spec: ModalitySpec, modality: Modality, limit: int, owner: str) -> None:
    setting = f"{_FLAG} {modality.label}={limit}"
    if limit > 0 and modality not in spec.modalities:
        raise InvalidLimit(
            f"{owner} accepts {spec}: {setting} is not possible, it takes no {modality.label}"
        )
    if limit > 1 and not spec.accepts_multiple(modality):
        raise InvalidLimit(
            f"{owner} accepts {spec}: one {modality.label} per prompt at most, "
            f"so {setting} is not possible"
        )


def _split_pair(item: str) -> tuple[str, str]:
    name, sep, count = item.partition("=")
    if not sep:
        raise InvalidLimit(f"{_FLAG}: expected MODALITY=N such as image=4, got {item.strip()!r}")
    return name, count


def _limits_from_pairs(pairs: list[tuple[object, object]]) -> dict[str, int]:
    limits: dict[str, int] = {}
    for raw_name, raw_count in pairs:
        name = _modality_name(raw_name)
        if name in limits:
            raise InvalidLimit(f"{_FLAG}: {name} is given twice")
        limits[name] = _count(name, raw_count)
    return limits


def _modality_name(raw: object) -> str:
    name = str(raw).strip().lower()
    if name not in {m.label for m in MEDIA_MODALITIES}:
        names = ", ".join(m.label for m in MEDIA_MODALITIES)
        raise InvalidLimit(f"{_FLAG}: unknown modality {name!r}; expected one of {names}")
    return name


def _count(name: str, raw: object) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise InvalidLimit(f"{_FLAG}: {name} must be an integer, got {raw!r}")
    try:
        count = int(raw)
    except ValueError:
        raise InvalidLimit(f"{_FLAG}: {name} must be an integer, got {raw!r}") from None
    if count < 0:
        raise InvalidLimit(f"{_FLAG}: {name} must be 0 or more, got {count}")
    return count
