"""The checkpoint loader: finding a model, its config, and streaming (only) the LM weights."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import safetensors
import torch
from safetensors.torch import load_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from gateway.tools.tiny_models import tiny_model_path  # noqa: E402
from lm_service.models import loader  # noqa: E402
from lm_service.models.registry import load_model  # noqa: E402
from protos.errors import InvalidRequest  # noqa: E402

TOWER_WORDS = ("vision", "visual", "audio", "multi_modal_projector", "connector", "image_newline")


class _ReadLog:
    """Wraps safetensors.safe_open and records every tensor actually read."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.names: list[str] = []
        real_open = safetensors.safe_open
        log = self

        class _Handle:
            def __init__(self, *args, **kwargs) -> None:
                self._inner = real_open(*args, **kwargs)

            def __enter__(self) -> _Handle:
                self._inner.__enter__()
                return self

            def __exit__(self, *exc) -> None:
                self._inner.__exit__(*exc)

            def keys(self):
                return self._inner.keys()

            def get_tensor(self, name: str) -> torch.Tensor:
                log.names.append(name)
                return self._inner.get_tensor(name)

            def get_slice(self, name: str):
                log.names.append(name)
                return self._inner.get_slice(name)

            def __getattr__(self, attr: str):
                return getattr(self._inner, attr)

        # NOTE: import everything that binds `safe_open` at import time first, so the patch
        # cannot leak into modules imported while it is active.
        import transformers.modeling_utils  # noqa: F401

        monkeypatch.setattr(safetensors, "safe_open", _Handle)


@pytest.mark.parametrize("model_impl", ["native", "transformers"])
@pytest.mark.parametrize("name", ["llava", "qwen2_vl", "qwen2_audio"])
def test_multimodal_checkpoint_reads_only_language_model(
    name: str, model_impl: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _check_reads_only_language_model(name, model_impl, monkeypatch)


@pytest.mark.parametrize("name", ["llava_next", "idefics3", "internvl"])
def test_generic_multimodal_checkpoint_reads_only_language_model(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Layouts the prefix list never knew (Idefics3's `model.text_model.*`, a tied head)."""
    _check_reads_only_language_model(name, "transformers", monkeypatch)


def _check_reads_only_language_model(
    name: str, model_impl: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tiny_model_path(name)
    on_disk = set(load_file(path / "model.safetensors"))
    reads = _ReadLog(monkeypatch)
    loaded = load_model(str(path), model_impl=model_impl)
    assert loaded.impl_name == model_impl
    towers = {n for n in on_disk if any(word in n for word in TOWER_WORDS)}
    assert towers, "the checkpoint should hold tower weights"
    assert reads.names, "the loader should read through safetensors"
    assert not set(reads.names) & towers
    assert set(reads.names) == on_disk - towers  # every LM weight, each read once
    assert len(reads.names) == len(set(reads.names))


def test_iterate_weights_sharded_and_bin_give_the_same_tensors(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    source = tiny_model_path("llama")
    reference = load_file(source / "model.safetensors")
    model = AutoModelForCausalLM.from_pretrained(source)
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="100KB")
    assert (sharded / loader.SAFETENSORS_INDEX).is_file()
    assert len(loader.weight_files(sharded)) > 1
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    torch.save(reference, pickled / "pytorch_model.bin")
    for folder in (sharded, pickled):
        names = [name for name, _ in loader.iterate_weights(folder)]
        assert len(names) == len(set(names))
        loaded = dict(loader.iterate_weights(folder))
        assert loaded.keys() == reference.keys(), folder.name
        for key, tensor in reference.items():
            assert torch.equal(loaded[key], tensor), key


def test_iterate_weights_filters_before_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    reads = _ReadLog(monkeypatch)
    wanted = lambda name: name.startswith("model.norm")  # noqa: E731
    got = [name for name, _ in loader.iterate_weights(tiny_model_path("llama"), wanted=wanted)]
    assert got == ["model.norm.weight"] == reads.names


def test_weight_files_missing_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="No weights"):
        loader.weight_files(tmp_path)


def test_resolve_local_folder_and_hub_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    local = tiny_model_path("llama")
    assert loader.resolve_model_path(str(local)) == local
    # a hub id resolved offline from a Hugging Face cache laid out like a real download
    repo = tmp_path / "models--meshserve--tiny-llama"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(local, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert loader.resolve_model_path("meshserve/tiny-llama") == repo / "snapshots" / commit
    with pytest.raises(InvalidRequest, match="meshserve/not-there"):
        loader.resolve_model_path("meshserve/not-there")


def test_load_config_applies_hf_overrides() -> None:
    path = tiny_model_path("llava")
    config = loader.load_config(
        path, hf_overrides={"text_config": {"num_hidden_layers": 1}, "image_seq_length": 4}
    )
    assert config.text_config.num_hidden_layers == 1
    assert loader.text_config_of(config) is config.text_config
    assert config.image_seq_length == 4
    assert config.vision_config.num_hidden_layers == 2  # untouched sub-config
    renamed = loader.load_config(
        tiny_model_path("llama"),
        hf_overrides=lambda c: (setattr(c, "architectures", ["MyArch"]), c)[1],
    )
    assert renamed.architectures == ["MyArch"]
    assert loader.text_config_of(renamed) is renamed
    assert not loader.is_multimodal(renamed) and loader.is_multimodal(config)


def test_hf_overrides_merge_into_dict_attributes() -> None:
    from types import SimpleNamespace

    config = SimpleNamespace(rope_scaling={"rope_type": "linear", "factor": 2.0}, layers=2)
    loader.apply_hf_overrides(config, {"rope_scaling": {"factor": 4.0}, "layers": 1})
    assert config.rope_scaling == {"rope_type": "linear", "factor": 4.0}
    assert config.layers == 1


def test_load_config_of_a_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest):
        loader.load_config(tmp_path)
