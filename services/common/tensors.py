"""numpy arrays <-> anyanomaly.v1.Tensor (float32 little-endian, row-major)."""

from __future__ import annotations

import math

import numpy as np

from anyanomaly.v1 import common_pb2
from services.common.errors import InvalidInput


def to_tensor(array: np.ndarray) -> common_pb2.Tensor:
    data = np.ascontiguousarray(array, dtype="<f4")
    return common_pb2.Tensor(shape=list(data.shape), data=data.tobytes())


def from_tensor(tensor: common_pb2.Tensor) -> np.ndarray:
    shape = tuple(int(s) for s in tensor.shape)
    expected = math.prod(shape) * 4
    if len(tensor.data) != expected:
        raise InvalidInput(f"tensor of shape {shape} needs {expected} bytes, got {len(tensor.data)}")
    return np.frombuffer(tensor.data, dtype="<f4").reshape(shape).astype(np.float32)
