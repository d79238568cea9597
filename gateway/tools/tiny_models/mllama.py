"""A tiny Mllama (Llama 3.2 Vision): a tiled vision tower (up to 2 tiles of 16 x 16 pixels, 8 x 8
patches) whose projected states feed the gated cross-attention layers of a Llama language model,
with HF's MllamaProcessor on the PIL image backend."""

from __future__ import annotations

from pathlib import Path

from gateway.tools.tiny_models.chat_template import build_chat_template
from gateway.tools.tiny_models.text import LLAMA_ROPE, llama_like
from gateway.tools.tiny_models.tokenizer import TokenizerSpec, build_bpe_tokenizer
from gateway.tools.tiny_models.weights import finish_lm, model_seed, new_model, save_checkpoint

MLLAMA_MODELS: tuple[str, ...] = ("mllama",)
MLLAMA_TILE_SIZE = 16
MLLAMA_MAX_TILES = 2
MLLAMA_CROSS_LAYERS = (1, 3)


def build_mllama(out: Path) -> None:
    import torch
    from transformers import MllamaConfig, MllamaForConditionalGeneration, MllamaProcessor
    from transformers.models.mllama.image_processing_pil_mllama import MllamaImageProcessorPil

    template = build_chat_template(bos=True, image="{{- '<|image|>' -}}")
    spec = TokenizerSpec(extra_specials=("<|image|>", "<|python_tag|>"), model_max_length=1024)
    tokenizer = build_bpe_tokenizer(spec, template)
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_global_layers=1,
        attention_heads=2,
        intermediate_layers_indices=[0],
        vision_output_dim=64,  # hidden_size x (1 + len(intermediate_layers_indices))
        image_size=MLLAMA_TILE_SIZE,
        patch_size=8,
        max_num_tiles=MLLAMA_MAX_TILES,
        supported_aspect_ratios=[[1, 1], [1, 2], [2, 1]],
    )
    text = llama_like(
        len(tokenizer),
        num_hidden_layers=5,
        rope_parameters=dict(LLAMA_ROPE),
        cross_attention_layers=list(MLLAMA_CROSS_LAYERS),
    )
    config = MllamaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<|image|>"),
    )
    seed = model_seed("mllama")
    model = new_model(MllamaForConditionalGeneration, config, seed)
    finish_lm(model, tokenizer, seed=seed)
    with torch.no_grad():  # NOTE: HF initializes the tanh gates at 0: open them, or the images
        for index in MLLAMA_CROSS_LAYERS:  # would change nothing and a test could not fail
            layer = model.model.language_model.layers[index]
            layer.cross_attn_attn_gate.fill_(0.3)
            layer.cross_attn_mlp_gate.fill_(-0.2)
    image_processor = MllamaImageProcessorPil(
        size={"height": MLLAMA_TILE_SIZE, "width": MLLAMA_TILE_SIZE},
        max_image_tiles=MLLAMA_MAX_TILES,
    )
    processor = MllamaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=template
    )
    save_checkpoint(out, model, processor)
