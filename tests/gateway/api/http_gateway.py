"""A whole gateway in this process for the HTTP tests: local backends (engine loop, encoders,
pooling model), gRPC and the OpenAI HTTP front served by `gateway.app.serve` in
a background event loop, exactly as `meshserve gateway --http-port` composes them. The tests
talk to it with the official `openai` client, httpx and a gRPC stub."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import dataclasses
import io
import threading
import wave
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import openai

from gateway.api.http.options import HttpOptions
from gateway.app import build_orchestrator, local_backends, serve, served_model
from gateway.pipeline.orchestrator import Orchestrator
from gateway.tools.tiny_models import tiny_model_path
from lm_service.config import EngineConfig
from protos.ports import free_port

ENGINE = {"block_size": 4, "num_blocks": 256, "max_num_seqs": 8}
START_SECONDS = 120.0


@dataclass
class RunningGateway:
    orchestrator: Orchestrator
    grpc_address: str
    http_url: str  # http://127.0.0.1:PORT
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    stop: asyncio.Event
    served: concurrent.futures.Future[None]
    clients: list[openai.OpenAI] = field(default_factory=list)

    @property
    def model(self) -> str:
        return self.orchestrator.served.model

    def client(self, api_key: str = "none", **options: Any) -> openai.OpenAI:
        client = openai.OpenAI(
            base_url=f"{self.http_url}/v1", api_key=api_key, max_retries=0, timeout=120, **options
        )
        self.clients.append(client)
        return client

    def lm_load(self) -> tuple[int, int, int]:
        """(running, waiting, free KV blocks) of the in-process engine."""

        def load(engine: Any) -> tuple[int, int, int]:
            scheduler = engine.scheduler
            free = scheduler.block_pool.num_free_blocks
            return scheduler.num_running, scheduler.num_waiting, free

        return self.orchestrator.lm.loop.call(load)

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.loop.call_soon_threadsafe(self.stop.set)
        self.served.result(timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


def start_gateway(
    name: str,
    *,
    task: str = "generate",
    limits: str | Mapping[str, int] | None = None,
    http: HttpOptions | None = None,
    engine: Mapping[str, Any] = ENGINE,
) -> RunningGateway:
    """Loads tiny model `name` with local backends and serves gRPC + HTTP on free ports."""
    path = str(tiny_model_path(name))
    served = served_model(path, task, limits)
    encoders, lm = local_backends(EngineConfig(model=path, **engine), served)
    return serve_in_thread(build_orchestrator(served, encoders, lm), http)


def serve_in_thread(orchestrator: Orchestrator, http: HttpOptions | None = None) -> RunningGateway:
    """`gateway.app.serve(orchestrator, ..., http=...)` in a background event loop."""
    options = dataclasses.replace(http or HttpOptions(), port=free_port())
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="http-test-gateway", daemon=True)
    thread.start()
    grpc_port = free_port()
    ready, stop = asyncio.Event(), asyncio.Event()
    work = serve(orchestrator, "127.0.0.1", grpc_port, 1.0, ready=ready, stop=stop, http=options)
    served = asyncio.run_coroutine_threadsafe(work, loop)
    waiter = asyncio.run_coroutine_threadsafe(ready.wait(), loop)
    concurrent.futures.wait([served, waiter], START_SECONDS, "FIRST_COMPLETED")
    if served.done():
        served.result()  # raises why it could not start
    waiter.result(timeout=0)
    http_url = f"http://127.0.0.1:{options.port}"
    return RunningGateway(
        orchestrator, f"127.0.0.1:{grpc_port}", http_url, loop, thread, stop, served
    )


# ------------------------------------------------------------------------------ media


def data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def mp4(frames: Any, fps: int = 4) -> bytes:
    """frames [T, H, W, 3] uint8 -> an MPEG-4 file."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def wav(samples: Any, rate: int = 16000) -> bytes:
    """float samples in [-1, 1] -> a 16-bit mono WAV file."""
    import numpy as np

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes((np.clip(samples, -1, 1) * 32767).astype(np.int16).tobytes())
    return buffer.getvalue()
