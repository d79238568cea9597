"""Transcriptions per second for 16 concurrent clips: meshserve vs HF transformers, same process.

meshserve: the offline `LLM(task="transcription")`, i.e. Whisper's encoder in the audio encoder
(micro-batched) and its decoder on the engine (continuous batching, paged self-attention,
cross-attention K/V computed once per request); the 16 clips are submitted at once from 16
threads. HF: `WhisperForConditionalGeneration.generate`, one clip at a time, and all 16 in one
batched call. Every side starts from the waveform (features, encoder and decoder are timed),
decodes greedily and exactly `--max-tokens` tokens (EOS ignored), so the work is the same.

The default model is the tests' tiny random Whisper (built offline; d_model 64, 2+2 layers),
where per-step overheads dominate; `--width 384 --layers 4` rebuilds it with whisper-tiny's
width and depth (random weights, the tiny model's tokenizer and 2 s windows); `--model` takes a
local Whisper folder (e.g. a downloaded openai/whisper-tiny).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch


def clips(n: int, seconds: float, rate: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    return [
        (0.3 * np.sin(2 * np.pi * (120 + 40 * i) * t) + 0.02 * rng.standard_normal(t.size)).astype(
            np.float32
        )
        for i in range(n)
    ]


def widened(tiny: Path, out: Path, width: int, layers: int) -> Path:
    """The tiny Whisper with `width` and `layers` (random weights), its tokenizer and
    processor and generation config kept."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig.from_pretrained(tiny)
    config.update(
        dict(
            d_model=width,
            encoder_layers=layers,
            decoder_layers=layers,
            encoder_attention_heads=width // 64,
            decoder_attention_heads=width // 64,
            encoder_ffn_dim=4 * width,
            decoder_ffn_dim=4 * width,
        )
    )
    torch.manual_seed(0)
    WhisperForConditionalGeneration(config).eval().save_pretrained(out)
    for file in tiny.iterdir():
        if file.suffix != ".safetensors" and file.name != "config.json":
            shutil.copy(file, out / file.name)
    return out


def run_ours(model: str, audio: list[np.ndarray], rate: int, max_tokens: int) -> float:
    from gateway import LLM
    from protos.sampling_params import SamplingParams

    llm = LLM(model, task="transcription")
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    try:
        llm.transcribe((audio[0], rate), "en", sampling_params=params)  # warm-up
        start = time.perf_counter()
        with ThreadPoolExecutor(len(audio)) as pool:
            outs = list(
                pool.map(lambda a: llm.transcribe((a, rate), "en", "transcribe", params), audio)
            )
        elapsed = time.perf_counter() - start
    finally:
        llm.close()
    assert all(len(o.outputs[0].token_ids) == max_tokens for o in outs)
    return elapsed


def run_hf(model: str, audio: list[np.ndarray], rate: int, max_tokens: int, batch: int) -> float:
    from transformers import AutoProcessor, WhisperForConditionalGeneration

    processor = AutoProcessor.from_pretrained(model)
    hf = WhisperForConditionalGeneration.from_pretrained(model).eval()
    kwargs = dict(
        language="en",
        task="transcribe",
        max_new_tokens=max_tokens,
        min_new_tokens=max_tokens,
        do_sample=False,
    )

    def generate(part: list[np.ndarray]) -> None:
        features = processor.feature_extractor(
            part, sampling_rate=rate, return_tensors="pt"
        ).input_features
        with torch.inference_mode():
            out = hf.generate(features, **kwargs)
        assert out.shape == (len(part), max_tokens)

    generate(audio[:1])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(audio), batch):
        generate(audio[i : i + batch])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a local Whisper folder (default: tiny)")
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=1.5, help="length of each clip")
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--width", type=int, default=None, help="rebuild the tiny model wider")
    parser.add_argument("--layers", type=int, default=4, help="with --width: layers each side")
    args = parser.parse_args()
    model = args.model
    if model is None:
        from gateway.tools.tiny_models import tiny_model_path

        model = str(tiny_model_path("whisper"))
        if args.width:
            out = Path(tempfile.mkdtemp(prefix="whisper-bench-"))
            model = str(widened(Path(model), out, args.width, args.layers))
    rate = 16000
    audio = clips(args.clips, args.seconds, rate)
    torch.manual_seed(0)
    ours = run_ours(model, audio, rate, args.max_tokens)
    one_by_one = run_hf(model, audio, rate, args.max_tokens, batch=1)
    batched = run_hf(model, audio, rate, args.max_tokens, batch=len(audio))
    n = len(audio)
    print(f"{n} clips of {args.seconds:g} s, {args.max_tokens} tokens each, model {model}")
    for name, seconds in (
        ("meshserve (engine, 16 concurrent)", ours),
        ("HF generate, one by one", one_by_one),
        (f"HF generate, batch of {n}", batched),
    ):
        print(f"  {name:36s} {n / seconds:8.2f} transcriptions/s  ({seconds:.2f} s)")
    print(
        f"  ratio vs HF one by one: {one_by_one / ours:.2f}x; vs HF batched: {batched / ours:.2f}x"
    )


if __name__ == "__main__":
    main()
