"""An Aquila-shaped config (Llama layout), written for meshserve's tests."""

from transformers import LlamaConfig

TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=512,
    tie_word_embeddings=False,
)


class AquilaConfig(LlamaConfig):
    model_type = "aquila"

    def __init__(self, bias=False, **kwargs):
        self.bias = bias
        super().__init__(**{**TINY, "attention_bias": bias, **kwargs})
