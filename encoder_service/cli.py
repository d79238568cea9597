"""`meshserve encoder`: serve one modality's encoder tower over gRPC."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor

from protos.flags import Flag, add_flags, add_server_args, flag, json_object, parse_bytes
from protos.model_source import REVISION_FLAG

logger = logging.getLogger("meshserve.encoder")
DEFAULT_PORT = 50071


# Every flag of `meshserve encoder` but --modality, --model and the server's own (--host,
# --port, --grace-seconds); `meshserve up` takes these and forwards them to each encoder.
ENCODER_FLAGS: tuple[Flag, ...] = (
    REVISION_FLAG,
    flag("--dtype", default="float32", choices=["float32", "float16", "bfloat16"]),
    flag("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)"),
    flag(
        "--cache-bytes",
        type=parse_bytes,
        default=256 << 20,
        help="embedding cache budget, e.g. 1GiB (default 256MiB; 0 disables)",
    ),
    flag(
        "--max-batch-size",
        type=int,
        default=None,
        help="items per tower call when concurrent requests are micro-batched (default: 4 on "
        "cpu, where one item fills the cores and smaller calls hand results on sooner; 32 on "
        "an accelerator)",
    ),
    flag(
        "--batch-wait-ms",
        type=float,
        default=3.0,
        help="how long a request waits for others to share its tower call",
    ),
    flag(
        "--max-item-bytes",
        type=parse_bytes,
        default=64 << 20,
        help="largest accepted media file (default 64MiB)",
    ),
    flag(
        "--max-pixels",
        type=int,
        default=8192 * 8192,
        help="largest image or video frame, width x height",
    ),
    flag("--max-frames", type=int, default=768, help="frames kept per video"),
    flag(
        "--max-video-seconds",
        type=float,
        default=3600.0,
        help="longest accepted video in seconds (default 3600)",
    ),
    flag(
        "--max-audio-seconds",
        type=float,
        default=600.0,
        help="longest accepted audio clip in seconds (default 600)",
    ),
    flag(
        "--mm-processor-kwargs",
        type=json_object,
        default=None,
        help="arguments of the HF processor on every item, e.g. '{\"do_pan_and_scan\": true}' "
        "(Gemma 3) or '{\"max_pixels\": 200704}' (Qwen2-VL); unknown keys are refused",
    ),
    flag(
        "--max-queued-items",
        type=int,
        default=1024,
        help="most media items in Encode calls at once; past it new calls get "
        "RESOURCE_EXHAUSTED (default 1024)",
    ),
    flag(
        "--decode-threads",
        type=int,
        default=None,
        help="threads that decode and preprocess media (default: CPU cores, at most 4)",
    ),
)


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
    add_flags(p, ENCODER_FLAGS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Busy-waiting OpenMP threads stall small tower calls when cores are shared (before torch loads).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    asyncio.run(_serve(args))
    return 0


async def _serve(args: argparse.Namespace) -> None:
    """grpc.aio; each Encode runs in a thread, where concurrent calls share tower calls."""
    from encoder_service.encoder import Encoder
    from encoder_service.media import MediaLimits
    from encoder_service.server import SERVICE_NAME, EncoderServicer
    from protos.meshserve.v1 import encoder_pb2_grpc
    from protos.server import ServerConfig, serve

    # NOTE: callers block in their thread while the batch runs: allow as many as a batch takes
    threads = ThreadPoolExecutor(max(64, args.max_batch_size or 0), thread_name_prefix="encode")
    asyncio.get_running_loop().set_default_executor(threads)
    limits = MediaLimits(
        max_bytes=args.max_item_bytes,
        max_pixels=args.max_pixels,
        max_frames=args.max_frames,
        max_video_seconds=args.max_video_seconds,
        max_audio_seconds=args.max_audio_seconds,
    )
    servicer = EncoderServicer(args.modality)

    async def load() -> str:
        encoder = await asyncio.to_thread(
            Encoder.from_pretrained,
            args.model,
            args.modality,
            dtype=args.dtype,
            device=args.device,
            cache_bytes=args.cache_bytes,
            limits=limits,
            max_batch_size=args.max_batch_size,
            max_wait_s=args.batch_wait_ms / 1e3,
            mm_processor_kwargs=args.mm_processor_kwargs,
            max_queued_items=args.max_queued_items,
            **({"num_decode_threads": args.decode_threads} if args.decode_threads else {}),
            revision=args.revision,
        )
        servicer.attach(encoder)
        info = encoder.info()
        return (
            f"modality={args.modality}  model={args.model}  arch={info.architecture}  "
            f"hidden={info.hidden_size}  cache={args.cache_bytes >> 20}MiB"
        )

    await serve(
        "encoder",
        [SERVICE_NAME],
        lambda server: encoder_pb2_grpc.add_EncoderServicer_to_server(servicer, server),
        ServerConfig.from_args(args),
        load=load,
        registry=servicer.registry,
    )
    servicer.close()
