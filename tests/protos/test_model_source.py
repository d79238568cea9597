"""Model ids resolve through ModelScope with MESHSERVE_USE_MODELSCOPE (or VLLM_USE_MODELSCOPE),
revision included, offline against a local cache in ModelScope's own layout; every service
(LM, encoders, gateway) reads the same snapshot."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from gateway.tools.tiny_models import tiny_model_path
from protos.errors import InvalidRequest
from protos.model_source import resolve_model, use_modelscope

pytest.importorskip("modelscope")

MODEL_ID = "meshserve/tiny-lm"


def _snapshot(cache: Path, model_id: str, revision: str, source: Path) -> Path:
    """A snapshot as ModelScope's hub client lays it out: models/<owner>--<name>/snapshots/<rev>."""
    folder = cache / "models" / model_id.replace("/", "--") / "snapshots" / revision
    shutil.copytree(source, folder)
    return folder


@pytest.fixture
def modelscope_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MESHSERVE_USE_MODELSCOPE", "True")
    monkeypatch.delenv("VLLM_USE_MODELSCOPE", raising=False)
    return {
        "master": _snapshot(tmp_path, MODEL_ID, "master", tiny_model_path("llama")),
        "v1.1": _snapshot(tmp_path, MODEL_ID, "v1.1", tiny_model_path("mistral_swa")),
        "llava": _snapshot(tmp_path, "meshserve/tiny-llava", "master", tiny_model_path("llava")),
    }


def test_ids_resolve_to_modelscope_snapshots_by_revision(modelscope_cache: dict) -> None:
    assert resolve_model(MODEL_ID) == modelscope_cache["master"]
    assert resolve_model(MODEL_ID, revision="v1.1") == modelscope_cache["v1.1"]
    with pytest.raises(InvalidRequest, match=r"'v9'.*ModelScope|ModelScope.*v9"):
        resolve_model(MODEL_ID, revision="v9")
    with pytest.raises(InvalidRequest, match="local cache of ModelScope"):
        resolve_model("meshserve/not-cached")


def test_vllm_variable_is_honoured(modelscope_cache: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESHSERVE_USE_MODELSCOPE")
    assert not use_modelscope()
    with pytest.raises(InvalidRequest, match="Hugging Face hub"):
        resolve_model(MODEL_ID)
    monkeypatch.setenv("VLLM_USE_MODELSCOPE", "true")
    assert resolve_model(MODEL_ID) == modelscope_cache["master"]


def test_a_local_folder_wins_over_any_hub(modelscope_cache: dict) -> None:
    folder = tiny_model_path("llama")
    assert resolve_model(str(folder)) == folder


def test_missing_package_is_a_sentence(
    modelscope_cache: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "modelscope", None)
    with pytest.raises(InvalidRequest, match="pip install modelscope"):
        resolve_model(MODEL_ID)


def test_engine_gateway_and_encoder_read_the_modelscope_revision(modelscope_cache: dict) -> None:
    from encoder_service import Encoder
    from gateway import LLM, SamplingParams
    from lm_service.models.registry import load_model

    loaded = load_model(MODEL_ID, revision="v1.1")
    assert loaded.model_path == modelscope_cache["v1.1"]
    assert loaded.model.kv_cache_spec().sliding_windows == (4, 4)  # mistral_swa, not llama
    greedy = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
    by_id = LLM(model=MODEL_ID, revision="v1.1", num_blocks=64).generate(
        "Hello, my name is", greedy
    )
    by_path = LLM(model=str(tiny_model_path("mistral_swa")), num_blocks=64).generate(
        "Hello, my name is", greedy
    )
    assert by_id[0].outputs[0].token_ids == by_path[0].outputs[0].token_ids
    encoder = Encoder.from_pretrained("meshserve/tiny-llava", modality="image")
    assert encoder.tower.architecture == "LlavaForConditionalGeneration"
