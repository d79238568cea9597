"""The tiny offline models load with the HF Auto classes and generate sensible greedy output."""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from jinja2.exceptions import TemplateError
from PIL import Image

from gateway.tools import tiny_models as tm

BPE_MODELS = (*tm.TEXT_MODELS, *tm.MULTIMODAL_MODELS, "whisper", "qwen2_cls")
MAX_NEW_TOKENS = 16
SAMPLE_TEXT = "Hello, world! Café 你好 🙂 x = np.zeros((3, 4))\n\tdone 2024."

TinyModel = Callable[[str], Path]


def _user(content: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": content}]


def _new_tokens(
    model: Any, inputs: dict[str, Any], max_new_tokens: int = MAX_NEW_TOKENS
) -> list[int]:
    """Greedy generate; only the new tokens of the single sequence."""
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, inputs["input_ids"].shape[1] :].tolist()


def _assert_good_output(tokens: list[int], tokenizer: Any, expected_len: int) -> None:
    assert len(tokens) == expected_len
    assert len(set(tokens)) >= 3, f"degenerate output {tokens}"
    assert not set(tokens) & set(tokenizer.all_special_ids), f"special token in {tokens}"
    assert tokenizer.unk_token_id not in tokens and tokenizer.pad_token_id not in tokens


def _file_hashes(folder: Path) -> dict[str, str]:
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.iterdir())
        if path.is_file()
    }


# ----------------------------------------------------------------------------- tokenizers


@pytest.mark.parametrize("name", BPE_MODELS)
def test_bpe_tokenizer_layout(tiny_model: TinyModel, name: str) -> None:
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig, PreTrainedTokenizerFast

    path = tiny_model(name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    config = AutoConfig.from_pretrained(path)
    assert tokenizer.convert_tokens_to_ids(list(tm.BASE_SPECIALS)) == list(range(6))
    assert config.get_text_config().vocab_size == len(tokenizer)
    assert 384 <= len(tokenizer) <= 512
    # NOTE: AutoTokenizer rebuilds qwen2 as Qwen2Tokenizer; the ids must not change.
    plain = PreTrainedTokenizerFast.from_pretrained(path)
    ids = tokenizer(SAMPLE_TEXT)["input_ids"]
    assert ids == plain(SAMPLE_TEXT)["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == SAMPLE_TEXT
    generative = name != "qwen2_cls"
    assert (path / "generation_config.json").is_file() is generative
    generation = GenerationConfig.from_pretrained(path) if generative else None
    for field in ("bos_token_id", "eos_token_id", "pad_token_id"):
        expected = getattr(tokenizer, field)
        assert getattr(config.get_text_config(), field) == expected
        assert generation is None or getattr(generation, field) == expected


@pytest.mark.parametrize(("name", "starts_with_bos"), [("llama", True), ("qwen2", False)])
def test_tokenizer_bos_policy(tiny_model: TinyModel, name: str, starts_with_bos: bool) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model(name))
    assert (tokenizer("hello")["input_ids"][0] == tm.BOS_ID) is starts_with_bos
    chat_ids = tokenizer.apply_chat_template(_user("hello"), add_generation_prompt=True)[
        "input_ids"
    ]
    first_ids = [tm.BOS_ID, tm.IM_START_ID] if starts_with_bos else [tm.IM_START_ID]
    assert chat_ids[: len(first_ids)] == first_ids
    assert chat_ids.count(tm.BOS_ID) == int(starts_with_bos)


def test_whisper_specials_sit_at_the_end(tiny_model: TinyModel) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model("whisper"))
    ids = tokenizer.convert_tokens_to_ids(list(tm.WHISPER_SPECIALS))
    assert ids == list(range(len(tokenizer) - len(ids), len(tokenizer)))
    assert ids[-1] == len(tokenizer) - 1  # <|notimestamps|>


def test_bert_tokenizer_gives_segment_ids(tiny_model: TinyModel) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model("bert"))
    encoded = tokenizer("A man is eating food.", "The baby sleeps.")
    assert encoded["input_ids"][0] == tokenizer.cls_token_id == 2
    assert encoded["input_ids"].count(tokenizer.sep_token_id) == 2
    assert tokenizer.pad_token_id == 0
    assert set(encoded["token_type_ids"]) == {0, 1}
    assert tokenizer.unk_token_id not in encoded["input_ids"]


@pytest.mark.parametrize(
    ("name", "loader", "expected_class"),
    [
        ("llava", "AutoImageProcessor", "CLIPImageProcessorPil"),
        ("qwen2_vl", "AutoImageProcessor", "Qwen2VLImageProcessorPil"),
        ("qwen2_audio", "AutoFeatureExtractor", "WhisperFeatureExtractor"),
        ("whisper", "AutoFeatureExtractor", "WhisperFeatureExtractor"),
        ("llava", "AutoProcessor", "LlavaProcessor"),
        ("qwen2_audio", "AutoProcessor", "Qwen2AudioProcessor"),
        ("whisper", "AutoProcessor", "WhisperProcessor"),
    ],
)
def test_user_style_loaders(
    tiny_model: TinyModel, name: str, loader: str, expected_class: str
) -> None:
    import transformers

    loaded = getattr(transformers, loader).from_pretrained(tiny_model(name))
    assert type(loaded).__name__ == expected_class
    feature_extractor = getattr(loaded, "feature_extractor", loaded)
    if "FeatureExtractor" in type(feature_extractor).__name__:
        assert feature_extractor.feature_size == tm.AUDIO_MEL_BINS
        assert feature_extractor.nb_max_frames == 2 * tm.AUDIO_SOURCE_POSITIONS


def test_qwen2_vl_video_config_agrees_with_image_processor(tiny_model: TinyModel) -> None:
    from transformers import AutoImageProcessor

    path = tiny_model("qwen2_vl")
    image = json.loads(AutoImageProcessor.from_pretrained(path).to_json_string())
    video = json.loads((path / "video_preprocessor_config.json").read_text())
    assert video["video_processor_type"] == "Qwen2VLVideoProcessor"
    for key in (
        "patch_size",
        "merge_size",
        "temporal_patch_size",
        "image_mean",
        "image_std",
        "size",
    ):
        assert video[key] == image[key], key


# ----------------------------------------------------------------------------- chat templates


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("llama", "Hi", "<s><|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
        ("qwen2", [{"type": "text", "text": "Hi"}], "<|im_start|>user\nHi<|im_end|>\n"),
        (
            "llava",
            [{"type": "image"}, {"type": "text", "text": "What is this?"}],
            "<s><|im_start|>user\n<image>What is this?<|im_end|>\n",
        ),
        (
            "qwen2_vl",
            [{"type": "image"}, {"type": "video"}, {"type": "text", "text": "Compare."}],
            "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
            "<|vision_start|><|video_pad|><|vision_end|>Compare.<|im_end|>\n",
        ),
        (
            "qwen2_audio",
            [{"type": "audio"}, {"type": "audio"}, {"type": "text", "text": "Same?"}],
            "<|im_start|>user\nAudio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
            "Audio 2: <|audio_bos|><|AUDIO|><|audio_eos|>\nSame?<|im_end|>\n",
        ),
    ],
)
def test_chat_template_text(tiny_model: TinyModel, name: str, content: Any, expected: str) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model(name))
    generation_prompt = isinstance(content, str)
    text = tokenizer.apply_chat_template(
        _user(content), tokenize=False, add_generation_prompt=generation_prompt
    )
    assert text == expected


@pytest.mark.parametrize(("name", "part"), [("llama", "image"), ("llava", "audio")])
def test_chat_template_rejects_unsupported_media(
    tiny_model: TinyModel, name: str, part: str
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model(name))
    with pytest.raises(TemplateError, match=f"does not accept {part}"):
        tokenizer.apply_chat_template(_user([{"type": part}]), tokenize=False)


# ----------------------------------------------------------------------------- text models


@pytest.mark.parametrize("name", tm.TEXT_MODELS)
def test_text_model_greedy_generate(tiny_model: TinyModel, name: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_model(name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    inputs = tokenizer.apply_chat_template(
        _user("Describe the weather."),
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
    )
    model = AutoModelForCausalLM.from_pretrained(path)
    tokens = _new_tokens(model, inputs)
    _assert_good_output(tokens, tokenizer, MAX_NEW_TOKENS)
    assert _new_tokens(model, inputs) == tokens
    assert _new_tokens(AutoModelForCausalLM.from_pretrained(path), inputs) == tokens


@pytest.mark.parametrize("name", tm.TEXT_MODELS)
def test_text_model_has_clear_greedy_winner(tiny_model: TinyModel, name: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_model(name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    inputs = tokenizer(
        ["The quick brown fox", "Paris is the capital of"], return_tensors="pt", padding=True
    )
    with torch.no_grad():
        logits = model(**inputs).logits  # [batch, seq, vocab]
    top2 = logits[inputs["attention_mask"].bool()].topk(2, dim=-1).values
    assert (top2[:, 0] - top2[:, 1]).min() > 1e-4  # NOTE: default HF init gave gaps of 2e-6


# ----------------------------------------------------------------------------- LLaVA


def _square_image(color: tuple[int, int, int], size: int) -> Image.Image:
    pixels = np.zeros((size, size, 3), dtype=np.uint8)
    pixels[...] = color
    pixels[size // 4 : size // 2, size // 4 :] = (255 - np.array(color)).astype(np.uint8)
    return Image.fromarray(pixels)


def _llava_inputs(processor: Any, image: Image.Image) -> dict[str, Any]:
    messages = _user([{"type": "image", "image": image}, {"type": "text", "text": "What is this?"}])
    return processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )


def test_llava_generate_with_image(tiny_model: TinyModel) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = tiny_model("llava")
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path)
    inputs = _llava_inputs(processor, _square_image((200, 30, 30), tm.CLIP_IMAGE_SIZE))
    input_ids = inputs["input_ids"][0].tolist()
    assert input_ids.count(model.config.image_token_index) == tm.LLAVA_IMAGE_TOKENS == 16
    assert input_ids.count(tm.BOS_ID) == 1 and input_ids[0] == tm.BOS_ID
    assert tuple(inputs["pixel_values"].shape) == (1, 3, 32, 32)
    tokens = _new_tokens(model, inputs)
    _assert_good_output(tokens, processor.tokenizer, MAX_NEW_TOKENS)
    assert _new_tokens(model, inputs) == tokens
    other = _llava_inputs(processor, _square_image((20, 180, 90), tm.CLIP_IMAGE_SIZE))
    with torch.no_grad():
        assert not torch.allclose(model(**inputs).logits[0, -1], model(**other).logits[0, -1])


# ----------------------------------------------------------------------------- Qwen2-VL


def _expand_qwen2_vl_pads(
    input_ids: list[int],
    config: Any,
    image_grid_thw: torch.Tensor | None,
    video_grid_thw: torch.Tensor | None,
) -> dict[str, torch.Tensor]:
    """What Qwen2VLProcessor does (it needs torchvision): one pad per merged patch, plus types."""
    merge_area = config.vision_config.spatial_merge_size**2
    counts = {
        config.image_token_id: iter(
            [] if image_grid_thw is None else image_grid_thw.prod(-1) // merge_area
        ),
        config.video_token_id: iter(
            [] if video_grid_thw is None else video_grid_thw.prod(-1) // merge_area
        ),
    }
    token_types = {config.image_token_id: 1, config.video_token_id: 2}
    ids: list[int] = []
    types: list[int] = []
    for token in input_ids:
        repeat = int(next(counts[token])) if token in counts else 1
        ids += [token] * repeat
        types += [token_types.get(token, 0)] * repeat
    return {
        "input_ids": torch.tensor([ids]),
        "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
        "mm_token_type_ids": torch.tensor([types]),
    }


def _video_patchify(frames: np.ndarray, preprocessor: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A port of Qwen2VLVideoProcessor rescale/normalize + patchify for frames at target size.

    Args:
        frames: [T, H, W, 3] uint8, H and W multiples of patch_size * merge_size.
    """
    patch, merge, temporal = (
        preprocessor[k] for k in ("patch_size", "merge_size", "temporal_patch_size")
    )
    mean = torch.tensor(preprocessor["image_mean"]).view(1, 3, 1, 1)
    std = torch.tensor(preprocessor["image_std"]).view(1, 3, 1, 1)
    video = torch.from_numpy(frames).permute(0, 3, 1, 2).float() * preprocessor["rescale_factor"]
    video = ((video - mean) / std)[None]  # [1, T, C, H, W]
    if pad := -video.shape[1] % temporal:
        video = torch.cat([video, video[:, -1:].expand(-1, pad, -1, -1, -1)], dim=1)
    _, num_frames, channels, height, width = video.shape
    grid_t, grid_h, grid_w = num_frames // temporal, height // patch, width // patch
    patches = video.view(
        1, grid_t, temporal, channels, grid_h // merge, merge, patch, grid_w // merge, merge, patch
    )
    patches = patches.permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
    flat = patches.reshape(grid_t * grid_h * grid_w, channels * temporal * patch * patch)
    return {"pixel_values_videos": flat, "video_grid_thw": torch.tensor([[grid_t, grid_h, grid_w]])}


def _qwen2_vl_prompt_ids(tokenizer: Any, parts: list[dict[str, Any]]) -> list[int]:
    messages = _user([*parts, {"type": "text", "text": "Describe it."}])
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]


def test_qwen2_vl_generate_with_image(tiny_model: TinyModel) -> None:
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

    path = tiny_model("qwen2_vl")
    tokenizer = AutoTokenizer.from_pretrained(path)
    image_processor = AutoImageProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path)
    pixels = image_processor(images=[_square_image((40, 90, 220), 56)], return_tensors="pt")
    assert pixels["image_grid_thw"].tolist() == [[1, 4, 4]]
    prompt = _qwen2_vl_prompt_ids(tokenizer, [{"type": "image"}])
    inputs = _expand_qwen2_vl_pads(prompt, model.config, pixels["image_grid_thw"], None) | dict(
        pixels
    )
    assert inputs["input_ids"][0].tolist().count(model.config.image_token_id) == 4
    tokens = _new_tokens(model, inputs)
    _assert_good_output(tokens, tokenizer, MAX_NEW_TOKENS)
    assert _new_tokens(model, inputs) == tokens


def test_qwen2_vl_generate_with_video(tiny_model: TinyModel) -> None:
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    path = tiny_model("qwen2_vl")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path)
    preprocessor = json.loads((path / "video_preprocessor_config.json").read_text())
    frames = np.stack(
        [np.asarray(_square_image((30 * i, 100, 200 - 30 * i), 56)) for i in range(4)]
    )
    video = _video_patchify(frames, preprocessor)
    assert video["video_grid_thw"].tolist() == [[2, 4, 4]]
    assert tuple(video["pixel_values_videos"].shape) == (32, 3 * 2 * 14 * 14)
    prompt = _qwen2_vl_prompt_ids(tokenizer, [{"type": "video"}])
    inputs = _expand_qwen2_vl_pads(prompt, model.config, None, video["video_grid_thw"]) | video
    assert inputs["mm_token_type_ids"][0].tolist().count(2) == 8
    tokens = _new_tokens(model, inputs)
    _assert_good_output(tokens, tokenizer, MAX_NEW_TOKENS)
    assert _new_tokens(model, inputs) == tokens


# ----------------------------------------------------------------------------- audio


def _tone(seconds: float, hertz: float = 440.0) -> np.ndarray:
    time = np.arange(int(seconds * tm.SAMPLING_RATE), dtype=np.float32) / tm.SAMPLING_RATE
    return (0.5 * np.sin(2 * math.pi * hertz * time)).astype(np.float32)


def test_qwen2_audio_generate_with_tone(tiny_model: TinyModel) -> None:
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    path = tiny_model("qwen2_audio")
    processor = AutoProcessor.from_pretrained(path)
    model = Qwen2AudioForConditionalGeneration.from_pretrained(path)
    messages = _user([{"type": "audio"}, {"type": "text", "text": "What sound is this?"}])
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(
        text=[prompt], audio=[_tone(1.3)], sampling_rate=tm.SAMPLING_RATE, return_tensors="pt"
    )
    assert tuple(inputs["input_features"].shape) == (1, tm.AUDIO_MEL_BINS, 200)
    assert int(inputs["feature_attention_mask"].sum()) == 130
    assert inputs["input_ids"][0].tolist().count(model.config.audio_token_index) == 32
    tokens = _new_tokens(model, dict(inputs))
    _assert_good_output(tokens, processor.tokenizer, MAX_NEW_TOKENS)
    assert _new_tokens(model, dict(inputs)) == tokens


def test_whisper_generate_matches_greedy_loop(tiny_model: TinyModel) -> None:
    from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

    path = tiny_model("whisper")
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForSpeechSeq2Seq.from_pretrained(path)
    features = processor(
        _tone(1.5, 330.0), sampling_rate=tm.SAMPLING_RATE, return_tensors="pt"
    ).input_features
    assert tuple(features.shape) == (1, tm.AUDIO_MEL_BINS, 200)
    with torch.no_grad():
        out = model.generate(
            features, language="en", task="transcribe", max_new_tokens=12, do_sample=False
        )
    tokens = out[0].tolist()
    _assert_good_output(tokens, processor.tokenizer, 12)
    ids = processor.tokenizer.convert_tokens_to_ids
    decoder_ids = [
        ids(t) for t in ("<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>")
    ]
    with torch.no_grad():
        for _ in range(12):
            logits = model(
                input_features=features, decoder_input_ids=torch.tensor([decoder_ids])
            ).logits
            decoder_ids.append(int(logits[0, -1].argmax()))
    assert decoder_ids[4:] == tokens


# ----------------------------------------------------------------------------- encoders


def test_bert_forward_honours_padding(tiny_model: TinyModel) -> None:
    from transformers import AutoModel, AutoTokenizer

    path = tiny_model("bert")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path)
    texts = ["A man is eating food.", "The quick brown fox jumps over the lazy dog."]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    single = tokenizer(texts[0], return_tensors="pt")
    with torch.no_grad():
        batched = model(**batch).last_hidden_state  # [2, seq, 64]
        alone = model(**single).last_hidden_state  # [1, seq0, 64]
    assert batched.shape[-1] == 64 and batched.shape[0] == 2
    assert torch.allclose(batched[0, : alone.shape[1]], alone[0], atol=1e-5)
    assert not torch.allclose(batched[0, 0], batched[1, 0])


def test_bert_classifier(tiny_model: TinyModel) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = tiny_model("bert_cls")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path)
    assert model.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    batch = tokenizer(
        ["Good morning!", "It was the worst of times."], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        logits = model(**batch).logits
    assert tuple(logits.shape) == (2, 3)
    assert not torch.allclose(logits[0], logits[1])


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_qwen2_classifier_pools_last_real_token(tiny_model: TinyModel, padding_side: str) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = tiny_model("qwen2_cls")
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side=padding_side)
    model = AutoModelForSequenceClassification.from_pretrained(path)
    assert model.config.pad_token_id == tm.PAD_ID and model.config.num_labels == 2
    texts = ["Good morning!", "It was the best of times, it was the worst of times."]
    with torch.no_grad():
        batched = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
        alone = [model(**tokenizer(text, return_tensors="pt")).logits[0] for text in texts]
    assert torch.allclose(batched, torch.stack(alone), atol=1e-4)


def test_minilm_embeddings_rank_similar_sentences() -> None:
    from transformers import AutoModel, AutoTokenizer

    path = tm.minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path)
    texts = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The girl is carrying a baby.",
    ]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state  # [3, seq, 384]
    mask = batch["attention_mask"].unsqueeze(-1).float()
    embeddings = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    assert embeddings.shape == (3, 384)
    food_bread, food_baby = (
        float(embeddings[0] @ embeddings[1]),
        float(embeddings[0] @ embeddings[2]),
    )
    assert food_bread > 0.6 and food_bread > food_baby + 0.3


# ----------------------------------------------------------------------------- building + cache


@pytest.mark.parametrize("name", ["llama", "qwen2_vl", "whisper", "bert", "bart", "florence2"])
def test_builds_are_byte_identical(tmp_path: Path, name: str) -> None:
    first = tm.build_model(name, tmp_path / "a")
    second = tm.build_model(name, tmp_path / "b")
    hashes = _file_hashes(first)
    assert "model.safetensors" in hashes and "tokenizer.json" in hashes
    assert hashes == _file_hashes(second)


def test_cache_honours_env_and_builds_once_across_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESHSERVE_TEST_CACHE", str(tmp_path))
    assert tm.cache_root() == tmp_path / tm.BUILDER_VERSION
    results: list[Path] = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            results.append(tm.tiny_model_path("gpt2"))
        except BaseException as error:  # noqa: BLE001 - re-raised by the assert below
            errors.append(error)

    threads = [threading.Thread(target=build) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert results == [tmp_path / tm.BUILDER_VERSION / "gpt2"] * 4
    leftovers = [p.name for p in (tmp_path / tm.BUILDER_VERSION).iterdir() if ".tmp-" in p.name]
    assert leftovers == []
    assert (results[0] / "model.safetensors").is_file()


def test_unknown_model_name_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="unknown tiny model 'nope'"):
        tm.build_model("nope", tmp_path)
