"""The LLaVA-NeXT family: LLaVA-NeXT (anyres images), LLaVA-NeXT-Video and LLaVA-OneVision.

Each ships the model's own HF processor with the PIL image backend. Their video processors
need torchvision (absent here), so the video processor's config is written by hand: what
`save_pretrained` of that class writes, read back by our own video preprocessing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gateway.tools.tiny_models.chat_template import build_chat_template
from gateway.tools.tiny_models.text import LLAMA_ROPE, QWEN_ROPE, llama_like, special_ids
from gateway.tools.tiny_models.tokenizer import TokenizerSpec, build_bpe_tokenizer
from gateway.tools.tiny_models.weights import finish_lm, model_seed, new_model, save_checkpoint

PATCH_SIZE = 8
TILE_SIZE = 32  # the vision tower's input size; anyres tiles are this big
# NOTE: anyres picks the best of these (height, width) canvases, then cuts TILE_SIZE tiles.
GRID_PINPOINTS = [[32, 64], [64, 32], [64, 64]]
OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
IMAGE_PART = "{{- '<image>' -}}"
VIDEO_PART = "{{- '<video>' -}}"


def _clip_vision() -> Any:
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=TILE_SIZE,
        patch_size=PATCH_SIZE,
        projection_dim=64,
    )


def _siglip_vision() -> Any:
    from transformers import SiglipVisionConfig

    return SiglipVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=TILE_SIZE,
        patch_size=PATCH_SIZE,
    )


def _tokenizer(specials: tuple[str, ...], video: bool, bos: bool = True) -> Any:
    template = build_chat_template(bos=bos, image=IMAGE_PART, video=VIDEO_PART if video else None)
    spec = TokenizerSpec(extra_specials=specials, add_bos=bos, model_max_length=1024)
    return build_bpe_tokenizer(spec, template)


def _video_config(processor_class: str, video_class: str, **settings: Any) -> dict[str, Any]:
    """What `<video_class>.save_pretrained` writes: BaseVideoProcessor's fields."""
    return {
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_sample_frames": False,
        "image_mean": OPENAI_CLIP_MEAN,
        "image_std": OPENAI_CLIP_STD,
        "processor_class": processor_class,
        "resample": 3,
        "rescale_factor": 1 / 255,
        "video_processor_type": video_class,
        **settings,
    }


def _write_json(path: Path, values: dict[str, Any]) -> None:
    path.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")


def _finish(name: str, model_cls: Any, config: Any, tokenizer: Any) -> Any:
    seed = model_seed(name)
    model = new_model(model_cls, config, seed)
    finish_lm(model, tokenizer, seed=seed)
    return model


def build_llava_next(out: Path) -> None:
    from transformers import (
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextProcessor,
    )
    from transformers.models.llava_next.image_processing_pil_llava_next import (
        LlavaNextImageProcessorPil,
    )

    tokenizer = _tokenizer(("<image>",), video=False)
    config = LlavaNextConfig(
        vision_config=_clip_vision(),
        text_config=LlamaConfig(**llama_like(len(tokenizer), rope_parameters=dict(LLAMA_ROPE))),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=GRID_PINPOINTS,
        image_seq_length=(TILE_SIZE // PATCH_SIZE) ** 2,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        **special_ids(len(tokenizer)),
    )
    model = _finish("llava_next", LlavaNextForConditionalGeneration, config, tokenizer)
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": TILE_SIZE},
        crop_size={"height": TILE_SIZE, "width": TILE_SIZE},
        image_grid_pinpoints=GRID_PINPOINTS,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token="<image>",
        chat_template=tokenizer.chat_template,
    )
    save_checkpoint(out, model, processor)


def build_llava_next_video(out: Path) -> None:
    from transformers import (
        LlamaConfig,
        LlavaNextVideoConfig,
        LlavaNextVideoForConditionalGeneration,
    )
    from transformers.models.llava_next.image_processing_pil_llava_next import (
        LlavaNextImageProcessorPil,
    )

    tokenizer = _tokenizer(("<image>", "<video>"), video=True)
    ids = tokenizer.convert_tokens_to_ids
    config = LlavaNextVideoConfig(
        vision_config=_clip_vision(),
        text_config=LlamaConfig(**llama_like(len(tokenizer), rope_parameters=dict(LLAMA_ROPE))),
        image_token_index=ids("<image>"),
        video_token_index=ids("<video>"),
        image_grid_pinpoints=GRID_PINPOINTS,
        image_seq_length=(TILE_SIZE // PATCH_SIZE) ** 2,
        video_seq_length=(TILE_SIZE // PATCH_SIZE // 2) ** 2,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        spatial_pool_stride=2,
        spatial_pool_mode="average",
        **special_ids(len(tokenizer)),
    )
    model = _finish("llava_next_video", LlavaNextVideoForConditionalGeneration, config, tokenizer)
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": TILE_SIZE},
        crop_size={"height": TILE_SIZE, "width": TILE_SIZE},
        image_grid_pinpoints=GRID_PINPOINTS,
    )
    save_checkpoint(out, model, tokenizer, image_processor)
    processor = {
        "processor_class": "LlavaNextVideoProcessor",
        "patch_size": PATCH_SIZE,
        "vision_feature_select_strategy": "default",
        "num_additional_image_tokens": 1,
        "image_token": "<image>",
        "video_token": "<video>",
    }
    _write_json(out / "processor_config.json", processor)
    video = _video_config(
        "LlavaNextVideoProcessor",
        "LlavaNextVideoVideoProcessor",
        do_center_crop=True,
        do_resize=True,
        default_to_square=False,
        size={"shortest_edge": TILE_SIZE},
        crop_size={"height": TILE_SIZE, "width": TILE_SIZE},
    )
    _write_json(out / "video_preprocessor_config.json", video)


def build_llava_onevision(out: Path) -> None:
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        Qwen2Config,
    )
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    tokenizer = _tokenizer(("<image>", "<video>"), video=True, bos=False)
    ids = tokenizer.convert_tokens_to_ids
    config = LlavaOnevisionConfig(
        vision_config=_siglip_vision(),
        text_config=Qwen2Config(**llama_like(len(tokenizer), rope_parameters=dict(QWEN_ROPE))),
        image_token_index=ids("<image>"),
        video_token_index=ids("<video>"),
        image_grid_pinpoints=GRID_PINPOINTS,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
        **special_ids(len(tokenizer)),
    )
    model = _finish("llava_onevision", LlavaOnevisionForConditionalGeneration, config, tokenizer)
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": TILE_SIZE, "width": TILE_SIZE},
        image_grid_pinpoints=GRID_PINPOINTS,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    save_checkpoint(out, model, tokenizer, image_processor)
    processor = {
        "processor_class": "LlavaOnevisionProcessor",
        "num_image_tokens": (TILE_SIZE // PATCH_SIZE) ** 2,
        "vision_feature_select_strategy": "full",
        "vision_aspect_ratio": "anyres_max_9",
        "image_token": "<image>",
        "video_token": "<video>",
    }
    _write_json(out / "processor_config.json", processor)
    video = _video_config(
        "LlavaOnevisionProcessor",
        "LlavaOnevisionVideoProcessor",
        do_resize=True,
        size={"height": TILE_SIZE, "width": TILE_SIZE},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    _write_json(out / "video_preprocessor_config.json", video)
