"""Assembles a gateway: the served model's rules, backends (local or remote), the server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.backends.base import EncoderBackend, LMBackend
from gateway.backends.local import LocalEncoderBackend, LocalLMBackend
from gateway.pipeline.media_store import MediaStore
from gateway.pipeline.orchestrator import Orchestrator, ServedModel
from gateway.prompt.builder import PromptBuilder
from gateway.rules.limits import validate_limits
from gateway.rules.spec_table import spec_for
from protos.errors import Unsupported
from protos.modality import MEDIA_MODALITIES
from protos.model_source import CONFIG_PATTERNS, resolve_model
from protos.tasks import POOLING_TASKS, Task

logger = logging.getLogger("meshserve.gateway")


def served_model(
    model: str,
    task: Task | str = Task.GENERATE,
    limit_mm_per_prompt: Any = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> ServedModel:
    """The model's architecture, its modality rule for `task` and the effective item limits.

    Raises InvalidRequest at start-up for limits the rule forbids.
    """
    from transformers import AutoConfig

    task = Task.parse(task)
    path = resolve_model(model, revision=revision, allow_patterns=CONFIG_PATTERNS)
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    architecture = (getattr(config, "architectures", None) or [type(config).__name__])[0]
    spec = spec_for(architecture, task)
    limits = validate_limits(spec, limit_mm_per_prompt, architecture, task)
    return ServedModel(
        model=model,
        architecture=architecture,
        task=task,
        spec=spec,
        limits=limits,
        revision=revision,
    )


def media_modalities(served: ServedModel) -> list[str]:
    """The media modalities the served model accepts (those with a limit above 0)."""
    return [m.value for m in MEDIA_MODALITIES if served.limits.get(m, 0) > 0]


def build_orchestrator(
    served: ServedModel,
    encoders: EncoderBackend,
    lm: LMBackend,
    *,
    trust_remote_code: bool = False,
    media_store_bytes: int = 1 << 30,
) -> Orchestrator:
    prompts = PromptBuilder.from_pretrained(
        served.model, trust_remote_code=trust_remote_code, revision=served.revision
    )
    return Orchestrator(served, prompts, encoders, lm, MediaStore(media_store_bytes))


def local_backends(
    engine_config: Any,
    served: ServedModel,
    *,
    encoder_dtype: str = "float32",
    encoder_device: str = "cpu",
    cache_bytes: int = 256 << 20,
    override_pooler_config: Any = None,
    mm_processor_kwargs: Mapping[str, Any] | None = None,
) -> tuple[LocalEncoderBackend, LMBackend]:
    """In-process encoders (one per modality the model takes) and engine loop; for a pooling
    task, no encoders (text only for now) and a pooling model instead of the engine."""
    from encoder_service import Encoder
    from lm_service.engine.engine import Engine
    from lm_service.engine_loop import EngineLoop

    if served.task == "transcription":
        return transcription_backends(
            served, engine_config.dtype, engine_config.device, engine_config.trust_remote_code
        )
    if served.task in POOLING_TASKS:
        return LocalEncoderBackend({}), local_pooling_backend(
            engine_config, served.task, override_pooler_config
        )

    encoders: dict[str, Encoder] = {}
    for modality in media_modalities(served):
        shared = next(iter(encoders.values())).tower if encoders else None  # e.g. Qwen2-VL I + V
        encoders[modality] = Encoder.from_pretrained(
            served.model,
            modality=modality,
            dtype=encoder_dtype,
            device=encoder_device,
            cache_bytes=cache_bytes,
            tower=shared,
            mm_processor_kwargs=mm_processor_kwargs,
            revision=served.revision,
        )
    loop = EngineLoop(Engine(engine_config)).start()
    return LocalEncoderBackend(encoders), LocalLMBackend(loop)


def local_pooling_backend(
    engine_config: Any, task: str, override_pooler_config: Any = None
) -> LocalLMBackend:
    from lm_service.pooling import PoolingConfig, PoolingModel

    config = PoolingConfig.from_engine_config(engine_config, task, override_pooler_config)
    return LocalLMBackend(pooling=PoolingModel.from_config(config))


def transcription_backends(
    served: ServedModel,
    dtype: str = "float32",
    device: str = "cpu",
    trust_remote_code: bool = False,
) -> tuple[LocalEncoderBackend, Any]:
    """No encoders and, in the LM's place, a Transcriber running the whole model in process
    (the paged engine does not run encoder-decoder models)."""
    from gateway.backends.transcriber import Transcriber

    model = Transcriber.from_pretrained(
        served.model, dtype, device, trust_remote_code, revision=served.revision
    )
    return LocalEncoderBackend({}), model


def check_lm_task(served: ServedModel, info: Any) -> None:
    """Refuses, at start-up, an LM that runs another task than the gateway serves."""
    if served.task == "transcription" or served.task in info.tasks:
        return
    raise Unsupported(
        f"the LM serves {served.model} for {', '.join(map(repr, info.tasks))}, but this gateway "
        f"was started with --task {served.task}; start both with the same --task"
    )


def remote_backends(
    lm_targets: Sequence[str], encoder_targets: Mapping[str, Sequence[str]]
) -> tuple[EncoderBackend, LMBackend]:
    from gateway.backends.remote import RemoteEncoderBackend, RemoteLMBackend

    return RemoteEncoderBackend(encoder_targets), RemoteLMBackend(lm_targets)


async def serve(
    orchestrator: Orchestrator,
    host: str,
    port: int,
    grace_seconds: float = 30.0,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Runs the Gateway gRPC server until SIGTERM/SIGINT (or `stop`), then drains.

    NOT_SERVING until the backends are started and the LM has described itself.
    """
    from gateway.api.grpc_servicer import SERVICE_NAME, GatewayServicer
    from protos import server
    from protos.meshserve.v1 import gateway_pb2_grpc

    servicer = GatewayServicer(orchestrator)

    async def load() -> str:
        for backend in (orchestrator.encoders, orchestrator.lm):
            if hasattr(backend, "start"):
                backend.start()
        info = await orchestrator.lm.info()
        check_lm_task(orchestrator.served, info)
        servicer.model_impl, servicer.max_model_len = info.model_impl, info.max_model_len
        served = orchestrator.served
        limits = {k: v for k, v in served.limits.items() if v}
        return f"model={served.model}  arch={served.architecture}  spec={served.spec}  {limits=}"

    await server.serve(
        "gateway",
        [SERVICE_NAME],
        lambda grpc_server: gateway_pb2_grpc.add_GatewayServicer_to_server(servicer, grpc_server),
        server.ServerConfig(host, port, grace_seconds),
        load=load,
        ready=ready,
        stop=stop,
    )
    await orchestrator.encoders.close()
    await orchestrator.lm.close()
