from __future__ import annotations

import pytest

from services.clip_service import config as clip_config
from services.context_service import config as context_config


def test_defaults_environment_and_flags_in_that_order_of_precedence() -> None:
    assert clip_config.load([], env={}).max_batch_size == 64
    env = {"ANYANOMALY_CLIP_MAX_BATCH_SIZE": "8", "ANYANOMALY_CLIP_OFFLINE": "true"}
    from_env = clip_config.load([], env=env)
    assert (from_env.max_batch_size, from_env.offline) == (8, True)
    assert clip_config.load(["--max-batch-size", "16", "--no-offline"], env=env).max_batch_size == 16
    assert clip_config.load(["--no-offline"], env=env).offline is False


def test_invalid_environment_value_names_the_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        clip_config.load([], env={"ANYANOMALY_CLIP_MAX_BATCH_SIZE": "many"})
    assert "ANYANOMALY_CLIP_MAX_BATCH_SIZE" in capsys.readouterr().err


def test_choices_are_enforced() -> None:
    with pytest.raises(SystemExit):
        clip_config.load(["--models", "huge"], env={})


def test_context_settings_know_the_clip_address() -> None:
    settings = context_config.load(["--port", "0", "--clip-address", "clip:1234"], env={})
    assert (settings.port, settings.clip_address) == (0, "clip:1234")
