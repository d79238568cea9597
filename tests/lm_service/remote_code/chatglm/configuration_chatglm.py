"""A ChatGLM2/3-shaped config, written for meshserve's remote-code tests (not THUDM's code)."""

from transformers import PretrainedConfig


class ChatGLMConfig(PretrainedConfig):
    model_type = "chatglm"

    def __init__(
        self,
        num_layers=2,
        padded_vocab_size=448,
        hidden_size=64,
        ffn_hidden_size=128,
        kv_channels=16,
        num_attention_heads=4,
        multi_query_group_num=2,
        seq_length=512,
        layernorm_epsilon=1e-5,
        add_qkv_bias=True,
        rope_ratio=1.0,
        tie_word_embeddings=False,
        **kwargs,
    ):
        self.num_layers = num_layers
        self.num_hidden_layers = num_layers
        self.padded_vocab_size = padded_vocab_size
        self.vocab_size = padded_vocab_size
        self.hidden_size = hidden_size
        self.ffn_hidden_size = ffn_hidden_size
        self.kv_channels = kv_channels
        self.num_attention_heads = num_attention_heads
        self.multi_query_group_num = multi_query_group_num
        self.seq_length = seq_length
        self.layernorm_epsilon = layernorm_epsilon
        self.add_qkv_bias = add_qkv_bias
        self.rope_ratio = rope_ratio
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
