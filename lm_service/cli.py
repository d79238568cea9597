"""`meshserve lm`: serve a language model over gRPC."""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

from lm_service.config import DTYPES, MODEL_IMPLS, EngineConfig
from protos.errors import InvalidRequest
from protos.flags import Flag, add_flags, add_server_args, flag, json_object, parse_bytes
from protos.model_source import REVISION_FLAG
from protos.tasks import LM_TASKS

logger = logging.getLogger("meshserve.lm")
DEFAULT_PORT = 50061


ENGINE_FLAGS: tuple[Flag, ...] = (
    flag(
        "--model-impl",
        choices=MODEL_IMPLS,
        default="auto",
        help="native implementation, the Transformers fallback, or auto (default)",
    ),
    flag("--dtype", choices=DTYPES, default="float32", help="weights and activations"),
    flag("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)"),
    flag("--block-size", type=int, default=16, help="tokens per KV block (default 16)"),
    flag(
        "--num-blocks",
        type=int,
        default=None,
        help="KV blocks; default: as many as --kv-cache-memory holds",
    ),
    flag(
        "--kv-cache-memory",
        type=parse_bytes,
        default=1 << 30,
        help="bytes for the KV cache when --num-blocks is unset, e.g. 4GiB (default 1GiB)",
    ),
    flag(
        "--max-num-batched-tokens",
        type=int,
        default=2048,
        help="token budget of one engine step (default 2048)",
    ),
    flag("--max-num-seqs", type=int, default=64, help="requests per step (default 64)"),
    flag(
        "--max-model-len",
        type=int,
        default=None,
        help="longest prompt + output; default: the model's context length",
    ),
    flag(
        "--no-enable-prefix-caching",
        dest="enable_prefix_caching",
        action="store_false",
        help="turn the prefix cache off",
    ),
    flag(
        "--trust-remote-code",
        action="store_true",
        help="allow the model repository's own Python code",
    ),
    flag(
        "--hf-overrides",
        type=json_object,
        default={},
        help="JSON merged into the HF config, e.g. '{\"max_position_embeddings\": 4096}'",
    ),
    REVISION_FLAG,
    flag(
        "--override-pooler-config",
        type=json_object,
        default=None,
        help="pooling tasks: JSON that replaces the model's pooler defaults, e.g. "
        '\'{"pooling_type": "MEAN", "normalize": false}\'',
    ),
    flag(
        "--max-queued-requests",
        type=int,
        default=1024,
        help="most requests waiting for a place in the batch; past it new ones get "
        "RESOURCE_EXHAUSTED (default 1024)",
    ),
)
TASK_FLAG = flag(
    "--task",
    choices=[task.value for task in LM_TASKS],
    default="generate",
    help="generate (default), or a pooling task: embed, classify, score (cross-encoder "
    "pairs) or reward; a pooling LM answers Pool instead of Generate",
)
# Every flag of `meshserve lm` but --model and the server's own (--host, --port,
# --grace-seconds); `meshserve up` takes these and forwards them to each LM replica.
LM_FLAGS: tuple[Flag, ...] = (TASK_FLAG, *ENGINE_FLAGS)


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    """Engine flags, shared by `lm`, `up --embedded` and the offline API's CLI users."""
    g = parser.add_argument_group("engine")
    g.add_argument("--model", required=True, help="HF model id or local path")
    add_flags(g, ENGINE_FLAGS)


def engine_config_from_args(args: argparse.Namespace) -> EngineConfig:
    return EngineConfig(
        model=args.model,
        model_impl=args.model_impl,
        dtype=args.dtype,
        device=args.device,
        block_size=args.block_size,
        num_blocks=args.num_blocks,
        kv_cache_memory=args.kv_cache_memory,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_num_seqs=args.max_num_seqs,
        max_model_len=args.max_model_len,
        enable_prefix_caching=args.enable_prefix_caching,
        trust_remote_code=args.trust_remote_code,
        hf_overrides=args.hf_overrides,
        revision=args.revision,
        max_queued_requests=args.max_queued_requests,
    )


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "lm",
        help="serve the language model (paged KV cache, continuous batching)",
        description="Serve the language backbone over gRPC (meshserve.v1.LanguageModel).",
    )
    add_server_args(p, DEFAULT_PORT)
    add_flags(p, (TASK_FLAG,))
    add_engine_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = engine_config_from_args(args)
    if args.task == "generate" and args.override_pooler_config:
        raise InvalidRequest(
            "--override-pooler-config applies to pooling tasks (--task embed, ...)"
        )
    asyncio.run(_serve(args, config))
    return 0


async def _serve(args: argparse.Namespace, config: EngineConfig) -> None:
    """grpc.aio: one event loop serves every stream, so health answers under any load."""
    from lm_service.engine_loop import THREAD_NAME
    from lm_service.server import SERVICE_NAME, LanguageModelServicer
    from protos.meshserve.v1 import lm_pb2_grpc
    from protos.sched import keep_thread_policy
    from protos.server import ServerConfig, serve

    servicer = LanguageModelServicer(args.model)
    helpers: list[asyncio.Task[None]] = []

    async def load() -> str:
        if args.task == "generate":
            loop = await asyncio.to_thread(_load_engine, config)
            servicer.attach(loop)
            # NOTE: only once the engine loop runs: it starts from the loading worker and
            # would inherit that worker's policy; it and its torch workers stay normal
            helpers.append(asyncio.create_task(keep_thread_policy(keep=(THREAD_NAME,))))
            return f"model={args.model}  {_engine_description(loop.engine, config)}"
        model = await asyncio.to_thread(_load_pooling, config, args)
        servicer.attach_pooling(model)
        return (
            f"model={args.model}  arch={model.architecture}  task={args.task}  "
            f"pooler={model.pooler_config}"
        )

    await serve(
        "lm",
        [SERVICE_NAME],
        lambda server: lm_pb2_grpc.add_LanguageModelServicer_to_server(servicer, server),
        ServerConfig.from_args(args),
        load=load,
        registry=servicer.registry,
    )
    for task in helpers:
        task.cancel()
    servicer.close()


def _load_engine(config: EngineConfig) -> Any:
    from lm_service.engine.engine import Engine
    from lm_service.engine_loop import EngineLoop

    engine = Engine(config)
    engine.warm_up()
    return EngineLoop(engine).start()


def _engine_description(engine: Any, config: EngineConfig) -> str:
    return (
        f"arch={engine.loaded.architecture}  impl={engine.loaded.impl_name}  "
        f"kv_blocks={engine.num_blocks} x {config.block_size} tokens"
    )


def _load_pooling(config: EngineConfig, args: argparse.Namespace) -> Any:
    """`--task embed|classify|score|reward`: a dense pooling model, no KV cache."""
    from lm_service.pooling import PoolingConfig, PoolingModel
    from protos.lm_messages import PoolingInput

    pooling_config = PoolingConfig.from_engine_config(
        config, args.task, args.override_pooler_config
    )
    model = PoolingModel.from_config(pooling_config)
    model.run([PoolingInput((0,))])  # warm-up
    return model
