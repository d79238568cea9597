"""`meshserve gateway`: the public gRPC API (and, with --http-port, the OpenAI-compatible HTTP
API) in front of encoder and LM services."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from gateway.api.http.options import HttpOptions, parse_domains
from protos.auth import API_KEY_ENV, resolve_api_key
from protos.flags import Flag, add_flags, add_server_args, flag, parse_bytes
from protos.model_source import REVISION_FLAG
from protos.sched import AUTO, keep_thread_policy, parse_pin_cpu
from protos.tasks import Task

DEFAULT_PORT = 50051


def parse_encoder_targets(values: list[str]) -> dict[str, list[str]]:
    """["image=h:1,h:2", "audio=h:3"] -> {"image": ["h:1", "h:2"], "audio": ["h:3"]}."""
    targets: dict[str, list[str]] = {}
    for value in values:
        modality, sep, addrs = value.partition("=")
        if not sep or modality not in ("image", "video", "audio") or not addrs:
            raise argparse.ArgumentTypeError(
                f"--encoder takes MODALITY=HOST:PORT[,HOST:PORT...] with MODALITY image, video "
                f"or audio; got {value!r}"
            )
        targets.setdefault(modality, []).extend(a for a in addrs.split(",") if a)
    return targets


TRUST_REMOTE_CODE_FLAG = flag("--trust-remote-code", action="store_true")
SERVED_MODEL_FLAGS: tuple[Flag, ...] = (
    flag(
        "--task",
        default=Task.GENERATE.value,
        choices=[task.value for task in Task],
        help="the task to serve (default generate)",
    ),
    flag(
        "--limit-mm-per-prompt",
        default=None,
        help="items per prompt, e.g. image=4,video=1 (default 1 of each modality)",
    ),
    flag(
        "--media-store-bytes",
        type=parse_bytes,
        default=1 << 30,
        help="memory for PutMedia handles (default 1GiB)",
    ),
)


def positive_seconds(text: str) -> float:
    """argparse type: a duration in seconds above 0."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"expected seconds above 0, got {text!r}")
    return seconds


def positive_int(text: str) -> int:
    """argparse type: a whole number above 0."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number above 0, got {text!r}")
    return value


BACKEND_FLAGS: tuple[Flag, ...] = (
    flag(
        "--stall-timeout",
        type=positive_seconds,
        default=30.0,
        help="seconds a backend may stay silent (an LM stream between tokens, an Encode or "
        "Pool call in all) before the request fails with UNAVAILABLE (default 30)",
    ),
    flag(
        "--stream-interval",
        type=positive_int,
        default=1,
        help="tokens per streamed message (default 1: every token as it comes; more saves "
        "the gateway CPU per token, as SGLang's --stream-interval)",
    ),
)
PROCESS_FLAGS: tuple[Flag, ...] = (
    flag(
        "--pin-cpu",
        type=parse_pin_cpu,
        default=AUTO,
        metavar="{auto,off,CPU}",
        help="keep every thread of the gateway on one CPU: its Python is one event loop, and "
        "gRPC's helper threads, on the loop's CPU, hand it their completions in batches rather "
        "than waking another CPU for each message (default auto: the CPU the loop runs on a "
        "second after start; off: let the OS place them)",
    ),
)
HTTP_FLAGS: tuple[Flag, ...] = (
    flag(
        "--http-port",
        type=int,
        default=None,
        help="also serve the OpenAI-compatible HTTP API on this port (0 = any free; default off)",
    ),
    flag(
        "--served-model-name",
        default=None,
        help="the model id HTTP clients name (default: the --model value)",
    ),
    flag(
        "--allowed-media-domains",
        default=None,
        metavar="HOST[,HOST...]",
        help="hosts whose http(s) image/video/audio URLs the HTTP API may fetch "
        "(default: none; data: URLs only)",
    ),
)
SECURITY_FLAGS: tuple[Flag, ...] = (
    flag(
        "--api-key",
        default=None,
        help="require the metadata 'authorization: Bearer KEY' on every RPC but health and "
        "reflection, and 'Authorization: Bearer KEY' on the HTTP API but /health "
        f" (default: ${API_KEY_ENV}; unset: no key). Prefer the environment "
        "variable or --api-key-file: a flag shows in process lists",
    ),
    flag("--api-key-file", default=None, help="read the API key from this file (a secret)"),
    flag("--tls-cert", default=None, help="PEM certificate chain: the port speaks TLS only"),
    flag("--tls-key", default=None, help="PEM private key of --tls-cert"),
)
# Every flag of `meshserve gateway` but --model, --lm, --encoder and the server's own (--host,
# --port, --grace-seconds, --metrics-port); `meshserve up` takes these and forwards them to the
# gateway.
GATEWAY_FLAGS: tuple[Flag, ...] = (
    TRUST_REMOTE_CODE_FLAG,
    REVISION_FLAG,
    *SERVED_MODEL_FLAGS,
    *BACKEND_FLAGS,
    *PROCESS_FLAGS,
    *HTTP_FLAGS,
    *SECURITY_FLAGS,
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "gateway",
        help="serve the public gRPC API in front of encoder and LM services",
        description="Serve meshserve.v1.Gateway (and, with --http-port, the OpenAI-compatible "
        "HTTP API): checks modality rules and limits, runs the encoders and the LM, streams text "
        "back.",
    )
    p.add_argument("--model", required=True, help="HF model id or local path (tokenizer, config)")
    p.add_argument(
        "--lm",
        required=True,
        help="LM service address(es): HOST:PORT[,HOST:PORT...] or dns:///NAME:PORT",
    )
    p.add_argument(
        "--encoder",
        action="append",
        default=[],
        metavar="MODALITY=ADDR[,ADDR]",
        help="encoder service address(es) per modality, e.g. image=127.0.0.1:50071; "
        "repeat for each modality",
    )
    add_server_args(p, DEFAULT_PORT)
    add_flags(p, (TRUST_REMOTE_CODE_FLAG, REVISION_FLAG))
    add_flags(p.add_argument_group("served model"), SERVED_MODEL_FLAGS)
    add_flags(p.add_argument_group("backends"), BACKEND_FLAGS)
    add_flags(p.add_argument_group("threads"), PROCESS_FLAGS)
    add_flags(p.add_argument_group("OpenAI HTTP API"), HTTP_FLAGS)
    add_flags(p.add_argument_group("security of the public port"), SECURITY_FLAGS)
    p.set_defaults(func=run_gateway)


def run_gateway(args: argparse.Namespace) -> int:
    from gateway.app import (
        build_orchestrator,
        media_modalities,
        remote_backends,
        serve,
        served_model,
    )

    try:
        options = server_options(args)
    except (OSError, ValueError) as exc:
        print(f"meshserve gateway: error: {exc}", file=sys.stderr)
        return 2
    served = served_model(
        args.model,
        args.task,
        args.limit_mm_per_prompt,
        args.trust_remote_code,
        args.revision,
    )
    targets = parse_encoder_targets(args.encoder)
    missing = [m for m in media_modalities(served) if m not in targets]
    if missing:
        print(
            f"meshserve gateway: note: no --encoder for {', '.join(missing)}; "
            f"prompts with {missing[0]} will be refused"
        )

    async def main() -> None:
        helpers = asyncio.create_task(keep_thread_policy(cpu=args.pin_cpu))
        # grpc.aio channels belong to the event loop they are made in: make them inside it.
        lm_targets = [a for a in args.lm.split(",") if a]
        encoders, lm = remote_backends(lm_targets, targets, args.stall_timeout)
        orchestrator = build_orchestrator(
            served,
            encoders,
            lm,
            trust_remote_code=args.trust_remote_code,
            media_store_bytes=args.media_store_bytes,
            stream_interval=args.stream_interval,
        )
        try:
            await serve(
                orchestrator, args.host, args.port, args.grace_seconds, http=http, **options
            )
        finally:
            helpers.cancel()

    http = http_options(args)
    asyncio.run(main())
    return 0


def http_options(args: argparse.Namespace) -> HttpOptions | None:
    """The HTTP front's settings from the flags; None without --http-port."""
    if args.http_port is None:
        return None
    return HttpOptions(
        port=args.http_port,
        api_key=resolve_api_key(args.api_key, args.api_key_file),
        served_model_name=args.served_model_name,
        allowed_media_domains=parse_domains(args.allowed_media_domains),
    )


def server_options(args: argparse.Namespace) -> dict[str, Any]:
    """`gateway.app.serve`'s metrics and security keywords from the flags; raises OSError or
    ValueError, with a sentence, for a bad key file or TLS file (before any model loads)."""
    from protos.server import ServerConfig

    metrics_port = getattr(args, "metrics_port", None)
    config = ServerConfig(metrics_port=metrics_port, tls_cert=args.tls_cert, tls_key=args.tls_key)
    config.credentials()
    return {
        "metrics_port": metrics_port,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "api_key": resolve_api_key(args.api_key, args.api_key_file),
    }
