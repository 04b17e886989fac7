"""The WinCLIP template ensemble exactly as the AnyAnomaly code uses it (METHOD.md section 4).

21 templates: WinCLIP's template-level prompts without "a cropped photo of a {}." and
with "a jpeg corrupted photo of the {}." twice (the "of a" variant is missing), so
that line carries double weight. Kept as-is: it defines the reference embedding.
"""

from __future__ import annotations

WINCLIP_TEMPLATES: tuple[str, ...] = (
    "a cropped photo of the {}.",
    "a close-up photo of a {}.",
    "a close-up photo of the {}.",
    "a bright photo of a {}.",
    "a bright photo of the {}.",
    "a dark photo of the {}.",
    "a dark photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a blurry photo of the {}.",
    "a blurry photo of a {}.",
    "a photo of a {}.",
    "a photo of the {}.",
    "a photo of a small {}.",
    "a photo of the small {}.",
    "a photo of a large {}.",
    "a photo of the large {}.",
    "a photo of the {} for visual inspection.",
    "a photo of a {} for visual inspection.",
    "a photo of the {} for anomaly detection.",
    "a photo of a {} for anomaly detection.",
)


def fill_templates(text: str) -> list[str]:
    """The 21 prompts for one class name (inserted verbatim, underscores kept)."""
    return [template.format(text) for template in WINCLIP_TEMPLATES]
