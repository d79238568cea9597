"""`make demo`: trains small Qwen2-VL and Qwen2-Audio checkpoints on synthetic data (once,
cached), then runs `meshserve up` on each and asks image, video, text and audio questions
through the real gRPC API; exits non-zero when an answer is wrong.

The checkpoints are real HF architectures at tiny sizes, trained for a few hundred AdamW steps
on pictures of coloured shapes, moving shapes, tones and small sums
(`gateway.tools.demo.models`), so the answers mean something: a misplaced embedding or a
swapped item gives a wrong answer here.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from gateway.tools.demo import synthetic  # noqa: E402
from gateway.tools.demo.models import (  # noqa: E402
    DemoModel,
    demo_cache_root,
    demo_models,
    trained_checkpoint,
)
from gateway.tools.demo.stack import running_stack, say  # noqa: E402

MAX_TOKENS = 16


@dataclass(frozen=True, slots=True)
class DemoRequest:
    """One question to the mesh and the answer the trained model must give."""

    title: str
    prompt: str
    expected: str
    media: tuple[tuple[str, Path], ...] = ()  # (modality, file)
    expect_cache_hit: bool = False


# ------------------------------------------------------------------------------- assets


def make_media(folder: Path) -> dict[str, Path]:
    """The demo's files, drawn locally: two pictures, two clips, two tones."""
    from gateway.tools.demo import files

    folder.mkdir(parents=True, exist_ok=True)
    contents = {
        "red_circle.png": lambda: files.png(synthetic.draw_shape("red", "circle")),
        "blue_triangle.png": lambda: files.png(synthetic.draw_shape("blue", "triangle")),
        "moves_left.mp4": lambda: files.mp4(synthetic.moving_frames("left")),
        "moves_right.mp4": lambda: files.mp4(synthetic.moving_frames("right")),
        "high_tone.wav": lambda: files.wav(synthetic.tone("high"), synthetic.SAMPLING_RATE),
        "low_tone.wav": lambda: files.wav(synthetic.tone("low"), synthetic.SAMPLING_RATE),
    }
    paths = {}
    for name, content in contents.items():
        paths[name] = folder / name
        if not paths[name].exists():
            paths[name].write_bytes(content())
    return paths


def demo_requests(model: DemoModel, media: dict[str, Path]) -> tuple[DemoRequest, ...]:
    s = synthetic
    if model.name == "qwen2_audio":
        return tuple(
            DemoRequest(
                f"audio ({pitch} tone) + text",
                s.AUDIO_QUESTION,
                s.audio_answer(pitch),
                (("audio", media[f"{pitch}_tone.wav"]),),
            )
            for pitch in ("high", "low")
        )
    image, video = s.IMAGE_QUESTION, s.VIDEO_QUESTION
    return (
        DemoRequest(
            "image + text",
            image,
            s.image_answer("red", "circle"),
            (("image", media["red_circle.png"]),),
        ),
        DemoRequest(
            "another image",
            image,
            s.image_answer("blue", "triangle"),
            (("image", media["blue_triangle.png"]),),
        ),
        DemoRequest(
            "video + text", video, s.video_answer("left"), (("video", media["moves_left.mp4"]),)
        ),
        DemoRequest(
            "another video", video, s.video_answer("right"), (("video", media["moves_right.mp4"]),)
        ),
        DemoRequest("text only", s.sum_question(2, 3), "5"),
        DemoRequest(
            "the first image again",
            image,
            s.image_answer("red", "circle"),
            (("image", media["red_circle.png"]),),
            expect_cache_hit=True,
        ),
    )


# -------------------------------------------------------------------------------- requests


def send(address: str, request: DemoRequest) -> bool:
    """Streams one chat request; prints the answer, the expected one and timings."""
    import grpc

    from gateway.tools.chat import chat_request, format_stats, media_part, stream_chat
    from protos.channels import channel
    from protos.meshserve.v1 import gateway_pb2_grpc

    flags = "".join(f"--{modality} {path.name} " for modality, path in request.media)
    say(f"\n-- {request.title}: meshserve chat {flags}{request.prompt!r}")
    media = [media_part(modality, path) for modality, path in request.media]
    message = chat_request(request.prompt, media, max_tokens=MAX_TOKENS)
    with channel(address) as ch:
        try:
            result = stream_chat(gateway_pb2_grpc.GatewayStub(ch), message, timeout=60)
        except grpc.RpcError as exc:
            say(f"   FAILED: {exc.code().name}: {exc.details()}")
            return False
    right = result.text.strip() == request.expected
    say(f"   mesh:     {result.text.strip()!r}")
    say(f"   expected: {request.expected!r}  {'right' if right else 'WRONG'}")
    say(f"   {format_stats(result)}")
    if request.expect_cache_hit and not all(result.cache_hits):
        say("   FAILED: the repeated image should have hit the encoder cache")
        return False
    return right


def run_demo(model: DemoModel, path: Path, media: dict[str, Path]) -> list[bool]:
    from gateway.tools.launcher import free_port

    say(f"\n== {model.label} ==")
    with running_stack(path, free_port()) as address:
        return [send(address, request) for request in demo_requests(model, media)]


def main() -> int:
    started = time.monotonic()
    say("meshserve demo: every service is a separate process talking gRPC on 127.0.0.1.")
    models = demo_models()
    root = demo_cache_root()
    say(f"\n== Training the demo checkpoints on synthetic data (once; cached in {root}) ==")
    paths = {model.name: trained_checkpoint(model, root) for model in models}
    media = make_media(root / "media")
    try:
        results = [ok for model in models for ok in run_demo(model, paths[model.name], media)]
    except RuntimeError as exc:
        say(f"\ndemo FAILED: {exc}")
        return 1
    ok = all(results)
    say(f"\n{sum(results)}/{len(results)} answers right")
    say(f"demo {'finished' if ok else 'FAILED'} in {time.monotonic() - started:.1f}s")
    say("Ask it yourself (draw a shape as in the README):")
    say(f"  meshserve up --model {paths['qwen2_vl']}")
    say('  meshserve chat --image my_square.png "What is in the picture?"')
    say("With the hub, the same with real weights:")
    for model in models:
        say(f"  meshserve up --model {model.real_model}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
