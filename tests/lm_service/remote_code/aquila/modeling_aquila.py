"""An Aquila-shaped causal LM: the Llama layout, as the hub's
remote code has it; written for meshserve's tests."""

from transformers import LlamaForCausalLM

from .configuration_aquila import AquilaConfig


class AquilaForCausalLM(LlamaForCausalLM):
    config_class = AquilaConfig
