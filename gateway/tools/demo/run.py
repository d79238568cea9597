"""`make demo`: `meshserve up` on small random-weight Qwen2-VL and Qwen2-Audio checkpoints,
then image, video, audio and repeated-image requests through the real gRPC API.

The checkpoints are built once, offline, by `gateway.tools.tiny_models` (real HF
architectures, tiny sizes, random weights) and cached under `$MESHSERVE_DEMO_CACHE` (default
`~/.cache/meshserve/demo`). Answers are noise; the plumbing, timings and cache are real.
"""

from __future__ import annotations

import contextlib
import io
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

READY_PREFIX = "meshserve up: gateway on "
START_TIMEOUT_S = 120.0
MAX_TOKENS = 24
IMAGE_SIZE = 56  # Qwen2-VL: a multiple of 28 (patch 14 x merge 2)
VIDEO_FRAMES = 4
AUDIO_RATE = 16_000


@dataclass(frozen=True, slots=True)
class DemoRequest:
    title: str
    prompt: str
    media: tuple[tuple[str, Path], ...]  # (modality, file)
    expect_cache_hit: bool = False


@dataclass(frozen=True, slots=True)
class DemoRun:
    """One `meshserve up` of one demo checkpoint and the requests sent to it."""

    name: str  # the tiny model builder's name
    label: str
    real_model: str  # what a user with the hub would pass instead
    requests: tuple[DemoRequest, ...]


@dataclass(frozen=True, slots=True)
class DemoMedia:
    image: Path
    video: Path
    audio: Path


# ------------------------------------------------------------------------------- assets


def demo_root() -> Path:
    from gateway.tools.tiny_models import BUILDER_VERSION

    base = os.environ.get("MESHSERVE_DEMO_CACHE")
    root = Path(base) if base else Path.home() / ".cache" / "meshserve" / "demo"
    return root / BUILDER_VERSION


def build_checkpoint(name: str) -> Path:
    """The demo checkpoint folder, built on first use (a few seconds, no network)."""
    from gateway.tools.tiny_models import build_model

    return build_model(name, demo_root())


def make_media(folder: Path) -> DemoMedia:
    """A 56x56 picture, a 4-frame 56x56 MP4 and a 1.5 s 16 kHz WAV, made locally."""
    folder.mkdir(parents=True, exist_ok=True)
    media = DemoMedia(folder / "picture.png", folder / "clip.mp4", folder / "tone.wav")
    if not media.image.exists():
        media.image.write_bytes(_png(_frame(0)))
    if not media.video.exists():
        media.video.write_bytes(_mp4([_frame(i) for i in range(VIDEO_FRAMES)]))
    if not media.audio.exists():
        media.audio.write_bytes(_wav(seconds=1.5))
    return media


def _frame(index: int) -> object:
    """[H, W, 3] uint8: a colour gradient with a bright square moving right."""
    import numpy as np

    frame = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 128, dtype=np.uint8)
    ramp = np.linspace(0, 255, IMAGE_SIZE).astype(np.uint8)
    frame[..., 0] = ramp[None, :]  # red grows to the right
    frame[..., 1] = ramp[:, None]  # green grows downwards
    left = 4 + 10 * index
    frame[20:36, left : left + 16] = (255, 220, 40)
    return frame


def _png(frame: object) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    return buffer.getvalue()


def _mp4(frames: list) -> bytes:
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=2)
        stream.height = stream.width = IMAGE_SIZE
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def _wav(seconds: float) -> bytes:
    import wave

    import numpy as np

    t = np.arange(int(seconds * AUDIO_RATE)) / AUDIO_RATE
    pcm = (0.4 * np.sin(2 * np.pi * 440.0 * t) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(AUDIO_RATE)
        handle.writeframes(pcm.tobytes())
    return buffer.getvalue()


def demo_runs(media: DemoMedia) -> tuple[DemoRun, ...]:
    vision = DemoRun(
        name="qwen2_vl",
        label="Qwen2-VL (one vision tower for images and videos)",
        real_model="Qwen/Qwen2-VL-2B-Instruct",
        requests=(
            DemoRequest("image + text", "What is in the picture?", (("image", media.image),)),
            DemoRequest("video + text", "What happens in this video?", (("video", media.video),)),
            DemoRequest(
                "the same image again",
                "Describe the picture in one sentence.",
                (("image", media.image),),
                expect_cache_hit=True,
            ),
        ),
    )
    audio = DemoRun(
        name="qwen2_audio",
        label="Qwen2-Audio (audio tower)",
        real_model="Qwen/Qwen2-Audio-7B-Instruct",
        requests=(DemoRequest("audio + text", "What do you hear?", (("audio", media.audio),)),),
    )
    return (vision, audio)


# ------------------------------------------------------------------------------- the stack


def say(text: str = "") -> None:
    print(text, flush=True)


@contextlib.contextmanager
def running_stack(model: Path, port: int) -> Iterator[str]:
    """`meshserve up` as a child process; yields the gateway address once it is ready."""
    argv = ["up", "--model", str(model), "--port", str(port), "--num-blocks", "256"]
    say(f"$ meshserve {' '.join(argv)}")
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.tools.cli", *argv, "--grace-seconds", "5"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_pump, args=(process, lines), daemon=True).start()
    try:
        yield _wait_ready(process, lines)
    finally:
        _stop(process)


def _pump(process: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        say(line.rstrip("\n"))
        lines.put(line)
    lines.put(None)


def _wait_ready(process: subprocess.Popen[str], lines: queue.Queue[str | None]) -> str:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1.0)
        except queue.Empty:
            continue
        if line is None:
            raise RuntimeError(f"meshserve up exited with status {process.wait()}")
        if line.startswith(READY_PREFIX):
            return line[len(READY_PREFIX) :].split()[0]
    raise RuntimeError(f"meshserve up was not ready within {START_TIMEOUT_S:.0f}s")


def _stop(process: subprocess.Popen[str]) -> None:
    """SIGTERM (up drains the gateway and stops its children), SIGKILL if it hangs."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


# -------------------------------------------------------------------------------- requests


def send(address: str, request: DemoRequest) -> bool:
    """Streams one chat request; prints the answer and timings; False when it failed."""
    import grpc

    from gateway.tools.chat import chat_request, format_stats, media_part, stream_chat
    from protos.channels import channel
    from protos.meshserve.v1 import gateway_pb2_grpc

    flags = " ".join(f"--{modality} {path.name}" for modality, path in request.media)
    say(f"\n-- {request.title}: meshserve chat {flags} {request.prompt!r}")
    media = [media_part(modality, path) for modality, path in request.media]
    message = chat_request(request.prompt, media, max_tokens=MAX_TOKENS)
    print("   answer: ", end="", flush=True)
    with channel(address) as ch:
        try:
            result = stream_chat(
                gateway_pb2_grpc.GatewayStub(ch), message, timeout=60, on_text=_echo
            )
        except grpc.RpcError as exc:
            say(f"\n   FAILED: {exc.code().name}: {exc.details()}")
            return False
    say(f"\n   {format_stats(result)}")
    if request.expect_cache_hit and not all(result.cache_hits):
        say("   FAILED: the repeated image should have hit the encoder cache")
        return False
    return True


def _echo(text: str) -> None:
    sys.stdout.write(text.replace("\n", " "))
    sys.stdout.flush()


def run_demo(run: DemoRun) -> bool:
    from gateway.tools.launcher import free_port

    say(f"\n== {run.label}: random weights, built locally ==")
    model = build_checkpoint(run.name)
    with running_stack(model, free_port()) as address:
        results = [send(address, request) for request in run.requests]
    return all(results)


def main() -> int:
    started = time.monotonic()
    media = make_media(demo_root() / "media")
    say("meshserve demo: every service is a separate process talking gRPC on 127.0.0.1.")
    say("The demo checkpoints have RANDOM weights: the answers are noise, the timings are real.")
    runs = demo_runs(media)
    try:
        ok = all([run_demo(run) for run in runs])
    except RuntimeError as exc:
        say(f"\ndemo FAILED: {exc}")
        return 1
    say(f"\ndemo {'finished' if ok else 'FAILED'} in {time.monotonic() - started:.1f}s")
    say("With the hub, the same with real weights:")
    for run in runs:
        say(f"  meshserve up --model {run.real_model}")
    say('  meshserve chat --image cat.jpg "What is in the picture?"')
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
