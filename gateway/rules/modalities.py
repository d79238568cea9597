"""Modality rules: the seed's input notation (`T + IE+ + VE+`, `T / I`) and the check of a prompt.

The notation, from the seed's multimodal section:

- letters: **T**ext, **I**mage, **V**ideo, **A**udio;
- `+` joins modalities that may appear together in one prompt, in any sub-combination
  (`T + I`: text only, image only, or both);
- `/` separates mutually exclusive alternatives (`T / I`: text only or image only, never both);
- `E` after a letter: precomputed embeddings are accepted for that modality;
- a trailing `+` after a letter: several items of that modality may be given in one prompt
  (how many is capped by `--limit-mm-per-prompt`, default 1, see `gateway.rules.limits`).

`gateway.rules.spec_table` holds every multimodal architecture's spec, per task; its
`spec_for()` answers for any architecture: one without a row gets a spec derived from its
config's vision/audio sub-configs, and a config without any is text-only (`T`), so an image sent
to such a model is refused by `check()` with the rule named ("FooForCausalLM accepts T: image is
not supported"). Whether the model can run the task at all is not decided here (the model
registry does that).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from protos.errors import InvalidRequest, LimitExceeded
from protos.modality import Modality


class InvalidNotation(ValueError):
    """A modality spec string that does not follow the seed's notation."""


class ModalityNotAccepted(InvalidRequest):
    """A prompt breaks the model's modality rule (a modality, combination or embeddings)."""


class TooManyItems(LimitExceeded):
    """A prompt has more items of one modality than the spec or the configured limit allows."""


class EmptyPrompt(InvalidRequest):
    """A prompt with neither text nor any media item."""


# NOTE: a term's trailing "+" means "several items" only when it is followed by the joining "+"
# or ends the alternative; otherwise the "+" joins ("I+V" is I joined with V).
_TERM = re.compile(r"([A-Za-z])(E?)(\+(?=\+|$))?")


@dataclass(frozen=True, slots=True)
class ModalityTerm:
    """One modality inside an alternative: `IE+` = image, embeddings accepted, several items."""

    modality: Modality
    embeds_allowed: bool = False
    multiple: bool = False

    def __str__(self) -> str:
        embeds = "E" if self.embeds_allowed else ""
        multiple = "+" if self.multiple else ""
        return f"{self.modality.letter}{embeds}{multiple}"


@dataclass(frozen=True, slots=True)
class ModalitySpec:
    """A model's modality rule: alternatives (split by `/`) of terms (joined by `+`).

    Args:
        alternatives: each alternative is the set of modalities that may appear together.
        raw: the string it was parsed from (not part of equality).
    """

    alternatives: tuple[tuple[ModalityTerm, ...], ...]
    raw: str = field(default="", compare=False)

    @classmethod
    def parse(cls, notation: str) -> ModalitySpec:
        """Parse the seed's notation, e.g. `T + IE+ + VE+` or `T + I+ / T + A+ / I+ + A+`."""
        compact = "".join(notation.split())  # also drops the seed's non-breaking spaces
        if not compact:
            raise InvalidNotation("Empty modality spec; expected e.g. 'T + I+'")
        alternatives = tuple(_parse_alternative(part, notation) for part in compact.split("/"))
        return cls(alternatives=alternatives, raw=notation)

    def __str__(self) -> str:
        return " / ".join(" + ".join(str(term) for term in alt) for alt in self.alternatives)

    @property
    def modalities(self) -> frozenset[Modality]:
        """Every modality that appears in some alternative."""
        return frozenset(term.modality for alt in self.alternatives for term in alt)

    @property
    def is_text_only(self) -> bool:
        return self.modalities == {Modality.TEXT}

    def accepts_multiple(self, modality: Modality) -> bool:
        """Whether some alternative lets several items of `modality` into one prompt."""
        return any(t.multiple for alt in self.alternatives for t in alt if t.modality is modality)

    def accepts_embeds(self, modality: Modality) -> bool:
        """Whether some alternative accepts `modality` as precomputed embeddings."""
        return any(
            t.embeds_allowed for alt in self.alternatives for t in alt if t.modality is modality
        )

    def check(
        self,
        counts: Mapping[str, int],
        has_text: bool,
        embeds: Collection[str] = frozenset(),
        limits: Mapping[str, int] | None = None,
        architecture: str = "",
        task: str = "generate",
    ) -> None:
        """Refuse a prompt that breaks this rule or the configured item limits.

        Args:
            counts: number of items per media modality name ("image": 2).
            has_text: whether the prompt has text.
            embeds: media modality names given as precomputed embeddings.
            limits: effective `limit_mm_per_prompt` (see `gateway.rules.limits.validate_limits`);
                a modality missing from it may have 1 item.
            architecture, task: only used to name the rule in error messages.
        Raises:
            EmptyPrompt, ModalityNotAccepted (InvalidRequest), TooManyItems (LimitExceeded).
        """
        prompt = PromptModalities.build(counts, has_text, embeds)
        if not prompt.used:
            raise EmptyPrompt("The prompt is empty: provide text or at least one media item")
        try:
            self._check_rule(prompt)
        except (ModalityNotAccepted, TooManyItems) as exc:
            # NOTE: named here, on refusal only: every request passes this check
            raise type(exc)(f"{owner_name(architecture, task)} accepts {self}: {exc}") from None
        _check_limits(prompt, limits or {})

    def _check_rule(self, prompt: PromptModalities) -> None:
        """Refuses `prompt` with what breaks the rule (the caller names the rule)."""
        unsupported = [m for m in _ordered(prompt.used) if m not in self.modalities]
        if unsupported:
            verb = "is" if len(unsupported) == 1 else "are"
            raise ModalityNotAccepted(f"{_join(unsupported)} {verb} not supported")
        candidates = [alt for alt in self.alternatives if prompt.used <= _modalities_of(alt)]
        if not candidates:
            combo = _join(_ordered(prompt.used))
            raise ModalityNotAccepted(f"{combo} cannot be combined in one prompt")
        fitting = [alt for alt in candidates if _embeds_fit(alt, prompt)]
        if not fitting:
            refused = _join(_embeds_offenders(candidates, prompt))
            raise ModalityNotAccepted(f"{refused} cannot be given as precomputed embeddings")
        candidates = fitting
        if not any(_multiple_fits(alt, prompt) for alt in candidates):
            raise TooManyItems(f"at most {_items(1, _single_item_offender(candidates, prompt))}")


@dataclass(frozen=True, slots=True)
class PromptModalities:
    """What one prompt uses: item counts per media modality, text, embeddings."""

    counts: Mapping[Modality, int]  # only modalities with at least one item
    has_text: bool
    embeds: frozenset[Modality]

    @classmethod
    def build(
        cls, counts: Mapping[str, int], has_text: bool, embeds: Collection[str]
    ) -> PromptModalities:
        parsed = {_media(name): count for name, count in counts.items()}
        if any(count < 0 for count in parsed.values()):
            raise ValueError(f"Item counts must not be negative: {dict(counts)}")
        nonzero = {m: n for m, n in parsed.items() if n > 0}
        embed_modalities = frozenset(_media(name) for name in embeds)
        if not embed_modalities <= nonzero.keys():
            raise ValueError(f"Embeddings given for modalities without items: {sorted(embeds)}")
        return cls(counts=nonzero, has_text=has_text, embeds=embed_modalities)

    @property
    def used(self) -> frozenset[Modality]:
        text = {Modality.TEXT} if self.has_text else set()
        return frozenset(self.counts.keys() | text)


_ORDER: tuple[Modality, ...] = tuple(Modality)


def _parse_alternative(part: str, notation: str) -> tuple[ModalityTerm, ...]:
    terms: list[ModalityTerm] = []
    position = 0
    while True:
        match = _TERM.match(part, position)
        if match is None:
            raise InvalidNotation(
                _notation_error(notation, f"expected a letter T, I, V or A in {part!r}")
            )
        terms.append(_term(match, notation))
        position = match.end()
        if position == len(part):
            break
        if part[position] != "+":
            raise InvalidNotation(_notation_error(notation, f"expected '+' or '/' in {part!r}"))
        position += 1
    _require_distinct(terms, notation)
    return tuple(terms)


def _term(match: re.Match[str], notation: str) -> ModalityTerm:
    letter, embeds, multiple = match.group(1), match.group(2), match.group(3)
    try:
        modality = Modality.from_letter(letter)
    except ValueError:
        raise InvalidNotation(
            _notation_error(notation, f"unknown modality letter {letter!r}")
        ) from None
    if modality is Modality.TEXT and (embeds or multiple):
        raise InvalidNotation(
            _notation_error(notation, "'E' and a trailing '+' apply to media only")
        )
    return ModalityTerm(modality, embeds_allowed=bool(embeds), multiple=bool(multiple))


def _require_distinct(terms: list[ModalityTerm], notation: str) -> None:
    letters = [term.modality.letter for term in terms]
    if len(set(letters)) != len(letters):
        raise InvalidNotation(
            _notation_error(notation, "a modality appears twice in one alternative")
        )


def _notation_error(notation: str, reason: str) -> str:
    return f"Bad modality spec {notation!r}: {reason} (expected e.g. 'T + IE+ / T + A+')"


def _media(name: str) -> Modality:
    modality = Modality.from_label(name)
    if modality is Modality.TEXT:
        raise ValueError("Item counts and embeddings are per media modality; text is `has_text`")
    return modality


def _modalities_of(alternative: tuple[ModalityTerm, ...]) -> frozenset[Modality]:
    return frozenset(term.modality for term in alternative)


def _embeds_fit(alternative: tuple[ModalityTerm, ...], prompt: PromptModalities) -> bool:
    return all(t.embeds_allowed for t in alternative if t.modality in prompt.embeds)


def _multiple_fits(alternative: tuple[ModalityTerm, ...], prompt: PromptModalities) -> bool:
    return all(t.multiple for t in alternative if prompt.counts.get(t.modality, 0) > 1)


def _embeds_offenders(
    candidates: list[tuple[ModalityTerm, ...]], prompt: PromptModalities
) -> list[Modality]:
    """The modalities given as embeddings that no candidate alternative takes as embeddings
    (all of them when each is accepted somewhere, but not together)."""
    accepted = {t.modality for alt in candidates for t in alt if t.embeds_allowed}
    refused = [m for m in _ordered(prompt.embeds) if m not in accepted]
    return refused or _ordered(prompt.embeds)


def _single_item_offender(
    candidates: list[tuple[ModalityTerm, ...]], prompt: PromptModalities
) -> Modality:
    """The modality with several items that no candidate alternative takes several of."""
    several = [m for m in _ordered(prompt.counts) if prompt.counts[m] > 1]
    multiple = {t.modality for alt in candidates for t in alt if t.multiple}
    return next((m for m in several if m not in multiple), several[0])


def _check_limits(prompt: PromptModalities, limits: Mapping[str, int]) -> None:
    for modality, count in prompt.counts.items():
        limit = limits.get(modality.label, 1)
        if count > limit:
            hint = f"set --limit-mm-per-prompt {modality.label}=N to raise it"
            raise TooManyItems(f"At most {_items(limit, modality)}; {hint}")


def _items(limit: int, modality: Modality) -> str:
    return f"{limit} {modality.label}(s) may be provided in one prompt"


def owner_name(architecture: str, task: str = "generate") -> str:
    """How error messages name a model: "Phi3VForCausalLM", "Phi3VForCausalLM (embed)"."""
    name = architecture or "The model"
    return name if task == "generate" else f"{name} ({task})"


def _ordered(modalities: Collection[Modality]) -> list[Modality]:
    return sorted(modalities, key=_ORDER.index)


def _join(modalities: list[Modality]) -> str:
    labels = [m.label for m in modalities]
    return labels[0] if len(labels) == 1 else f"{', '.join(labels[:-1])} and {labels[-1]}"
