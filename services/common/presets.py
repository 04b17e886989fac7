"""Dataset presets: window sizes, class lists and the parity prompt label.

From the authors' config (METHOD.md sections 4, 6 and 9). The class lists are in
the reference's `type_list` order, which fixes each class's row in the
class-adaptive attention.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.common.errors import InvalidInput, echo


@dataclass(frozen=True)
class DatasetPreset:
    name: str
    window_sizes: tuple[int, ...]  # small, mid, large on the 240x240 grid image
    class_names: tuple[str, ...]
    output_label: str  # the prompt's output bullet label in parity mode


SHTECH_CLASSES = (
    "car", "bicycle", "fighting", "throwing", "hand_truck", "running",
    "skateboarding", "falling", "jumping", "loitering", "motorcycle",
)
AVENUE_CLASSES = ("too_close", "bicycle", "throwing", "running", "dancing")

PRESETS: dict[str, DatasetPreset] = {
    "shtech": DatasetPreset("shtech", (48, 80, 120), SHTECH_CLASSES, "Response"),
    "avenue": DatasetPreset("avenue", (48, 80, 240), AVENUE_CLASSES, "Output"),
    # A site of one's own: ShT windows, no built-in classes (the texts form the class list).
    "custom": DatasetPreset("custom", (48, 80, 120), (), "Response"),
}
DEFAULT_PRESET = "shtech"


def get_preset(name: str) -> DatasetPreset:
    """The preset called `name` ("" means the default); InvalidInput for unknown names."""
    key = (name or DEFAULT_PRESET).strip().lower()
    if key not in PRESETS:
        raise InvalidInput(f"unknown preset {echo(name)}; use one of: {', '.join(PRESETS)}")
    return PRESETS[key]
