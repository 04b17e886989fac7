"""Retry-After as the openai backend reads it: seconds or an HTTP date, never negative."""

from __future__ import annotations

import email.utils
import time

import pytest

from services.lvlm_service.backends.openai_http import retry_after


@pytest.mark.parametrize(("header", "seconds"), [
    ("2", 2.0), (" 0.5 ", 0.5), ("-3", 0.0), ("", None), ("soon", None), ("nan", None), ("inf", None),
    ("1_0", None), ("1e3", None),
    ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0), ("Wed Oct 21 07:28:00 2015", 0.0),  # dates past: at once
])
def test_retry_after_values(header: str, seconds: float | None) -> None:
    assert retry_after(header) == seconds


def test_retry_after_as_a_date_to_come() -> None:
    wait = retry_after(email.utils.formatdate(time.time() + 10, usegmt=True))
    assert wait is not None and 8 < wait <= 10
    asctime = time.asctime(time.gmtime(time.time() + 10))  # the obsolete form, without a zone: GMT
    wait = retry_after(asctime)
    assert wait is not None and 8 < wait <= 10
