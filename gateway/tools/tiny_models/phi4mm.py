"""Tiny Phi-4-multimodal (Phi4MultimodalForCausalLM): a SigLIP-style tower with dynamic HD
crops and a Conformer audio encoder, both embedded into a Phi-3 LM.

The crop size stays HF's 448 pixels / 14-pixel patches: HF's processor counts an image's tokens
with the fixed 16 x 16 pooled grid of that size (`256 + 1 + ... + 16`), so a smaller crop
would desynchronize the processor's count from the model's features. The tower is one narrow
layer, so a 448 x 448 crop (1024 patches) stays cheap on CPU.
"""

from __future__ import annotations

from pathlib import Path

from gateway.tools.tiny_models.chat_template import build_chat_template
from gateway.tools.tiny_models.named_specials import build_named_tokenizer
from gateway.tools.tiny_models.text import llama_like, special_ids
from gateway.tools.tiny_models.tokenizer import TokenizerSpec
from gateway.tools.tiny_models.weights import finish_lm, model_seed, new_model, save_checkpoint

PHI4MM_IMAGE = "<|image|>"
PHI4MM_AUDIO = "<|audio|>"
PHI4MM_CROP = 448
PHI4MM_MEL_BINS = 80
PHI4MM_POSITIONS = 2048


def build_phi4mm(out: Path) -> None:
    from transformers import (
        Phi4MultimodalConfig,
        Phi4MultimodalFeatureExtractor,
        Phi4MultimodalForCausalLM,
    )

    from protos.hf_processor import processor_class
    from protos.phi4mm_image_processing import Phi4MultimodalImageProcessorTorch

    template = build_chat_template(
        bos=False, image="{{- '<|image|>' -}}", audio="{{- '<|audio|>' -}}"
    )
    spec = TokenizerSpec(
        extra_specials=(PHI4MM_IMAGE, PHI4MM_AUDIO),
        add_bos=False,
        model_max_length=PHI4MM_POSITIONS,
    )
    names = {"image_token": PHI4MM_IMAGE, "audio_token": PHI4MM_AUDIO}
    tokenizer = build_named_tokenizer(spec, template, names)
    # NOTE: one image is 545+ tokens (HF's fixed 16 x 16 global grid), so 2048 positions
    lm = llama_like(len(tokenizer), max_position_embeddings=PHI4MM_POSITIONS)
    config = Phi4MultimodalConfig(
        **{**lm, **special_ids(len(tokenizer))},
        original_max_position_embeddings=PHI4MM_POSITIONS,
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=PHI4MM_CROP,
            crop_size=PHI4MM_CROP,
            patch_size=14,
            image_token_id=tokenizer.convert_tokens_to_ids(PHI4MM_IMAGE),
        ),
        audio_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_blocks=2,
            num_attention_heads=2,
            ext_pw_out_channel=32,
            depthwise_separable_out_channel=32,
            nemo_conv_channels=32,
            input_size=PHI4MM_MEL_BINS,
            audio_token_id=tokenizer.convert_tokens_to_ids(PHI4MM_AUDIO),
        ),
    )
    seed = model_seed("phi4mm")
    model = new_model(Phi4MultimodalForCausalLM, config, seed)
    finish_lm(model, tokenizer, seed=seed)
    image_processor = Phi4MultimodalImageProcessorTorch(
        size={"height": PHI4MM_CROP, "width": PHI4MM_CROP}, patch_size=14, dynamic_hd=4
    )
    processor = processor_class("Phi4MultimodalProcessor")(
        image_processor=image_processor,
        audio_processor=Phi4MultimodalFeatureExtractor(feature_size=PHI4MM_MEL_BINS),
        tokenizer=tokenizer,
        chat_template=template,
    )
    save_checkpoint(out, model, processor)
