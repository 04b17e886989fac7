"""The service images: linted with hadolint, one extra each, non-root, and each service imports
without what the other services' extras bring (nothing is built here: no container daemon)."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.helpers.fixtures import REPO_ROOT

DOCKER = REPO_ROOT / "docker"
HADOLINT = Path(sys.executable).parent / "hadolint"
EXTRAS = {"clip_service": "clip", "context_service": "context", "lvlm_service": "lvlm",
          "orchestrator": "orchestrator"}
# What each service must import without: the heavy packages of the other services' extras.
FORBIDDEN = {
    "clip_service": ["scipy", "av", "psycopg", "paho", "transformers"],
    "context_service": ["torch", "open_clip", "transformers", "scipy", "av", "psycopg", "paho", "httpx"],
    "lvlm_service": ["torch", "open_clip", "transformers", "scipy", "av", "psycopg", "paho"],
    "orchestrator": ["torch", "open_clip", "transformers", "h5py", "sklearn", "matplotlib"],
}
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))


def test_there_is_an_image_per_service_and_a_cuda_clip_image() -> None:
    assert {p.name for p in DOCKERFILES} == {f"{s}.Dockerfile" for s in EXTRAS} | {"clip_service.cuda.Dockerfile"}


def test_hadolint_finds_nothing() -> None:
    done = subprocess.run([str(HADOLINT), "--failure-threshold", "info", *map(str, DOCKERFILES)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_each_image_installs_its_own_extra_and_runs_as_a_user(dockerfile: Path) -> None:
    service = dockerfile.name.split(".")[0]
    text = dockerfile.read_text()
    extras = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    default = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    installed = [default.get(name.strip("${}"), name)
                 for name in re.findall(r'pip install [^\n]*"\.\[([a-z${}A-Z_-]+)\]"', text)]
    assert installed == [EXTRAS[service]] and EXTRAS[service] in extras
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2  # built in one stage, run from a clean one
    assert re.search(r"^USER 10001$", text, re.M) and "HEALTHCHECK" not in text  # Kubernetes probes
    assert f'ENTRYPOINT ["python", "-m", "services.{service}"]' in text


@pytest.mark.parametrize("service", sorted(EXTRAS))
def test_each_service_imports_without_the_other_extras(service: str) -> None:
    blocked = ", ".join(repr(name) for name in FORBIDDEN[service])
    code = (f"import sys\nfor name in ({blocked},):\n    sys.modules[name] = None\n"
            f"import services.{service}.server\nimport services.{service}.__main__")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
