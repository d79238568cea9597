"""Encoder towers: per architecture, the sub-modules that turn media into LM-sized embeddings.

- `base.py`: the Tower interface (decode, prepare, forward) and TowerInput;
- `llava.py`: LLaVA (image);
- `qwen2_vl.py`: Qwen2-VL and Qwen2.5-VL (image, video), with `qwen2_vl_processing.py`, their
  video preprocessing;
- `qwen2_audio.py`: Qwen2-Audio (audio);
- `whisper.py`: Whisper's encoder (audio), whose states feed the decoder's cross-attention;
- `mllama.py`: Mllama's tiled vision tower (image), whose states feed cross-attention too;
- `generic.py` (with `media_modules.py`): every other architecture transformers implements,
  driven by the checkpoint's own HF processor and feature functions.

Native towers exist where they pay for themselves (exact parity, batching across items).

`encoder_service.registry` maps `config.architectures[0]` to these classes.
"""

from __future__ import annotations

from encoder_service.towers.base import Tower, TowerInput
from encoder_service.towers.generic import GenericTower
from encoder_service.towers.llava import LlavaTower
from encoder_service.towers.mllama import MllamaTower
from encoder_service.towers.qwen2_audio import Qwen2AudioTower
from encoder_service.towers.qwen2_vl import Qwen2_5_VLTower, Qwen2VLTower
from encoder_service.towers.whisper import WhisperTower

__all__ = [
    "GenericTower",
    "LlavaTower",
    "MllamaTower",
    "Qwen2AudioTower",
    "Qwen2VLTower",
    "Qwen2_5_VLTower",
    "Tower",
    "TowerInput",
    "WhisperTower",
]
