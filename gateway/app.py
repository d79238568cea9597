"""Assembles a gateway: the served model's rules, backends (local or remote), the server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.api.http.options import HttpOptions
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
from protos.server import Register, Server, ServerConfig
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
    _check_transcription_model(task, config, model)
    spec = spec_for(architecture, task, config)
    limits = validate_limits(spec, limit_mm_per_prompt, architecture, task)
    return ServedModel(
        model=model,
        architecture=architecture,
        task=task,
        spec=spec,
        limits=limits,
        revision=revision,
    )


def _check_transcription_model(task: Task, config: Any, model: str) -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES

    if (
        task == Task.TRANSCRIPTION
        and config.model_type not in MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES
    ):
        raise Unsupported(
            f"task transcription needs a speech-to-text model (e.g. Whisper); {model} is a "
            f"{config.model_type!r} model"
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
    stream_interval: int = 1,
) -> Orchestrator:
    prompts = PromptBuilder.from_pretrained(
        served.model, trust_remote_code=trust_remote_code, revision=served.revision
    )
    media_store = MediaStore(media_store_bytes)
    return Orchestrator(served, prompts, encoders, lm, media_store, stream_interval)


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
    task, the same encoders (media inputs where its rule allows) and a pooling model instead of
    the engine."""
    from lm_service.engine.engine import Engine
    from lm_service.engine_loop import EngineLoop

    encoders = local_encoders(
        served, encoder_dtype, encoder_device, cache_bytes, mm_processor_kwargs
    )
    if served.task in POOLING_TASKS:
        return encoders, local_pooling_backend(engine_config, served.task, override_pooler_config)
    loop = EngineLoop(Engine(engine_config)).start()
    return encoders, LocalLMBackend(loop)


def local_encoders(
    served: ServedModel,
    dtype: str = "float32",
    device: str = "cpu",
    cache_bytes: int = 256 << 20,
    mm_processor_kwargs: Mapping[str, Any] | None = None,
) -> LocalEncoderBackend:
    """One in-process Encoder per media modality the served model takes (none: text only)."""
    from encoder_service import Encoder

    encoders: dict[str, Encoder] = {}
    for modality in media_modalities(served):
        shared = next(iter(encoders.values())).tower if encoders else None  # e.g. Qwen2-VL I + V
        encoders[modality] = Encoder.from_pretrained(
            served.model,
            modality=modality,
            dtype=dtype,
            device=device,
            cache_bytes=cache_bytes,
            tower=shared,
            mm_processor_kwargs=mm_processor_kwargs,
            revision=served.revision,
        )
    return LocalEncoderBackend(encoders)


def local_pooling_backend(
    engine_config: Any, task: str, override_pooler_config: Any = None
) -> LocalLMBackend:
    from lm_service.pooling import PoolingConfig, PoolingModel

    config = PoolingConfig.from_engine_config(engine_config, task, override_pooler_config)
    return LocalLMBackend(pooling=PoolingModel.from_config(config))


def check_lm_task(served: ServedModel, info: Any) -> None:
    """Refuses, at start-up, an LM that runs another task than the gateway serves."""
    if served.task in info.tasks:
        return
    raise Unsupported(
        f"the LM serves {served.model} for {', '.join(map(repr, info.tasks))}, but this gateway "
        f"was started with --task {served.task}; start both with the same --task"
    )


def remote_backends(
    lm_targets: Sequence[str],
    encoder_targets: Mapping[str, Sequence[str]],
    stall_timeout: float = 30.0,
) -> tuple[EncoderBackend, LMBackend]:
    """gRPC backends; a backend silent past `stall_timeout` seconds fails the request."""
    from gateway.backends.remote import RemoteEncoderBackend, RemoteLMBackend

    encoders = RemoteEncoderBackend(encoder_targets, stall_timeout)
    return encoders, RemoteLMBackend(lm_targets, stall_timeout)


async def serve(
    orchestrator: Orchestrator,
    host: str,
    port: int,
    grace_seconds: float = 30.0,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    http: HttpOptions | None = None,
    *,
    metrics_port: int | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    api_key: str | None = None,
) -> None:
    """Runs the Gateway gRPC server (and, with `http`, the OpenAI HTTP front on its own port
    in this same event loop, over this same orchestrator) until SIGTERM/SIGINT (or `stop`),
    then drains both.

    NOT_SERVING until the backends are started and the LM has described itself; after that,
    NOT_SERVING whenever a backend it needs has no healthy replica (`follow_backends`).
    /health says what gRPC health says.
    With
    `api_key`, every RPC but health and reflection needs `authorization: Bearer <api_key>`;
    with `tls_cert` and `tls_key` (PEM files) the port speaks TLS only.
    """
    from prometheus_client import CollectorRegistry

    from gateway.api.grpc_servicer import SERVICE_NAME, GatewayServicer
    from protos.auth import ApiKeyInterceptor
    from protos.meshserve.v1 import gateway_pb2_grpc
    from protos.metrics import StreamMetrics

    registry = CollectorRegistry()
    servicer = GatewayServicer(orchestrator, metrics=StreamMetrics(registry))
    grpc_server = GatewayServer(
        [SERVICE_NAME],
        lambda grpc_server: gateway_pb2_grpc.add_GatewayServicer_to_server(servicer, grpc_server),
        ServerConfig(
            host, port, grace_seconds, metrics_port=metrics_port, tls_cert=tls_cert, tls_key=tls_key
        ),
        interceptors=(ApiKeyInterceptor(api_key),) if api_key else (),
        registry=registry,
    )
    if http is not None:
        grpc_server.add_http(orchestrator, http)

    async def load() -> str:
        for backend in (orchestrator.encoders, orchestrator.lm):
            if hasattr(backend, "start"):
                backend.start()
        info = await orchestrator.lm.info()
        check_lm_task(orchestrator.served, info)
        servicer.model_impl, servicer.max_model_len = info.model_impl, info.max_model_len
        served = orchestrator.served
        limits = {k: v for k, v in served.limits.items() if v}
        line = f"model={served.model}  arch={served.architecture}  spec={served.spec}  {limits=}"
        return line + grpc_server.http_ready(info.max_model_len)

    is_ready = asyncio.Event()
    follower = asyncio.create_task(_follow_backends(grpc_server, orchestrator, is_ready, ready))
    try:
        await grpc_server.run(load, is_ready, stop)
    finally:
        follower.cancel()
        await orchestrator.encoders.close()
        await orchestrator.lm.close()


async def _follow_backends(
    grpc_server: Any, orchestrator: Orchestrator, is_ready: asyncio.Event, ready: Any
) -> None:
    """Once the server is SERVING, its health follows the backends' until cancelled."""
    from gateway.backends.readiness import follow_backends

    await is_ready.wait()
    if ready is not None:
        ready.set()
    await follow_backends(
        grpc_server.set_serving, grpc_server.health.set, orchestrator.lm, orchestrator.encoders
    )


async def is_serving(health: Any) -> bool:
    """Whether a grpc.aio HealthServicer reports the whole server ("") SERVING."""
    from grpc_health.v1 import health_pb2

    request = health_pb2.HealthCheckRequest(service="")
    response = await health.Check(request, None)  # "" always exists: no context needed
    return response.status == health_pb2.HealthCheckResponse.SERVING


class GatewayServer(Server):
    """The gateway's gRPC server, and the OpenAI HTTP front beside it: they bind together,
    /health reads this server's health, and both stop accepting when the drain ends."""

    def __init__(
        self,
        service_names: Sequence[str],
        register: Register,
        config: ServerConfig,
        **options: Any,  # interceptors, registry: as Server takes them
    ) -> None:
        super().__init__("gateway", service_names, register, config, **options)
        self.http: Any = None  # gateway.api.http.server.HttpServer
        self._http_app: Any = None

    def add_http(self, orchestrator: Orchestrator, options: HttpOptions) -> None:
        from gateway.api.http.app import build_app
        from gateway.api.http.server import HttpServer

        self._http_app = build_app(
            orchestrator, options, lambda: is_serving(self.health), self.registry
        )
        self.http = HttpServer(self._http_app, self.config.host, options.port)

    def http_ready(self, max_model_len: int) -> str:
        """The log line's HTTP part, once the LM has said its max_model_len."""
        if self.http is None:
            return ""
        self._http_app.state.max_model_len = max_model_len
        return f"  http={self.http.url}/v1"

    async def start(self) -> int:
        port = await super().start()
        if self.http is not None:
            try:
                await self.http.start()
            except BaseException:
                await super().stop()
                raise
        return port

    async def stop(self, grace: float = 0.0) -> None:
        jobs = [super().stop(grace)]
        if self.http is not None:
            jobs.append(self.http.stop(grace))
        await asyncio.gather(*jobs)
