"""`meshserve chat`: one prompt with media to a gateway's Chat stream, with timings.

Also a small library for scripts (the demo uses it): `media_part`, `embeds_part`,
`chat_request`, `stream_chat` and `format_stats`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from protos.meshserve.v1 import common_pb2, encoder_pb2, gateway_pb2, gateway_pb2_grpc

DEFAULT_GATEWAY = "127.0.0.1:50051"
MODALITY_CODES = {
    "image": common_pb2.MODALITY_IMAGE,
    "video": common_pb2.MODALITY_VIDEO,
    "audio": common_pb2.MODALITY_AUDIO,
}
STAGES = ("validate_ms", "encode_ms", "prompt_ms", "time_to_first_token_ms", "total_ms")


@dataclass(frozen=True, slots=True)
class ChatResult:
    """One finished stream, measured at the client.

    Args:
        time_to_first_token_s: from sending the request to the first non-empty piece.
        decode_s: from the first to the last token.
        stage_ms: the gateway's own StageTimings, by field name.
        cache_hits: per media item, whether its encoder cache hit.
    """

    text: str
    num_tokens: int
    finish_reason: str
    time_to_first_token_s: float
    decode_s: float
    total_s: float
    stage_ms: dict[str, float]
    cache_hits: tuple[bool, ...]
    prompt_tokens: int

    @property
    def tokens_per_second(self) -> float:
        """Decode speed: tokens after the first over the time they took."""
        if self.num_tokens < 2 or self.decode_s <= 0:
            return 0.0
        return (self.num_tokens - 1) / self.decode_s


def media_part(modality: str, path: str | Path, **options: Any) -> gateway_pb2.MediaPart:
    """A media item as raw file bytes (options: fps, num_frames for videos)."""
    data = Path(path).read_bytes()
    return gateway_pb2.MediaPart(
        modality=MODALITY_CODES[modality],
        data=data,
        options=encoder_pb2.MediaOptions(**{k: v for k, v in options.items() if v is not None}),
    )


def embeds_part(modality: str, path: str | Path) -> gateway_pb2.MediaPart:
    """Precomputed embeddings from a torch file: a [num_tokens, hidden] tensor, or a dict
    {"embeddings": tensor, "grid_thw": [t, h, w]} (Qwen2-VL needs the grid)."""
    import torch

    from protos.tensor_codec import tensor_to_proto

    loaded = torch.load(path, map_location="cpu", weights_only=True)
    tensor = loaded["embeddings"] if isinstance(loaded, dict) else loaded
    grid = loaded.get("grid_thw", ()) if isinstance(loaded, dict) else ()
    grid = [int(g) for g in (grid.tolist() if hasattr(grid, "tolist") else grid)]
    embeddings = gateway_pb2.MediaEmbeddings(embeddings=tensor_to_proto(tensor), grid_thw=grid)
    return gateway_pb2.MediaPart(modality=MODALITY_CODES[modality], embeddings=embeddings)


def chat_request(
    prompt: str,
    media: Sequence[gateway_pb2.MediaPart] = (),
    *,
    system: str | None = None,
    max_tokens: int = 64,
    temperature: float = 0.0,
    seed: int | None = None,
) -> gateway_pb2.ChatRequest:
    """One user turn: the media items first, then the text."""
    content = [gateway_pb2.ContentPart(media=part) for part in media]
    content.append(gateway_pb2.ContentPart(text=prompt))
    messages = [gateway_pb2.ChatMessage(role="user", content=content)]
    if system:
        system_text = [gateway_pb2.ContentPart(text=system)]
        messages.insert(0, gateway_pb2.ChatMessage(role="system", content=system_text))
    sampling = common_pb2.SamplingParams(max_tokens=max_tokens, temperature=temperature)
    if seed is not None:
        sampling.seed = seed
    return gateway_pb2.ChatRequest(messages=messages, sampling=sampling)


def stream_chat(
    stub: gateway_pb2_grpc.GatewayStub,
    request: gateway_pb2.ChatRequest,
    *,
    timeout: float | None = None,
    on_text: Callable[[str], None] | None = None,
    metadata: Sequence[tuple[str, str]] = (),
) -> ChatResult:
    """Streams Chat; calls `on_text` with every new piece of text. Raises grpc.RpcError.

    `metadata`: sent with the call, e.g. `protos.auth.bearer_metadata(key)`.
    """
    started = time.perf_counter()
    first = last = None
    pieces: list[str] = []
    num_tokens = 0
    final = gateway_pb2.GenerateResponse()
    for reply in stub.Chat(request, timeout=timeout, metadata=tuple(metadata)):
        now = time.perf_counter()
        if reply.token_ids:
            first = first if first is not None else now
            last = now
            num_tokens += len(reply.token_ids)
        if reply.text:
            pieces.append(reply.text)
            if on_text is not None:
                on_text(reply.text)
        if reply.finish_reason or reply.HasField("timings"):
            final = reply
    total = time.perf_counter() - started
    return _result(final, "".join(pieces), num_tokens, started, first, last, total)


def _result(
    final: gateway_pb2.GenerateResponse,
    text: str,
    num_tokens: int,
    started: float,
    first: float | None,
    last: float | None,
    total: float,
) -> ChatResult:
    reason = common_pb2.FinishReason.Name(final.finish_reason).removeprefix("FINISH_REASON_")
    return ChatResult(
        text=text,
        num_tokens=num_tokens,
        finish_reason=reason.lower(),
        time_to_first_token_s=(first - started) if first is not None else total,
        decode_s=(last - first) if first is not None and last is not None else 0.0,
        total_s=total,
        stage_ms={name: float(getattr(final.timings, name)) for name in STAGES},
        cache_hits=tuple(final.media_cache_hits),
        prompt_tokens=int(final.usage.prompt_tokens),
    )


def format_cache(cache_hits: Sequence[bool]) -> str:
    if not cache_hits:
        return "no media"
    if len(cache_hits) == 1:
        return "hit" if cache_hits[0] else "miss"
    return ", ".join("hit" if hit else "miss" for hit in cache_hits)


def format_stats(result: ChatResult) -> str:
    """One line: client TTFT, tokens/s, cache hits, the gateway's stage timings."""
    stages = result.stage_ms
    return (
        f"[TTFT {result.time_to_first_token_s * 1e3:.0f} ms | {result.num_tokens} tokens, "
        f"{result.tokens_per_second:.1f} tok/s | finish {result.finish_reason} | "
        f"encoder cache: {format_cache(result.cache_hits)} | "
        f"gateway stages: validate {stages['validate_ms']:.1f} ms, "
        f"encode {stages['encode_ms']:.1f} ms, prompt {stages['prompt_ms']:.1f} ms, "
        f"first token {stages['time_to_first_token_ms']:.1f} ms, "
        f"total {stages['total_ms']:.1f} ms]"
    )


# ------------------------------------------------------------------------------------ CLI


def add_chat_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "chat",
        help="send one prompt (with media) to a gateway and stream the answer",
        description="A gRPC client of meshserve.v1.Gateway/Chat: sends text plus images, "
        "videos, audio or precomputed embeddings, streams the answer, then prints the time "
        "to first token, tokens/s, the gateway's stage timings and encoder cache hits.",
    )
    add_chat_args(p)
    p.set_defaults(func=run_chat)


def add_chat_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="the user's text")
    parser.add_argument(
        "--gateway",
        default=DEFAULT_GATEWAY,
        help=f"gateway address HOST:PORT (default {DEFAULT_GATEWAY})",
    )
    for modality in MODALITY_CODES:
        parser.add_argument(
            f"--{modality}",
            action="append",
            default=[],
            metavar="FILE",
            help=f"{'a' if modality == 'video' else 'an'} {modality} file; repeat for more",
        )
        parser.add_argument(
            f"--{modality}-embeds",
            action="append",
            default=[],
            metavar="FILE.pt",
            help=f"precomputed {modality} embeddings (torch.save of a [tokens, hidden] "
            "tensor or of {'embeddings': ..., 'grid_thw': [t, h, w]})",
        )
    parser.add_argument("--fps", type=float, default=None, help="video: frames sampled a second")
    parser.add_argument("--num-frames", type=int, default=None, help="video: frames sampled")
    parser.add_argument("--system", default=None, help="a system message")
    parser.add_argument("--max-tokens", type=int, default=64, help="default 64")
    parser.add_argument("--temperature", type=float, default=0.0, help="default 0 (greedy)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=300.0, help="deadline in seconds")
    parser.add_argument(
        "--tls-ca",
        default=None,
        metavar="FILE.pem",
        help="speak TLS, trusting the CA certificate(s) in this PEM file",
    )
    parser.add_argument(
        "--api-key",
        default=None,
        help="the gateway's API key, sent as 'authorization: Bearer KEY' (default: "
        "$MESHSERVE_API_KEY)",
    )


def media_from_args(args: argparse.Namespace) -> list[gateway_pb2.MediaPart]:
    """Files first (images, videos, audio in that order), then embeddings."""
    parts = []
    for modality in MODALITY_CODES:
        for path in getattr(args, modality):
            parts.append(media_part(modality, path, fps=args.fps, num_frames=args.num_frames))
    for modality in MODALITY_CODES:
        for path in getattr(args, f"{modality}_embeds"):
            parts.append(embeds_part(modality, path))
    return parts


def run_chat(args: argparse.Namespace) -> int:
    from protos.auth import bearer_metadata, resolve_api_key
    from protos.channels import channel

    try:
        media = media_from_args(args)
        root_certificates = Path(args.tls_ca).read_bytes() if args.tls_ca else None
    except OSError as exc:
        print(f"meshserve chat: error: {exc}", file=sys.stderr)
        return 2
    api_key = resolve_api_key(args.api_key)
    request = chat_request(
        args.prompt,
        media,
        system=args.system,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        seed=args.seed,
    )
    with channel(args.gateway, root_certificates) as ch:
        try:
            result = stream_chat(
                gateway_pb2_grpc.GatewayStub(ch),
                request,
                timeout=args.timeout,
                on_text=_echo,
                metadata=bearer_metadata(api_key) if api_key else (),
            )
        except grpc.RpcError as exc:
            print(f"\nmeshserve chat: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    print(flush=True)
    print(format_stats(result), file=sys.stderr, flush=True)
    return 0


def _echo(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
