"""`meshserve encoder`: serve one modality's encoder tower over gRPC."""

from __future__ import annotations

import argparse
import logging
import os
import time

from protos.flags import add_server_args, parse_bytes

logger = logging.getLogger("meshserve.encoder")
DEFAULT_PORT = 50071


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "encoder",
        help="serve an image, video or audio encoder tower",
        description="Serve meshserve.v1.Encoder for one modality: decodes media with limits, "
        "runs the checkpoint's tower + projector, caches embeddings by content hash.",
    )
    p.add_argument("--modality", required=True, choices=["image", "video", "audio"])
    p.add_argument("--model", required=True, help="HF model id or local path")
    add_server_args(p, DEFAULT_PORT)
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    p.add_argument(
        "--cache-bytes",
        type=parse_bytes,
        default=256 << 20,
        help="embedding cache budget, e.g. 1GiB (default 256MiB; 0 disables)",
    )
    p.add_argument(
        "--max-batch-size",
        type=int,
        default=32,
        help="items per tower call when concurrent requests are micro-batched",
    )
    p.add_argument(
        "--batch-wait-ms",
        type=float,
        default=3.0,
        help="how long a request waits for others to share its tower call",
    )
    p.add_argument(
        "--max-item-bytes",
        type=parse_bytes,
        default=64 << 20,
        help="largest accepted media file (default 64MiB)",
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=8192 * 8192,
        help="largest image or video frame, width x height",
    )
    p.add_argument("--max-frames", type=int, default=768, help="frames kept per video")
    p.add_argument("--max-video-seconds", type=float, default=3600.0)
    p.add_argument("--max-audio-seconds", type=float, default=600.0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Busy-waiting OpenMP threads stall small tower calls when cores are shared (before torch loads).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from encoder_service.encoder import Encoder
    from encoder_service.media import MediaLimits
    from encoder_service.server import SERVICE_NAME, EncoderServicer
    from protos import serving
    from protos.meshserve.v1 import encoder_pb2_grpc

    limits = MediaLimits(
        max_bytes=args.max_item_bytes,
        max_pixels=args.max_pixels,
        max_frames=args.max_frames,
        max_video_seconds=args.max_video_seconds,
        max_audio_seconds=args.max_audio_seconds,
    )
    server = serving.make_server()
    servicer = EncoderServicer(args.modality)
    encoder_pb2_grpc.add_EncoderServicer_to_server(servicer, server)
    health = serving.add_health_and_reflection(server, [SERVICE_NAME])
    port = serving.bind(server, args.host, args.port)
    server.start()
    started = time.monotonic()
    encoder = Encoder.from_pretrained(
        args.model,
        args.modality,
        dtype=args.dtype,
        device=args.device,
        cache_bytes=args.cache_bytes,
        limits=limits,
        max_batch_size=args.max_batch_size,
        max_wait_s=args.batch_wait_ms / 1e3,
    )
    servicer.attach(encoder)
    serving.set_serving(health, [SERVICE_NAME], serving=True)
    info = encoder.info()
    logger.info(
        "encoder ready on %s:%d  modality=%s  model=%s  arch=%s  hidden=%d  cache=%dMiB  (%.1fs)",
        args.host,
        port,
        args.modality,
        args.model,
        info.architecture,
        info.hidden_size,
        args.cache_bytes >> 20,
        time.monotonic() - started,
    )
    serving.serve_until_signal(server, health, [SERVICE_NAME], args.grace_seconds)
    encoder.close()
    return 0
