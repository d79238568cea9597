from __future__ import annotations

import pytest
import torch

from protos.meshserve.v1 import common_pb2
from protos.tensor_codec import tensor_from_proto, tensor_to_proto

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int32, torch.int64]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (7,), (3, 5), (2, 3, 4)])
def test_round_trip_is_exact(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(0)
    if dtype.is_floating_point:
        x = (torch.randn(shape, generator=gen) * 1e3).to(dtype)
    else:
        x = torch.randint(-(2**30), 2**30, shape, generator=gen, dtype=dtype)
    y = tensor_from_proto(common_pb2.Tensor.FromString(tensor_to_proto(x).SerializeToString()))
    assert y.dtype == dtype and tuple(y.shape) == shape
    # compare bytes, so that NaN payloads and -0.0 count too
    assert torch.equal(x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8))


def test_non_contiguous_and_special_values_survive() -> None:
    x = torch.tensor([[1.0, float("nan")], [float("inf"), -0.0]]).t()
    y = tensor_from_proto(tensor_to_proto(x))
    assert torch.equal(x.contiguous().view(torch.int32), y.view(torch.int32))


def test_int64_extremes() -> None:
    x = torch.tensor([2**63 - 1, -(2**63)], dtype=torch.int64)
    assert torch.equal(tensor_from_proto(tensor_to_proto(x)), x)


def test_byte_length_mismatch_is_a_clear_value_error() -> None:
    msg = tensor_to_proto(torch.zeros(2, 3))
    msg.data = msg.data[:-1]
    with pytest.raises(
        ValueError, match=r"shape \[2, 3\] and dtype float32 needs 24 bytes, got 23"
    ):
        tensor_from_proto(msg)


def test_unset_dtype_and_negative_shape_are_refused() -> None:
    with pytest.raises(ValueError, match="dtype"):
        tensor_from_proto(common_pb2.Tensor(shape=[1], data=b"\0\0\0\0"))
    with pytest.raises(ValueError, match="negative"):
        tensor_from_proto(common_pb2.Tensor(dtype=common_pb2.DTYPE_INT32, shape=[-1], data=b""))


def test_unsupported_dtype_names_the_supported_ones() -> None:
    with pytest.raises(ValueError, match="supported dtypes: float32"):
        tensor_to_proto(torch.zeros(2, dtype=torch.uint8))


def test_decoded_tensor_is_writable_and_independent_of_the_message() -> None:
    msg = tensor_to_proto(torch.arange(4, dtype=torch.int32))
    y = tensor_from_proto(msg)
    y[0] = 42
    assert tensor_from_proto(msg)[0].item() == 0
