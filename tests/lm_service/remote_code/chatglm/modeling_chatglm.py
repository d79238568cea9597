"""A ChatGLM2/3-shaped causal LM (`transformer.embedding`, `transformer.encoder.layers`, fused
`query_key_value` with bias and multi-query groups, rotary on half of each head in interleaved
pairs, fused SwiGLU `dense_h_to_4h`, `transformer.output_layer`), written for meshserve's
remote-code tests; attention goes through ALL_ATTENTION_FUNCTIONS."""

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration_chatglm import ChatGLMConfig


class RMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, hidden_states):
        dtype = hidden_states.dtype
        variance = hidden_states.float().pow(2).mean(-1, keepdim=True)
        return self.weight * (hidden_states * torch.rsqrt(variance + self.eps)).to(dtype)


def rotary_cache(config, position_ids, dtype):
    """[B, L, rot_dim / 2, 2] (cos, sin) over the first half of each head."""
    rot_dim = config.kv_channels // 2
    base = 10000.0 * config.rope_ratio
    inv_freq = 1.0 / (base ** (torch.arange(0, rot_dim, 2).float() / rot_dim))
    angles = position_ids[..., None].float() * inv_freq
    return torch.stack((angles.cos(), angles.sin()), dim=-1).to(dtype)


def apply_rotary(x, cache):
    """x [B, H, L, D]: pairs (0, 1), (2, 3), ... of the first D / 2 channels are rotated."""
    rot_dim = cache.shape[-2] * 2
    rotated, passed = x[..., :rot_dim], x[..., rot_dim:]
    pairs = rotated.reshape(*rotated.shape[:-1], rot_dim // 2, 2)
    cos, sin = cache[:, None, :, :, 0], cache[:, None, :, :, 1]  # [B, 1, L, rot_dim / 2]
    out = torch.stack(
        (pairs[..., 0] * cos - pairs[..., 1] * sin, pairs[..., 1] * cos + pairs[..., 0] * sin),
        dim=-1,
    )
    return torch.cat((out.flatten(-2), passed), dim=-1)


class SelfAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.multi_query_group_num
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.head_dim = config.kv_channels
        self.scaling = self.head_dim**-0.5
        self.is_causal = True
        width = (self.num_heads + 2 * self.num_key_value_heads) * self.head_dim
        self.query_key_value = nn.Linear(config.hidden_size, width, bias=config.add_qkv_bias)
        self.dense = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)

    def forward(self, hidden_states, rotary, attention_mask=None, cache=None, **kwargs):
        batch, length, _ = hidden_states.shape
        q_width = self.num_heads * self.head_dim
        kv_width = self.num_key_value_heads * self.head_dim
        query, key, value = self.query_key_value(hidden_states).split(
            [q_width, kv_width, kv_width], dim=-1
        )
        query = query.view(batch, length, -1, self.head_dim).transpose(1, 2)
        key = key.view(batch, length, -1, self.head_dim).transpose(1, 2)
        value = value.view(batch, length, -1, self.head_dim).transpose(1, 2)
        query, key = apply_rotary(query, rotary), apply_rotary(key, rotary)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)
        attention = ALL_ATTENTION_FUNCTIONS[self.config._attn_implementation]
        out, _ = attention(
            self, query, key, value, attention_mask, scaling=self.scaling, dropout=0.0, **kwargs
        )
        return self.dense(out.reshape(batch, length, -1))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(config.hidden_size, 2 * config.ffn_hidden_size, bias=False)
        self.dense_4h_to_h = nn.Linear(config.ffn_hidden_size, config.hidden_size, bias=False)

    def forward(self, x):
        gate, up = self.dense_h_to_4h(x).chunk(2, dim=-1)
        return self.dense_4h_to_h(nn.functional.silu(gate) * up)


class GLMBlock(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.layernorm_epsilon)
        self.self_attention = SelfAttention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.layernorm_epsilon)
        self.mlp = MLP(config)

    def forward(self, hidden_states, **kwargs):
        hidden_states = hidden_states + self.self_attention(
            self.input_layernorm(hidden_states), **kwargs
        )
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class GLMTransformer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layers = nn.ModuleList([GLMBlock(config, i) for i in range(config.num_layers)])
        self.final_layernorm = RMSNorm(config.hidden_size, config.layernorm_epsilon)

    def forward(self, hidden_states, **kwargs):
        for layer in self.layers:
            hidden_states = layer(hidden_states, **kwargs)
        return self.final_layernorm(hidden_states)


class Embedding(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.padded_vocab_size, config.hidden_size)

    def forward(self, input_ids):
        return self.word_embeddings(input_ids)


class ChatGLMPreTrainedModel(PreTrainedModel):
    config_class = ChatGLMConfig
    base_model_prefix = "transformer"
    _no_split_modules = ["GLMBlock"]
    _supports_attention_backend = True
    _supports_sdpa = True


class ChatGLMModel(ChatGLMPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.embedding = Embedding(config)
        self.encoder = GLMTransformer(config)
        self.output_layer = nn.Linear(config.hidden_size, config.padded_vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.embedding.word_embeddings

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        cache=None,
        inputs_embeds=None,
        use_cache=None,
        **kwargs,
    ):
        cache = kwargs.pop("past_key_values", cache)
        if inputs_embeds is None:
            inputs_embeds = self.embedding(input_ids)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        if position_ids is None:
            past = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device)[None]
            position_ids = position_ids + past
        mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            cache=cache,
            position_ids=position_ids,
        )
        rotary = rotary_cache(self.config, position_ids, inputs_embeds.dtype)
        hidden_states = self.encoder(inputs_embeds, rotary=rotary, attention_mask=mask, cache=cache)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, cache=cache)


class ChatGLMForConditionalGeneration(ChatGLMPreTrainedModel, GenerationMixin):
    def __init__(self, config):
        super().__init__(config)
        self.transformer = ChatGLMModel(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.transformer.embedding.word_embeddings

    def get_output_embeddings(self):
        return self.transformer.output_layer

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, **kwargs):
        cache = kwargs.pop("past_key_values", cache)
        kwargs.pop("return_dict", None)
        out = self.transformer(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            **kwargs,
        )
        logits = self.transformer.output_layer(out.last_hidden_state).float()
        return CausalLMOutputWithPast(logits=logits, cache=out.cache)
