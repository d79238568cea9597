"""Vision-language models: LLaVA (CLIP tower) and Qwen2-VL (images and videos), with processors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gateway.tools.tiny_models.chat_template import (
    LLAVA_IMAGE_PART,
    QWEN2_VL_IMAGE_PART,
    QWEN2_VL_VIDEO_PART,
    build_chat_template,
)
from gateway.tools.tiny_models.text import LLAMA_ROPE, QWEN_ROPE, llama_like, special_ids
from gateway.tools.tiny_models.tokenizer import TokenizerSpec, build_bpe_tokenizer
from gateway.tools.tiny_models.weights import finish_lm, model_seed, new_model, save_checkpoint

# Qwen2.5-VL is built in memory by the tests that need it (no saved checkpoint): its tiny
# vision tower, with 2.5-VL's window attention and one full-attention block.
QWEN2_5_VL_VISION = dict(
    depth=2,
    hidden_size=64,
    intermediate_size=128,
    num_heads=4,
    out_hidden_size=64,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=56,
    fullatt_block_indexes=[1],
    tokens_per_second=2,
)
LLAVA_SPECIALS: tuple[str, ...] = ("<image>",)
QWEN2_VL_SPECIALS: tuple[str, ...] = (
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
CLIP_IMAGE_SIZE = 32
CLIP_PATCH_SIZE = 8
LLAVA_IMAGE_TOKENS = (CLIP_IMAGE_SIZE // CLIP_PATCH_SIZE) ** 2
QWEN2_VL_MIN_PIXELS = 56 * 56
QWEN2_VL_MAX_PIXELS = 112 * 112
OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def build_llava(out: Path) -> None:
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    template = build_chat_template(bos=True, image=LLAVA_IMAGE_PART)
    tokenizer = build_bpe_tokenizer(TokenizerSpec(extra_specials=LLAVA_SPECIALS), template)
    vision = CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=CLIP_IMAGE_SIZE,
        patch_size=CLIP_PATCH_SIZE,
        projection_dim=64,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=LlamaConfig(**llama_like(len(tokenizer), rope_parameters=dict(LLAMA_ROPE))),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=LLAVA_IMAGE_TOKENS,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        **special_ids(len(tokenizer)),
    )
    seed = model_seed("llava")
    model = new_model(LlavaForConditionalGeneration, config, seed)
    finish_lm(model, tokenizer, seed=seed)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": CLIP_IMAGE_SIZE},
        crop_size={"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE},
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=CLIP_PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token="<image>",
        chat_template=template,
    )
    save_checkpoint(out, model, processor)


def qwen2_vl_video_preprocessor_config() -> dict[str, Any]:
    """What Qwen2VLVideoProcessor.save_pretrained writes; built by hand (it needs torchvision)."""
    return {
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "do_sample_frames": False,
        "image_mean": OPENAI_CLIP_MEAN,
        "image_std": OPENAI_CLIP_STD,
        "max_frames": 768,
        "merge_size": 2,
        "min_frames": 4,
        "patch_size": 14,
        "processor_class": "Qwen2VLProcessor",
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"longest_edge": QWEN2_VL_MAX_PIXELS, "shortest_edge": QWEN2_VL_MIN_PIXELS},
        "temporal_patch_size": 2,
        "video_processor_type": "Qwen2VLVideoProcessor",
    }


def qwen2_vl_vision_config(depth: int = 2, width: int = 64, out_size: int = 64) -> dict[str, Any]:
    """A tiny Qwen2-VL vision tower: 14-pixel patches, 2x2 merge, 2 frames per temporal patch."""
    return dict(
        depth=depth,
        embed_dim=width,
        hidden_size=out_size,
        num_heads=4,
        mlp_ratio=2,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )


def build_qwen2_vl(out: Path) -> None:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    template = build_chat_template(bos=False, image=QWEN2_VL_IMAGE_PART, video=QWEN2_VL_VIDEO_PART)
    spec = TokenizerSpec(extra_specials=QWEN2_VL_SPECIALS, add_bos=False, model_max_length=1024)
    tokenizer = build_bpe_tokenizer(spec, template)
    rope = dict(QWEN_ROPE, mrope_section=[2, 3, 3])  # NOTE: sums to head_dim / 2 = 8
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2VLConfig(
        text_config=llama_like(len(tokenizer), max_position_embeddings=1024, rope_parameters=rope),
        vision_config=qwen2_vl_vision_config(),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        **special_ids(len(tokenizer)),
    )
    seed = model_seed("qwen2_vl")
    model = new_model(Qwen2VLForConditionalGeneration, config, seed)
    finish_lm(model, tokenizer, seed=seed)
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": QWEN2_VL_MIN_PIXELS, "longest_edge": QWEN2_VL_MAX_PIXELS},
        patch_size=14,
        merge_size=2,
        temporal_patch_size=2,
    )
    save_checkpoint(out, model, tokenizer, image_processor)
    video_config = json.dumps(qwen2_vl_video_preprocessor_config(), indent=2, sort_keys=True)
    (out / "video_preprocessor_config.json").write_text(video_config + "\n")
