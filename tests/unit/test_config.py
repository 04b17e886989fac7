from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from services.clip_service import config as clip_config
from services.context_service import config as context_config
from services.lvlm_service import config as lvlm_config
from services.orchestrator import config as orchestrator_config
from tests.helpers.fixtures import REPO_ROOT

Loader = Callable[[Sequence[str] | None, Mapping[str, str] | None], Any]
LOADERS: dict[str, Loader] = {
    "ANYANOMALY_CLIP": clip_config.load, "ANYANOMALY_CONTEXT": context_config.load,
    "ANYANOMALY_LVLM": lvlm_config.load, "ANYANOMALY_ORCHESTRATOR": orchestrator_config.load,
}


def test_defaults_environment_and_flags_in_that_order_of_precedence() -> None:
    assert clip_config.load([], env={}).max_batch_size == 64
    env = {"ANYANOMALY_CLIP_MAX_BATCH_SIZE": "8", "ANYANOMALY_CLIP_OFFLINE": "true"}
    from_env = clip_config.load([], env=env)
    assert (from_env.max_batch_size, from_env.offline) == (8, True)
    assert clip_config.load(["--max-batch-size", "16", "--no-offline"], env=env).max_batch_size == 16
    assert clip_config.load(["--no-offline"], env=env).offline is False


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("variable", ["ANYANOMALY_ORCHESTRATOR_TOKENS_FILE", "ANYANOMALY_ORCHESTRATOR_TLS_CERT_FILE",
                                      "ANYANOMALY_ORCHESTRATOR_STREAM_HOSTS", "ANYANOMALY_LVLM_OPENAI_URLL"])
def test_a_variable_that_names_no_setting_stops_start_up(capsys: pytest.CaptureFixture[str], variable: str) -> None:
    """A renamed or misspelt security setting must not be silently ignored (no tokens, no TLS)."""
    prefix = next(p for p in LOADERS if variable.startswith(p + "_"))
    with pytest.raises(SystemExit) as stopped:
        LOADERS[prefix]([], {variable: "/etc/anyanomaly/x"})
    assert stopped.value.code == 2
    assert f"environment variable {variable} is not a setting of this service" in one_error_line(capsys)
    assert LOADERS[prefix]([], {"ANYANOMALY_TOKEN": "aat_x", "ANYANOMALY_LVLM_OPENAI_API_KEY_FILE": __file__})


def test_invalid_environment_value_names_the_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        clip_config.load([], env={"ANYANOMALY_CLIP_MAX_BATCH_SIZE": "many"})
    assert stopped.value.code == 2
    assert "ANYANOMALY_CLIP_MAX_BATCH_SIZE='many' is invalid" in one_error_line(capsys)


@pytest.mark.parametrize(("variable", "value", "allowed"), [
    ("ANYANOMALY_CLIP_MODELS", "huge", "default, tiny, random"),
    ("ANYANOMALY_CLIP_DEVICE", "tpu", "auto, cpu, cuda"),
    ("ANYANOMALY_LVLM_BACKEND", "tgi", "openai, transformers, vllm"),
    ("ANYANOMALY_ORCHESTRATOR_FRAME_FORMAT", "webp", "jpeg, png"),
    ("ANYANOMALY_CONTEXT_LOG_LEVEL", "LOUD", "DEBUG, INFO, WARNING, ERROR"),
    ("ANYANOMALY_CONTEXT_PROFILE", "fast", "default, parity"),
])
def test_environment_values_are_checked_against_the_allowed_choices_like_flags(
    capsys: pytest.CaptureFixture[str], variable: str, value: str, allowed: str
) -> None:

    prefix = next(p for p in LOADERS if variable.startswith(p + "_"))
    load = LOADERS[prefix]
    with pytest.raises(SystemExit) as stopped:
        load([], {variable: value})
    assert stopped.value.code == 2
    line = one_error_line(capsys)
    assert f"{variable}={value!r} is invalid: use one of {allowed}" in line
    flag = "--" + variable.removeprefix(prefix + "_").lower().replace("_", "-")
    with pytest.raises(SystemExit):
        load([flag, value], {})
    assert "invalid choice" in one_error_line(capsys)  # the flag: also one line, naming the choices


def test_secrets_come_from_the_environment_or_a_file_never_a_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert lvlm_config.load([], env={"ANYANOMALY_LVLM_OPENAI_API_KEY": "tok-env"}).openai_api_key == "tok-env"
    key_file = tmp_path / "key"
    key_file.write_text("tok-file\n")
    from_file = lvlm_config.load(["--openai-api-key-file", str(key_file)], env={})
    assert from_file.openai_api_key == "tok-file"
    assert "tok-file" not in repr(from_file)
    via_env_file = lvlm_config.load([], env={"ANYANOMALY_LVLM_OPENAI_API_KEY_FILE": str(key_file)})
    assert via_env_file.openai_api_key == "tok-file"
    with pytest.raises(SystemExit):
        lvlm_config.load(["--openai-api-key", "tok-flag"], env={})
    assert "unrecognized arguments: --openai-api-key" in one_error_line(capsys)
    with pytest.raises(SystemExit):
        lvlm_config.load(["--openai-api-key-file", str(tmp_path / "missing")], env={})
    assert "cannot read the secret file" in one_error_line(capsys)


def test_choices_are_enforced() -> None:
    with pytest.raises(SystemExit):
        clip_config.load(["--models", "huge"], env={})


def test_context_settings_know_the_clip_address() -> None:
    settings = context_config.load(["--port", "0", "--clip-address", "clip:1234"], env={})
    assert (settings.port, settings.clip_address) == (0, "clip:1234")


def test_only_config_modules_touch_the_environment() -> None:
    readers = [
        str(path.relative_to(REPO_ROOT)) for path in (REPO_ROOT / "services").rglob("*.py")
        if path.name != "config.py" and re.search(r"os\.environ\b|os\.getenv|putenv", path.read_text())
    ]
    assert readers == []
