"""Rotary position embedding (neox style, like HF Llama) on flattened tokens, with M-RoPE.

The inverse frequencies come from HF's own `ROPE_INIT_FUNCTIONS`, so every rope type HF knows
(default, linear, dynamic, yarn, longrope, llama3, ...) gives HF's `inv_freq` and
`attention_scaling`. Per-step behaviour differs from HF in two documented ways, both because HF
decides from the largest position of the whole padded batch while we decide per token:
- `dynamic`: the frequencies are those HF uses up to `max_position_embeddings` (HF rescales
  them once a batch runs past it);
- `longrope`: a token at position >= `original_max_position_embeddings` uses the long factors,
  others the short ones (HF switches the whole batch).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

_ORIGINAL_MAX_TYPES = ("llama3", "yarn", "longrope")


class _RopeConfigView:
    """A read-only view of a config whose `rope_parameters` is one flat, standardized dict.

    HF's init functions call `config.standardize_rope_params()` and read
    `config.rope_parameters`; the view lets them run on old-style configs (`rope_theta` +
    `rope_scaling`), on one layer type of a nested config, without mutating the caller's config.
    """

    def __init__(self, config: Any, rope_parameters: dict[str, Any]) -> None:
        self._config = config
        self.rope_parameters = rope_parameters

    def __getattr__(self, name: str) -> Any:
        return getattr(self._config, name)

    def standardize_rope_params(self) -> None:
        pass


def _text_config(config: Any) -> Any:
    get_text_config = getattr(config, "get_text_config", None)
    return get_text_config() if callable(get_text_config) else config


def _rope_parameters(config: Any, layer_type: str | None) -> dict[str, Any]:
    """A flat copy of the config's rope parameters with HF's defaults filled in."""
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    params = dict(params or {})
    nested = [key for key, value in params.items() if isinstance(value, dict)]
    if layer_type is not None and layer_type in nested:
        params = dict(params[layer_type])
    elif nested:
        raise ValueError(f"the config has rope parameters per layer type {nested}: pass layer_type")
    params.setdefault("rope_theta", getattr(config, "rope_theta", None) or 10000.0)
    partial = getattr(config, "partial_rotary_factor", None) or getattr(config, "rotary_pct", None)
    if partial is not None:
        params.setdefault("partial_rotary_factor", partial)
    rope_type = params.get("rope_type", params.get("type", "default"))
    params["rope_type"] = "default" if rope_type == "mrope" else rope_type
    if params["rope_type"] in _ORIGINAL_MAX_TYPES:
        original = getattr(config, "original_max_position_embeddings", None)
        if original is not None:  # Phi3 keeps it outside the rope dict; HF prefers it
            params["original_max_position_embeddings"] = original
        params.setdefault("original_max_position_embeddings", config.max_position_embeddings)
    return params


def _head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _default_inv_freq(base: float, dim: int) -> torch.Tensor:
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).float()
    return 1.0 / (base ** (exponents / dim))  # [dim // 2]


def _inv_freqs(
    config: Any, params: dict[str, Any]
) -> tuple[torch.Tensor, float, torch.Tensor | None]:
    """(inv_freq, attention_scaling, long_inv_freq or None) as HF computes them."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # heavy: import on use

    rope_type = params["rope_type"]
    if rope_type == "default":
        rotary_dim = int(_head_dim(config) * params.get("partial_rotary_factor", 1.0))
        return _default_inv_freq(params["rope_theta"], rotary_dim), 1.0, None
    if rope_type not in ROPE_INIT_FUNCTIONS:
        raise ValueError(f"unknown rope_type {rope_type!r}; HF knows {sorted(ROPE_INIT_FUNCTIONS)}")
    init = ROPE_INIT_FUNCTIONS[rope_type]
    view = _RopeConfigView(config, params)
    inv_freq, scaling = init(view, None)
    if rope_type != "longrope":
        return inv_freq, float(scaling), None
    long_inv_freq, _ = init(view, None, seq_len=params["original_max_position_embeddings"] + 1)
    return inv_freq, float(scaling), long_inv_freq


def _mrope_axes(sections: Sequence[int], interleaved: bool) -> torch.Tensor:
    """`[rotary_dim // 2]`: which row of the `[3, T]` positions (t, h, w) each frequency uses.

    Sectioned (Qwen2-VL): contiguous bands `sections[0]` t, `sections[1]` h, `sections[2]` w.
    Interleaved (Qwen3-VL): t h w t h w ..., h and w only within their `3 * section` prefix.
    """
    half = sum(sections)
    if not interleaved:
        axes = [axis for axis, size in enumerate(sections) for _ in range(size)]
        return torch.tensor(axes, dtype=torch.int64, device="cpu")
    axes = torch.zeros(half, dtype=torch.int64, device="cpu")
    for axis in (1, 2):
        axes[axis : 3 * sections[axis] : 3] = axis
    return axes


class _RopeTables(NamedTuple):
    inv_freq: torch.Tensor  # [rotary_dim // 2] float32
    long_inv_freq: torch.Tensor | None  # [rotary_dim // 2] float32, longrope only
    mrope_axes: torch.Tensor | None  # [rotary_dim // 2] int64, M-RoPE only

    def to(self, device: torch.device) -> _RopeTables:
        return _RopeTables(*(None if t is None else t.to(device) for t in self))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RotaryEmbedding(torch.nn.Module):
    """Applies RoPE to the first `rotary_dim` dims of each query/key head.

    Args:
        inv_freq: `[rotary_dim // 2]` float32 inverse frequencies.
        attention_scaling: multiplies cos and sin (yarn / longrope).
        mrope_section: for M-RoPE, the t/h/w split of `rotary_dim // 2`; None: plain RoPE.
        mrope_interleaved: Qwen3-VL's interleaved t/h/w layout instead of contiguous bands.
        long_inv_freq: longrope's frequencies for positions >= `original_max_position`.
        original_max_position: where longrope switches to `long_inv_freq`.
    """

    def __init__(
        self,
        inv_freq: torch.Tensor,
        *,
        attention_scaling: float = 1.0,
        mrope_section: Sequence[int] | None = None,
        mrope_interleaved: bool = False,
        long_inv_freq: torch.Tensor | None = None,
        original_max_position: int | None = None,
    ) -> None:
        super().__init__()
        if mrope_section is not None and sum(mrope_section) != inv_freq.numel():
            raise ValueError(
                f"mrope_section {list(mrope_section)} must sum to rotary_dim // 2 = "
                f"{inv_freq.numel()}"
            )
        if (long_inv_freq is None) != (original_max_position is None):
            raise ValueError("long_inv_freq and original_max_position go together")
        self.rotary_dim = 2 * inv_freq.numel()
        self.attention_scaling = float(attention_scaling)
        self.original_max_position = original_max_position
        # NOTE: plain attributes, not buffers: `to_empty()` after building on the meta device
        # would wipe buffers. Each device gets its own copy on first use (see `_tables`).
        axes = None if mrope_section is None else _mrope_axes(mrope_section, mrope_interleaved)
        long = None if long_inv_freq is None else long_inv_freq.detach().float().cpu()
        cpu_tables = _RopeTables(inv_freq.detach().float().cpu(), long, axes)
        self._tables_by_device: dict[torch.device, _RopeTables] = {torch.device("cpu"): cpu_tables}
        # every layer of a step rotates by the same positions tensor: the first computes
        # cos/sin [T, 1, rotary_dim], the rest reuse them (see `_step_cos_sin`)
        self._memo: tuple[torch.Tensor, torch.dtype, torch.Tensor, torch.Tensor] | None = None

    @property
    def inv_freq(self) -> torch.Tensor:
        return self._tables_by_device[torch.device("cpu")].inv_freq

    def _tables(self, device: torch.device) -> _RopeTables:
        tables = self._tables_by_device.get(device)
        if tables is None:
            tables = self._tables_by_device[torch.device("cpu")].to(device)
            self._tables_by_device[device] = tables
        return tables

    @classmethod
    def from_config(
        cls,
        text_config: Any,
        device: torch.device | str | None = None,
        *,
        layer_type: str | None = None,
    ) -> RotaryEmbedding:
        """Build from an HF (text) config exactly as HF's rotary embedding would.

        Args:
            text_config: a `PreTrainedConfig` (transformers 5 `rope_parameters`, or older
                `rope_theta` / `rope_scaling` / `rotary_pct`); a multimodal config is reduced
                to its text config.
            device: where the frequencies live.
            layer_type: for configs with per-layer-type rope (Gemma3: "sliding_attention").
        """
        config = _text_config(text_config)
        params = _rope_parameters(config, layer_type)
        with torch.device("cpu"):  # real numbers even when the model is built on "meta"
            inv_freq, scaling, long_inv_freq = _inv_freqs(config, params)
            original = None if long_inv_freq is None else params["original_max_position_embeddings"]
            rope = cls(
                inv_freq,
                attention_scaling=scaling,
                mrope_section=params.get("mrope_section"),
                mrope_interleaved=bool(params.get("mrope_interleaved", False)),
                long_inv_freq=long_inv_freq,
                original_max_position=original,
            )
        if device is not None:
            rope._tables(torch.device(device))
        return rope

    def cos_sin(
        self, positions: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`positions` `[T]` or `[3, T]` -> cos, sin `[T, rotary_dim]` in `dtype`."""
        freqs = self._freqs(positions)  # [T, rotary_dim // 2] float32
        emb = torch.cat((freqs, freqs), dim=-1)  # [T, rotary_dim]
        cos = emb.cos() * self.attention_scaling
        sin = emb.sin() * self.attention_scaling
        return cos.to(dtype), sin.to(dtype)

    def _freqs(self, positions: torch.Tensor) -> torch.Tensor:
        tables = self._tables(positions.device)
        if positions.dim() == 2:
            if tables.mrope_axes is None:
                raise ValueError("[3, T] positions need a config with mrope_section")
            per_freq = positions[tables.mrope_axes].t()  # [T, rotary_dim // 2]
            return per_freq.float() * tables.inv_freq
        inv_freq = tables.inv_freq
        if tables.long_inv_freq is not None:
            is_long = (positions >= self.original_max_position)[:, None]  # [T, 1]
            inv_freq = torch.where(is_long, tables.long_inv_freq, tables.inv_freq)
        return positions[:, None].float() * inv_freq  # [T, rotary_dim // 2]

    def forward(
        self, positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate query `[T, H, D]` and key `[T, Hkv, D]` by `positions` (`[T]` or `[3, T]`)."""
        cos, sin = self._step_cos_sin(positions, query.dtype)  # [T, 1, rotary_dim] each
        return self._rotate(query, cos, sin), self._rotate(key, cos, sin)

    def _step_cos_sin(
        self, positions: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`cos_sin` memoised on the positions tensor itself: the same object and dtype give
        the same values, so the later layers of a step skip it.

        NOTE: identity, not contents (inference tensors have no version counter): positions
        are never written in place; the runner builds a fresh tensor every step.
        """
        memo = self._memo
        if memo is not None and memo[0] is positions and memo[1] == dtype:
            return memo[2], memo[3]
        cos, sin = self.cos_sin(positions, dtype)
        cos, sin = cos[:, None, :], sin[:, None, :]  # [T, 1, rotary_dim]
        self._memo = (positions, dtype, cos, sin)
        return cos, sin

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        if self.rotary_dim == x.shape[-1]:
            return x * cos + _rotate_half(x) * sin
        rot, passthrough = x[..., : self.rotary_dim], x[..., self.rotary_dim :]
        return torch.cat((rot * cos + _rotate_half(rot) * sin, passthrough), dim=-1)

    def extra_repr(self) -> str:
        mrope = self._tables_by_device[torch.device("cpu")].mrope_axes is not None
        return f"rotary_dim={self.rotary_dim}, scaling={self.attention_scaling}, mrope={mrope}"
