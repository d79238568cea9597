"""What the OpenAI HTTP front is configured with (`--http-port`, `--api-key`, ...)."""

from __future__ import annotations

from dataclasses import dataclass

from protos.errors import InvalidRequest

MAX_URL_MEDIA_BYTES = 64 << 20  # a media file fetched from an allowed http(s) URL
URL_FETCH_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class HttpOptions:
    """The HTTP front's settings.

    Args:
        port: where it listens (on the gateway's --host); 0 picks a free port.
        api_key: when set, every /v1 request needs `Authorization: Bearer <api_key>`.
        served_model_name: the model id clients name (default: the --model path or hub id).
        allowed_media_domains: hosts whose http(s) media URLs may be fetched; none by default,
            so only data: URLs are taken.
    """

    port: int = 0
    api_key: str | None = None
    served_model_name: str | None = None
    allowed_media_domains: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise InvalidRequest(f"--http-port must be in 0..65535 (0 = any free), got {self.port}")
        if self.api_key is not None and not self.api_key.strip():
            raise InvalidRequest("--api-key must not be empty; leave it unset to serve without one")


def parse_domains(text: str | None) -> tuple[str, ...]:
    """ "example.com, cdn.example.org" -> ("example.com", "cdn.example.org"), lower case."""
    return tuple(d.strip().lower() for d in (text or "").split(",") if d.strip())
