"""A busy engine for a bench to run beside: what the LM service's engine does to the cores.

In the mesh the gateway shares the machine with an engine that keeps every core busy and
streams its weights through the caches each step; `bench/gateway.py --beside-engine` runs this
in its own process during the measurement, so the gateway's (and the minimal relay's) CPU per
token shows under the same contention, without the rest of the mesh. It builds the bench's
Qwen2-0.5B-shaped model (bench.mesh_model), prints READY once the engine is up, then decodes
`--streams` requests of `--max-tokens` tokens at a time, over and over, until SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
from pathlib import Path

READY = "engine load ready"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--vocab", type=int, default=None, help="default: Qwen2-0.5B's")
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=64)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    from bench.mesh_model import QWEN2_0_5B_VOCAB, build_qwen2_shaped
    from lm_service import Engine, EngineConfig, SamplingParams

    with tempfile.TemporaryDirectory() as tmp:
        vocab = args.vocab or QWEN2_0_5B_VOCAB
        path = build_qwen2_shaped(Path(tmp) / "model", args.layers, args.dtype, vocab)
        config = EngineConfig(
            model=str(path), dtype=args.dtype, max_num_seqs=args.streams, kv_cache_memory=256 << 20
        )
        engine = Engine(config)
        print(READY, flush=True)
        params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, ignore_eos=True)
        batch = 0
        while True:
            for i in range(args.streams):  # new prompts each batch: no prefix-cache hits
                prompt = [(batch * 7919 + i * 104729 + j) % 200 + 3 for j in range(args.prompt_len)]
                engine.add_request(f"{batch}-{i}", prompt, params)
            while engine.has_unfinished():
                engine.step()
            batch += 1


if __name__ == "__main__":
    main()
