"""Phi-4-multimodal over real processes (LM service, an image and an audio encoder, gateway):
T + I and T + A greedy equal HF `generate`, prompt lengths equal the processor's."""

from __future__ import annotations

import numpy as np
import pytest

from protos.meshserve.v1 import gateway_pb2
from tests.e2e.test_gateway import (
    AUDIO,
    IMAGE,
    MAX_TOKENS,
    Stack,
    _collect,
    _media,
    _png,
    _sampling,
    _wav,
)
from tests.gateway.test_generic_multimodal_phi4mm import (
    AUDIO_PROMPT,
    IMAGE_PROMPT,
    _audio,
    _hf_generate,
    _hf_inputs,
    _image,
)
from tests.parity import check_logprobs_close


# NOTE: slow: four processes and two 725-token prefills take ~40 s on 2 cores; the same parity
# runs offline in tests/gateway/test_generic_multimodal_phi4mm.py on every run
@pytest.mark.slow
def test_image_and_audio_over_the_mesh_match_hf() -> None:
    stack = Stack("phi4mm", ["image", "audio"])
    try:
        # what the WAV file holds: 16-bit samples
        clip = (np.clip(_audio(), -1, 1) * 32767).astype("<i2").astype(np.float32) / 32768
        cases = [
            (IMAGE_PROMPT, _media(IMAGE, _png(_image())), {"images": [_image()]}),
            (AUDIO_PROMPT, _media(AUDIO, _wav(clip)), {"audio": [clip]}),
        ]
        for prompt, part, media in cases:
            request = gateway_pb2.GenerateRequest(prompt=prompt, media=[part], sampling=_sampling())
            tokens, tops, last = _collect(stack.stub.Generate(request))
            inputs = _hf_inputs(prompt, **media)
            expected, expected_tops, _ = _hf_generate(inputs)
            name = f"phi4mm-mesh-{next(iter(media))}"
            assert check_logprobs_close(tokens, tops, expected, expected_tops, name) >= (
                MAX_TOKENS // 2
            )
            assert last.usage.prompt_tokens == inputs["input_ids"].shape[1]
    finally:
        stack.stop()
