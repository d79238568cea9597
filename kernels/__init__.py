"""kernels: paged KV write, paged attention, rotary, norms and activations.

Each op has a torch reference that runs on any device (the ground truth in tests) and, where it
pays, a fast path chosen at run time (flash-attn on CUDA, imported lazily).
"""

from kernels.activation import gelu_tanh_and_mul, silu_and_mul
from kernels.attention import AttentionBackend, PagedAttention, write_kv_cache
from kernels.cpu_allocator import tune_cpu_allocator
from kernels.forward_context import (
    ForwardContext,
    forward_context,
    get_forward_context,
    has_forward_context,
)
from kernels.metadata import AttentionMetadata
from kernels.norms import fused_add_rms_norm, rms_norm
from kernels.rotary import RotaryEmbedding
from kernels.torch_attention import paged_attention

__all__ = [
    "AttentionBackend",
    "AttentionMetadata",
    "ForwardContext",
    "PagedAttention",
    "RotaryEmbedding",
    "forward_context",
    "fused_add_rms_norm",
    "gelu_tanh_and_mul",
    "get_forward_context",
    "has_forward_context",
    "paged_attention",
    "rms_norm",
    "silu_and_mul",
    "tune_cpu_allocator",
    "write_kv_cache",
]
