"""Towers are built on meta and read only their own weights, from any key layout."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import safetensors
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from encoder_service import Encoder
from encoder_service.registry import load_tower
from protos.encoder_messages import MediaItem
from protos.errors import InvalidRequest, Unsupported
from tests.encoder_service.samples import encode_image, random_frames

TOWER_ROOTS = {
    "llava": ("vision_tower.", "multi_modal_projector."),
    "qwen2_vl": ("visual.",),
    "qwen2_audio": ("audio_tower.", "multi_modal_projector."),
}
MODALITY = {"llava": "image", "qwen2_vl": "image", "qwen2_audio": "audio"}


class _ReadLog:
    """Replaces safetensors.safe_open: records opened files and every tensor read."""

    def __init__(self) -> None:
        self.files: list[str] = []
        self.tensors: list[str] = []
        self._original = safetensors.safe_open

    def __call__(self, filename: str, *args, **kwargs):
        self.files.append(Path(filename).name)
        inner, log = self._original(filename, *args, **kwargs), self

        class Handle:
            def __enter__(self):
                inner.__enter__()
                return self

            def __exit__(self, *exc):
                return inner.__exit__(*exc)

            def keys(self):
                return inner.keys()

            def get_tensor(self, key: str) -> torch.Tensor:
                log.tensors.append(key)
                return inner.get_tensor(key)

        return Handle()


@pytest.fixture
def read_log(monkeypatch: pytest.MonkeyPatch) -> _ReadLog:
    log = _ReadLog()
    monkeypatch.setattr(safetensors, "safe_open", log)
    return log


def _copy_checkpoint(
    source: Path, out: Path, rename: Callable[[str], str | None], shards: int = 1
) -> Path:
    """A copy of `source` with keys renamed (None drops a key), optionally in two shards."""
    out.mkdir()
    for file in source.iterdir():
        if file.suffix == ".json" and file.name != "model.safetensors.index.json":
            shutil.copy(file, out / file.name)
    state = {
        new: t for key, t in load_file(source / "model.safetensors").items() if (new := rename(key))
    }
    if shards == 1:
        save_file(state, out / "model.safetensors", metadata={"format": "pt"})
        return out
    towers = tuple(root for roots in TOWER_ROOTS.values() for root in roots)
    parts = {"lm.safetensors": {}, "tower.safetensors": {}}
    for key, tensor in state.items():
        is_tower = key.removeprefix("model.").startswith(towers)
        parts["tower.safetensors" if is_tower else "lm.safetensors"][key] = tensor
    for name, part in parts.items():
        save_file(part, out / name, metadata={"format": "pt"})
    weight_map = {key: name for name, part in parts.items() for key in part}
    (out / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return out


@pytest.mark.parametrize("name", ["llava", "qwen2_vl", "qwen2_audio"])
def test_only_tower_weights_are_read(name: str, tiny_model, read_log: _ReadLog) -> None:
    path = tiny_model(name)
    tower, _ = load_tower(path, MODALITY[name], dtype="float32", device="cpu")
    with safetensors.safe_open(str(path / "model.safetensors"), "pt") as handle:
        all_keys = list(handle.keys())
    tower_keys = [key for key in all_keys if key.startswith(TOWER_ROOTS[name])]
    assert sorted(read_log.tensors) == sorted(tower_keys)
    assert len(tower_keys) < len(all_keys)  # the language model was there, and left unread
    for parameter in tower.module.parameters():
        assert parameter.device.type == "cpu" and not parameter.requires_grad


def test_non_persistent_buffers_are_computed_not_left_on_meta(qwen2_vl_path: Path) -> None:
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLVisionRotaryEmbedding

    tower, _ = load_tower(qwen2_vl_path, "video", dtype="float32", device="cpu")
    assert not any(t.is_meta for t in [*tower.module.parameters(), *tower.module.buffers()])
    rotary = tower.module["visual"].rotary_pos_emb
    expected, _ = Qwen2VLVisionRotaryEmbedding.compute_axial_rope_parameters(rotary.config)
    torch.testing.assert_close(rotary.inv_freq, expected, rtol=0, atol=0)


def test_clip_position_ids_are_computed(llava_path: Path) -> None:
    tower, _ = load_tower(llava_path, "image", dtype="float32", device="cpu")
    position_ids = tower.module["vision_tower"].embeddings.position_ids
    torch.testing.assert_close(position_ids, torch.arange(17)[None])


def _v5_llava(key: str) -> str:
    if key.startswith("language_model.lm_head"):
        return key.removeprefix("language_model.")
    if key.startswith("language_model.model."):
        return "model.language_model." + key.removeprefix("language_model.model.")
    return "model." + key


def _hub_llava(key: str) -> str:
    return key.replace("vision_tower.", "vision_tower.vision_model.", 1)


def _image_bytes() -> bytes:
    return encode_image(Image.fromarray(random_frames(1, 32, 32, seed=9)[0]), "PNG")


@pytest.mark.parametrize("layout", [_v5_llava, _hub_llava], ids=["transformers5", "hub-v4"])
def test_llava_key_layouts_load_the_same_tower(
    layout, llava_path: Path, llava_encoder: Encoder, tmp_path: Path
) -> None:
    copy = _copy_checkpoint(llava_path, tmp_path / "copy", layout)
    expected = llava_encoder.encode([MediaItem(data=_image_bytes())])[0].embeddings
    with Encoder.from_pretrained(copy, "image") as encoder:
        ours = encoder.encode([MediaItem(data=_image_bytes())])[0].embeddings
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)


def test_qwen2_vl_transformers5_layout_and_shards(
    qwen2_vl_path: Path, qwen2_vl_image_encoder: Encoder, tmp_path: Path, read_log: _ReadLog
) -> None:
    def v5(key: str) -> str:
        if key.startswith("visual."):
            return "model." + key
        return key.replace("model.", "model.language_model.", 1)

    copy = _copy_checkpoint(qwen2_vl_path, tmp_path / "copy", v5, shards=2)
    read_log.files.clear()
    tower, _ = load_tower(copy, "image", dtype="float32", device="cpu")
    assert read_log.files == ["tower.safetensors"]  # the language-model shard is never opened
    frame = random_frames(1, 56, 56, seed=2)[0]
    expected = qwen2_vl_image_encoder.encode([MediaItem(decoded=frame)])[0].embeddings
    ours = tower.forward(
        [tower.prepare(qwen2_vl_image_encoder.modality, Image.fromarray(frame), 0)]
    )
    torch.testing.assert_close(ours[0], expected, rtol=0, atol=0)


def test_a_missing_tower_weight_is_reported(llava_path: Path, tmp_path: Path) -> None:
    copy = _copy_checkpoint(
        llava_path, tmp_path / "copy", lambda k: None if k.endswith("linear_2.bias") else k
    )
    with pytest.raises(
        RuntimeError, match=r"lacks 1 weight\(s\) .*multi_modal_projector.linear_2.bias"
    ):
        load_tower(copy, "image", dtype="float32", device="cpu")


def test_no_safetensors_is_a_clear_error(llava_path: Path, tmp_path: Path) -> None:
    shutil.copy(llava_path / "config.json", tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="safetensors"):
        load_tower(tmp_path, "image", dtype="float32", device="cpu")


def test_dtype_is_applied_to_weights_and_outputs(llava_path: Path) -> None:
    with Encoder.from_pretrained(llava_path, "image", dtype="bfloat16") as encoder:
        (out,) = encoder.encode([MediaItem(data=_image_bytes())])
        assert out.embeddings.dtype == torch.bfloat16 and encoder.info().dtype == "bfloat16"
        assert {p.dtype for p in encoder.tower.module.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize(
    ("name", "modality", "error", "message"),
    [
        ("llava", "video", Unsupported, "LlavaForConditionalGeneration encodes image only: video"),
        ("qwen2_vl", "audio", Unsupported, "encodes image and video only: audio"),
        ("qwen2_audio", "image", Unsupported, "encodes audio only: image"),
        ("llava", "smell", InvalidRequest, "unknown modality 'smell'"),
        ("llava", "text", InvalidRequest, "unknown modality 'text'; choose image, video or audio"),
    ],
)
def test_unsupported_modalities_are_refused_before_loading(
    name: str, modality: str, error: type, message: str, tiny_model, read_log: _ReadLog
) -> None:
    with pytest.raises(error, match=message):
        Encoder.from_pretrained(tiny_model(name), modality)
    assert read_log.tensors == []


def test_unknown_architecture_is_unsupported(tmp_path: Path) -> None:
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(Unsupported, match=r"LlamaForCausalLM has no media encoder: it defines no"):
        Encoder.from_pretrained(tmp_path, "image")
