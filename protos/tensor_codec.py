"""torch.Tensor <-> `meshserve.v1.Tensor`: exact round trips, clear errors on bad input."""

from __future__ import annotations

import math

import torch

from protos.meshserve.v1 import common_pb2

_TO_WIRE: dict[torch.dtype, int] = {
    torch.float32: common_pb2.DTYPE_FLOAT32,
    torch.float16: common_pb2.DTYPE_FLOAT16,
    torch.bfloat16: common_pb2.DTYPE_BFLOAT16,
    torch.int32: common_pb2.DTYPE_INT32,
    torch.int64: common_pb2.DTYPE_INT64,
}
_FROM_WIRE: dict[int, torch.dtype] = {wire: dtype for dtype, wire in _TO_WIRE.items()}


def tensor_to_proto(tensor: torch.Tensor) -> common_pb2.Tensor:
    """Serializes a tensor (any device, any strides) to the wire message."""
    if tensor.dtype not in _TO_WIRE:
        supported = ", ".join(str(d).removeprefix("torch.") for d in _TO_WIRE)
        raise ValueError(f"cannot send a {tensor.dtype} tensor; supported dtypes: {supported}")
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    # NOTE: numpy has no bfloat16, so every dtype goes through its same-width integer view.
    raw = flat.view(torch.uint8).numpy().tobytes()
    return common_pb2.Tensor(dtype=_TO_WIRE[tensor.dtype], shape=list(tensor.shape), data=raw)


def tensor_from_proto(message: common_pb2.Tensor) -> torch.Tensor:
    """Deserializes a wire tensor; raises ValueError when dtype, shape and bytes disagree."""
    if message.dtype not in _FROM_WIRE:
        raise ValueError(f"tensor has an unknown or unset dtype ({message.dtype})")
    dtype = _FROM_WIRE[message.dtype]
    shape = tuple(int(d) for d in message.shape)
    if any(d < 0 for d in shape):
        raise ValueError(f"tensor shape {list(shape)} has a negative dimension")
    itemsize = torch.empty((), dtype=dtype).element_size()
    expected = math.prod(shape) * itemsize
    if len(message.data) != expected:
        raise ValueError(
            f"tensor of shape {list(shape)} and dtype {str(dtype).removeprefix('torch.')} "
            f"needs {expected} bytes, got {len(message.data)}"
        )
    if expected == 0:
        return torch.empty(shape, dtype=dtype)
    raw = torch.frombuffer(bytearray(message.data), dtype=torch.uint8)
    return raw.view(dtype).reshape(shape)
