"""An InternLM-shaped causal LM: the Llama layout with biased q/k/v/o projections, as the hub's
remote code has it; written for meshserve's tests."""

from transformers import LlamaForCausalLM

from .configuration_internlm import InternLMConfig


class InternLMForCausalLM(LlamaForCausalLM):
    config_class = InternLMConfig
