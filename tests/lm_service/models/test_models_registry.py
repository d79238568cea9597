"""Choosing and loading an implementation: model_impl, dtypes, overrides, remote code, errors."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from transformers import GemmaConfig, LlamaConfig, XGLMConfig, XGLMForCausalLM

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from gateway.tools.tiny_models import tiny_model_path  # noqa: E402
from kernels.attention import AttentionBackend  # noqa: E402
from kernels.forward_context import ForwardContext, forward_context  # noqa: E402
from kernels.metadata import AttentionMetadata  # noqa: E402
from lm_service.engine.kv_cache import allocate_kv_caches  # noqa: E402
from lm_service.models.base import BaseCausalLM, KVCacheSpec  # noqa: E402
from lm_service.models.registry import (  # noqa: E402
    NATIVE_ARCHITECTURES,
    choose_impl,
    load_model,
)
from protos.dtypes import resolve_dtype  # noqa: E402
from protos.errors import InvalidRequest, Unsupported  # noqa: E402

PROMPT = [1, 17, 93, 204, 55, 301, 12]


@torch.inference_mode()
def prefill_logits(model: BaseCausalLM, token_ids: list[int] = PROMPT) -> torch.Tensor:
    """Logits [L, vocab] of one prompt prefilled into a fresh paged cache."""
    caches = allocate_kv_caches(
        model.kv_cache_spec(), AttentionBackend.TORCH, 8, 4, torch.device("cpu")
    )
    n = len(token_ids)
    meta = AttentionMetadata.build([n], [n], [[6, 1]], 4)
    with forward_context(ForwardContext(meta, caches)):
        hidden = model(torch.tensor(token_ids), torch.arange(n))
    return model.compute_logits(hidden)


def test_native_architectures_cover_the_llama_family() -> None:
    assert {
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "Qwen2ForCausalLM",
        "LlavaForConditionalGeneration",
        "Qwen2VLForConditionalGeneration",
        "Qwen2_5_VLForConditionalGeneration",
        "Qwen2AudioForConditionalGeneration",
    } <= NATIVE_ARCHITECTURES


def test_choose_impl() -> None:
    llama, gemma = LlamaConfig(), GemmaConfig()
    assert choose_impl("LlamaForCausalLM", llama, "auto") == "native"
    assert choose_impl("LlamaForCausalLM", llama, "transformers") == "transformers"
    assert choose_impl("GPT2LMHeadModel", llama, "auto") == "transformers"
    # LLaVA is native only when its language model is Llama-family
    assert choose_impl("LlavaForConditionalGeneration", llama, "native") == "native"
    assert choose_impl("LlavaForConditionalGeneration", gemma, "auto") == "transformers"
    with pytest.raises(Unsupported, match="LlavaForConditionalGeneration.*'gemma'"):
        choose_impl("LlavaForConditionalGeneration", gemma, "native")
    with pytest.raises(Unsupported, match="GPT2LMHeadModel"):
        choose_impl("GPT2LMHeadModel", llama, "native")
    with pytest.raises(InvalidRequest, match="model_impl"):
        choose_impl("LlamaForCausalLM", llama, "vllm")


@pytest.mark.parametrize(
    ("name", "model_impl", "impl", "class_name"),
    [
        ("llama", "auto", "native", "LlamaForCausalLM"),
        ("qwen2_vl", "auto", "native", "LlamaForCausalLM"),
        ("gpt2", "auto", "transformers", "TransformersForCausalLM"),
        ("llama", "transformers", "transformers", "TransformersForCausalLM"),
    ],
)
def test_load_model_picks_the_implementation(
    name: str, model_impl: str, impl: str, class_name: str
) -> None:
    loaded = load_model(str(tiny_model_path(name)), model_impl=model_impl)
    assert (loaded.impl_name, type(loaded.model).__name__) == (impl, class_name)
    assert loaded.model.impl_name == impl
    assert loaded.architecture == loaded.hf_config.architectures[0]
    assert loaded.text_config is loaded.hf_config.get_text_config()
    assert loaded.model_path == tiny_model_path(name)
    assert not any(p.requires_grad for p in loaded.model.parameters())


def test_native_and_transformers_agree_and_report_the_same_cache() -> None:
    path = str(tiny_model_path("qwen2"))
    native = load_model(path, model_impl="native").model
    fallback = load_model(path, model_impl="transformers").model
    assert (
        native.kv_cache_spec()
        == fallback.kv_cache_spec()
        == KVCacheSpec(
            num_layers=2,
            num_kv_heads=2,
            head_dim=16,
            dtype=torch.float32,
            sliding_windows=(None, None),
        )
    )
    torch.testing.assert_close(prefill_logits(native), prefill_logits(fallback))


def test_sliding_windows_per_layer() -> None:
    swa = load_model(str(tiny_model_path("mistral_swa"))).model.kv_cache_spec()
    assert swa.sliding_windows == (4, 4)
    gemma2 = load_model(str(tiny_model_path("gemma2"))).model.kv_cache_spec()
    assert gemma2.sliding_windows == (8, None)  # HF alternates sliding / full


@pytest.mark.parametrize("model_impl", ["native", "transformers"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision(model_impl: str, dtype: str) -> None:
    path = str(tiny_model_path("llama"))
    half = load_model(path, model_impl=model_impl, dtype=dtype).model
    full = load_model(path, model_impl=model_impl).model
    expected = getattr(torch, dtype)
    assert {p.dtype for p in half.parameters()} == {expected}
    assert half.kv_cache_spec().dtype == expected
    logits = prefill_logits(half)
    assert logits.dtype == torch.float32
    reference = prefill_logits(full)
    assert (logits - reference).abs().max() < 0.1 * reference.abs().max()


def test_dtype_auto_and_errors() -> None:
    assert resolve_dtype("auto", "bfloat16") is torch.bfloat16
    assert resolve_dtype("auto", None) is torch.float32
    assert resolve_dtype(torch.float16) is torch.float16
    with pytest.raises(InvalidRequest, match="dtype"):
        resolve_dtype("int8")
    loaded = load_model(str(tiny_model_path("llama")), dtype="auto")
    assert loaded.model.kv_cache_spec().dtype == torch.float32  # the checkpoint's dtype


@pytest.mark.parametrize("model_impl", ["native", "transformers"])
def test_hf_overrides_reach_the_model(model_impl: str) -> None:
    text = load_model(
        str(tiny_model_path("llama")), model_impl=model_impl, hf_overrides={"num_hidden_layers": 1}
    )
    assert text.model.kv_cache_spec().num_layers == 1
    multimodal = load_model(
        str(tiny_model_path("llava")),
        model_impl=model_impl,
        hf_overrides={"text_config": {"num_hidden_layers": 1}},
    )
    assert multimodal.model.kv_cache_spec().num_layers == 1
    assert prefill_logits(multimodal.model).isfinite().all()


def test_native_loads_pickled_bin_checkpoint(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    source = tiny_model_path("mistral")
    for name in ("config.json", "generation_config.json"):
        shutil.copy(source / name, tmp_path / name)
    torch.save(load_file(source / "model.safetensors"), tmp_path / "pytorch_model.bin")
    from_bin = load_model(str(tmp_path), model_impl="native").model
    from_safetensors = load_model(str(source), model_impl="native").model
    assert torch.equal(prefill_logits(from_bin), prefill_logits(from_safetensors))


def test_native_rejects_a_checkpoint_missing_weights(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    source = tiny_model_path("llama")
    shutil.copy(source / "config.json", tmp_path / "config.json")
    weights = load_file(source / "model.safetensors")
    del weights["model.layers.1.self_attn.k_proj.weight"]
    save_file(weights, tmp_path / "model.safetensors")
    with pytest.raises(InvalidRequest, match=r"model\.layers\.1\.self_attn\.qkv_proj\.weight\[1\]"):
        load_model(str(tmp_path), model_impl="native")


def test_model_without_attention_interface_is_unsupported(tmp_path: Path) -> None:
    # XGLM computes attention in its own code, and no shim of ours re-enters it (Bloom's does)
    config = XGLMConfig(vocab_size=64, d_model=32, num_layers=1, attention_heads=4, ffn_dim=64)
    XGLMForCausalLM(config).save_pretrained(tmp_path)
    for model_impl in ("auto", "transformers"):
        with pytest.raises(Unsupported, match="XGLMForCausalLM.*attention interface"):
            load_model(str(tmp_path), model_impl=model_impl)


def test_encoder_decoder_runs_natively_and_the_fallback_refuses_it() -> None:
    loaded = load_model(str(tiny_model_path("whisper")))
    assert loaded.impl_name == "native" and loaded.model.cross_attention_spec() is not None
    with pytest.raises(Unsupported, match="encoder-decoder"):
        load_model(str(tiny_model_path("whisper")), model_impl="transformers")


def test_missing_architectures_and_unknown_model(tmp_path: Path) -> None:
    config = json.loads((tiny_model_path("llama") / "config.json").read_text())
    del config["architectures"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidRequest, match="architectures"):
        load_model(str(tmp_path))
    with pytest.raises(InvalidRequest, match="not a local folder"):
        load_model("meshserve/no-such-model")


REMOTE_CONFIG = """
from transformers import LlamaConfig


class TinyRemoteConfig(LlamaConfig):
    model_type = "tiny_remote"
"""
REMOTE_MODEL = """
from transformers import LlamaForCausalLM

from .configuration_tiny_remote import TinyRemoteConfig


class TinyRemoteForCausalLM(LlamaForCausalLM):
    config_class = TinyRemoteConfig
"""


def _remote_code_checkpoint(folder: Path) -> Path:
    source = tiny_model_path("llama")
    shutil.copy(source / "model.safetensors", folder / "model.safetensors")
    config = json.loads((source / "config.json").read_text())
    config.update(
        model_type="tiny_remote",
        architectures=["TinyRemoteForCausalLM"],
        auto_map={
            "AutoConfig": "configuration_tiny_remote.TinyRemoteConfig",
            "AutoModelForCausalLM": "modeling_tiny_remote.TinyRemoteForCausalLM",
        },
    )
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "configuration_tiny_remote.py").write_text(REMOTE_CONFIG)
    (folder / "modeling_tiny_remote.py").write_text(REMOTE_MODEL)
    return folder


def test_trust_remote_code_model_runs_on_the_fallback(tmp_path: Path) -> None:
    path = str(_remote_code_checkpoint(tmp_path))
    with pytest.raises(InvalidRequest, match="trust_remote_code"):
        load_model(path)
    loaded = load_model(path, trust_remote_code=True)
    assert loaded.architecture == "TinyRemoteForCausalLM"
    assert (loaded.impl_name, type(loaded.model.hf_model).__name__) == (
        "transformers",
        "TinyRemoteForCausalLM",
    )
    reference = load_model(str(tiny_model_path("llama")), model_impl="native").model
    torch.testing.assert_close(prefill_logits(loaded.model), prefill_logits(reference))
