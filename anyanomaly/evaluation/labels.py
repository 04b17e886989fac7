"""Per-video frame labels from HDF5 (the authors' files), NumPy .npz or JSON.

A label file maps a video name to a 1-D 0/1 array with one value per frame of the
whole video. Videos are always matched by name, never by position."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from services.common.errors import InvalidInput

Labels = dict[str, np.ndarray]


def _checked(path: Path, name: str, values: object) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or array.size == 0:
        raise InvalidInput(f"{path}: the labels of video {name!r} must be a non-empty 1-D per-frame array, "
                           f"got shape {array.shape}")
    if not np.isin(array, (0, 1)).all():
        raise InvalidInput(f"{path}: the labels of video {name!r} must be 0 or 1 per frame")
    return array.astype(np.int8)


def load_labels(path: Path) -> Labels:
    """{video name: per-frame 0/1 labels} from .h5/.hdf5, .npz or .json."""
    if not path.is_file():
        raise InvalidInput(f"label file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        import h5py

        try:
            with h5py.File(path, "r") as h5:
                return {str(name): _checked(path, name, h5[name][()]) for name in h5}
        except OSError as exc:
            raise InvalidInput(f"{path}: not a readable HDF5 file ({exc})") from exc
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                return {str(name): _checked(path, name, data[name]) for name in data.files}
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"{path}: not a readable .npz file ({exc})") from exc
    if suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise InvalidInput(f"{path}: expected an object {{video name: [0, 1, ...]}}")
        return {str(name): _checked(path, name, values) for name, values in data.items()}
    raise InvalidInput(f"{path}: unsupported label format {suffix!r}; use .h5, .npz or .json")
