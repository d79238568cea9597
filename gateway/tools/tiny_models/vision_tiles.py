"""Models that cut an image into tiles: Idefics3 (row/col tags), InternVL (-hf layout) and Aria
(MoE language model), each with its own HF processor on the PIL image backend."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gateway.tools.tiny_models.chat_template import build_chat_template
from gateway.tools.tiny_models.text import LLAMA_ROPE, QWEN_ROPE, llama_like, special_ids
from gateway.tools.tiny_models.tokenizer import TokenizerSpec, build_bpe_tokenizer
from gateway.tools.tiny_models.vision_llava_next import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from gateway.tools.tiny_models.weights import finish_lm, model_seed, new_model, save_checkpoint

TILE_SIZE = 32
PATCH_SIZE = 8
SMALL_VISION = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4
)
# Idefics3 tags each tile with <row_i_col_j> (up to 6 x 6) and the thumbnail with <global-img>.
IDEFICS3_SPECIALS: tuple[str, ...] = (
    "<fake_token_around_image>",
    "<image>",
    "<end_of_utterance>",
    "<global-img>",
    *(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)),
)
INTERNVL_NAMED: tuple[tuple[str, str], ...] = (
    ("start_image_token", "<img>"),
    ("end_image_token", "</img>"),
    ("context_image_token", "<IMG_CONTEXT>"),
    ("video_token", "<video>"),
)
# Aria's processor resizes every image to 980 (its images_kwargs default); a 70-pixel patch
# keeps the tiny tower at 14 x 14 patches, which the projector turns into ARIA_QUERIES rows.
ARIA_IMAGE_SIZE = 980
ARIA_PATCH_SIZE = 70
ARIA_QUERIES = 16


def _finish(name: str, model_cls: Any, config: Any, tokenizer: Any) -> Any:
    seed = model_seed(name)
    model = new_model(model_cls, config, seed)
    finish_lm(model, tokenizer, seed=seed)
    return model


def build_idefics3(out: Path) -> None:
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3Processor,
        LlamaConfig,
    )
    from transformers.models.idefics3.image_processing_pil_idefics3 import (
        Idefics3ImageProcessorPil,
    )

    template = build_chat_template(bos=True, image="{{- '<image>' -}}")
    spec = TokenizerSpec(extra_specials=IDEFICS3_SPECIALS, model_max_length=1024)
    tokenizer = build_bpe_tokenizer(spec, template)
    scale_factor = 2
    config = Idefics3Config(
        vision_config=dict(SMALL_VISION, image_size=TILE_SIZE, patch_size=PATCH_SIZE),
        text_config=LlamaConfig(**llama_like(len(tokenizer), rope_parameters=dict(LLAMA_ROPE))),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=scale_factor,
        **special_ids(len(tokenizer)),
    )
    model = _finish("idefics3", Idefics3ForConditionalGeneration, config, tokenizer)
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": 2 * TILE_SIZE},
        max_image_size={"longest_edge": TILE_SIZE},
        do_image_splitting=True,
    )
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=(TILE_SIZE // PATCH_SIZE) ** 2 // scale_factor**2,
        chat_template=template,
    )
    save_checkpoint(out, model, processor)


def build_internvl(out: Path) -> None:
    from transformers import (
        InternVLConfig,
        InternVLForConditionalGeneration,
        Qwen2Config,
    )
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import (
        GotOcr2ImageProcessorPil,
    )

    # NOTE: as the -hf checkpoints' templates, an image part is the context token itself
    template = build_chat_template(
        bos=False, image="{{- '<IMG_CONTEXT>\\n' -}}", video="{{- '<video>\\n' -}}"
    )
    specials = tuple(token for _, token in INTERNVL_NAMED)
    spec = TokenizerSpec(
        extra_specials=specials, add_bos=False, model_max_length=1024, named_specials=INTERNVL_NAMED
    )
    tokenizer = build_bpe_tokenizer(spec, template)
    text = llama_like(len(tokenizer), rope_parameters=dict(QWEN_ROPE), tie_word_embeddings=True)
    config = InternVLConfig(
        vision_config=dict(SMALL_VISION, image_size=TILE_SIZE, patch_size=PATCH_SIZE),
        text_config=Qwen2Config(**text),
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=(TILE_SIZE // PATCH_SIZE) ** 2 // 4,
        downsample_ratio=0.5,
        tie_word_embeddings=True,
        **special_ids(len(tokenizer)),
    )
    model = _finish("internvl", InternVLForConditionalGeneration, config, tokenizer)
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": TILE_SIZE, "width": TILE_SIZE},
        crop_to_patches=True,
        min_patches=1,
        max_patches=4,
    )
    save_checkpoint(out, model, tokenizer, image_processor)
    processor = {
        "processor_class": "InternVLProcessor",
        "image_seq_length": config.image_seq_length,
    }
    (out / "processor_config.json").write_text(json.dumps(processor, indent=2) + "\n")
    video = {
        "processor_class": "InternVLProcessor",
        "video_processor_type": "InternVLVideoProcessor",
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "do_sample_frames": False,
        "image_mean": OPENAI_CLIP_MEAN,
        "image_std": OPENAI_CLIP_STD,
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"height": TILE_SIZE, "width": TILE_SIZE},
    }
    (out / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2) + "\n")


def build_aria(out: Path) -> None:
    from transformers import AriaConfig, AriaForConditionalGeneration, AriaProcessor
    from transformers.models.aria.image_processing_pil_aria import AriaImageProcessorPil

    template = build_chat_template(bos=True, image="{{- '<|img|>' -}}")
    spec = TokenizerSpec(extra_specials=("<|img|>",), named_specials=(("image_token", "<|img|>"),))
    tokenizer = build_bpe_tokenizer(spec, template)
    patches = (ARIA_IMAGE_SIZE // ARIA_PATCH_SIZE) ** 2
    text = llama_like(
        len(tokenizer),
        rope_parameters=dict(LLAMA_ROPE),
        moe_num_experts=4,
        moe_topk=2,
        moe_num_shared_experts=1,
    )
    config = AriaConfig(
        vision_config=dict(SMALL_VISION, image_size=ARIA_IMAGE_SIZE, patch_size=ARIA_PATCH_SIZE),
        text_config=dict(text, model_type="aria_text"),
        image_token_index=tokenizer.convert_tokens_to_ids("<|img|>"),
        projector_patch_to_query_dict={patches: ARIA_QUERIES},
        **special_ids(len(tokenizer)),
    )
    model = _finish("aria", AriaForConditionalGeneration, config, tokenizer)
    image_processor = AriaImageProcessorPil(
        max_image_size=ARIA_IMAGE_SIZE, min_image_size=ARIA_IMAGE_SIZE // 2
    )
    processor = AriaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=template,
        size_conversion={ARIA_IMAGE_SIZE // 2: ARIA_QUERIES // 4, ARIA_IMAGE_SIZE: ARIA_QUERIES},
    )
    save_checkpoint(out, model, processor)
