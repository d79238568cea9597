"""The input modalities every service names: one enum for the whole mesh."""

from __future__ import annotations

import enum

from protos.errors import InvalidRequest


class Modality(enum.StrEnum):
    """One input modality; the value is its user-facing name ("image")."""

    TEXT = "text"
    IMAGE = "image"
    VIDEO = "video"
    AUDIO = "audio"

    def __repr__(self) -> str:
        # Sentences for users quote the word ('embed'), not the enum member.
        return repr(self.value)

    @property
    def label(self) -> str:
        """The user-facing name: "text", "image", "video", "audio"."""
        return self.value

    @property
    def letter(self) -> str:
        """Its letter in the seed's notation: T, I, V, A."""
        return _LETTERS[self]

    @classmethod
    def from_label(cls, label: str) -> Modality:
        """The modality named `label` ("image"); raises InvalidRequest for an unknown name."""
        try:
            return cls(label)
        except ValueError:
            names = ", ".join(m.value for m in cls)
            raise InvalidRequest(f"Unknown modality {label!r}; expected one of {names}") from None

    @classmethod
    def from_letter(cls, letter: str) -> Modality:
        """The modality of a letter of the seed's notation; ValueError for another letter."""
        for modality, known in _LETTERS.items():
            if known == letter:
                return modality
        raise ValueError(f"unknown modality letter {letter!r}; expected one of T, I, V, A")


_LETTERS = {Modality.TEXT: "T", Modality.IMAGE: "I", Modality.VIDEO: "V", Modality.AUDIO: "A"}

MEDIA_MODALITIES: tuple[Modality, ...] = (Modality.IMAGE, Modality.VIDEO, Modality.AUDIO)
