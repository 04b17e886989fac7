from __future__ import annotations

from collections import Counter

from services.clip_service.templates import WINCLIP_TEMPLATES, fill_templates


def test_there_are_21_templates_with_the_reference_copy_error() -> None:
    assert len(WINCLIP_TEMPLATES) == 21
    counts = Counter(WINCLIP_TEMPLATES)
    assert counts["a jpeg corrupted photo of the {}."] == 2
    assert "a jpeg corrupted photo of a {}." not in counts
    assert "a cropped photo of a {}." not in counts
    assert counts["a cropped photo of the {}."] == 1
    assert all(n == 1 for t, n in counts.items() if "jpeg" not in t)


def test_each_winclip_pattern_is_present() -> None:
    for article in ("a", "the"):
        for pattern in ("a close-up photo of {} {{}}.", "a bright photo of {} {{}}.", "a dark photo of {} {{}}.",
                        "a blurry photo of {} {{}}.", "a photo of {} {{}}.", "a photo of {} small {{}}.",
                        "a photo of {} large {{}}.", "a photo of {} {{}} for visual inspection.",
                        "a photo of {} {{}} for anomaly detection."):
            assert pattern.format(article) in WINCLIP_TEMPLATES


def test_class_names_are_inserted_verbatim() -> None:
    prompts = fill_templates("hand_truck")
    assert prompts[0] == "a cropped photo of the hand_truck."
    assert all("hand_truck" in p for p in prompts)
