"""The contract as other languages see it: `buf lint` clean (buf.yaml says which rules follow
Google's API design guide instead), and the package options Go, Java and C# code generators need."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers.fixtures import REPO_ROOT

BUF = REPO_ROOT / "clients" / "node" / "node_modules" / ".bin" / "buf"
PROTOS = sorted((REPO_ROOT / "anyanomaly" / "v1").glob("*.proto"))


def buf_lint(root: Path) -> subprocess.CompletedProcess[str]:
    assert BUF.exists(), "buf is missing: run `make node-clients` (npm ci in clients/node)"
    return subprocess.run([str(BUF), "lint"], cwd=root, capture_output=True, text=True, timeout=120)


def test_the_contract_is_buf_lint_clean() -> None:
    done = buf_lint(REPO_ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


def test_buf_lint_does_look_at_the_contract(tmp_path: Path) -> None:
    """A field named against the style guide is caught: the lint above is not vacuous."""
    (tmp_path / "anyanomaly").mkdir()
    shutil.copytree(REPO_ROOT / "anyanomaly" / "v1", tmp_path / "anyanomaly" / "v1",
                    ignore=shutil.ignore_patterns("*.py", "*.pyi", "__pycache__"))
    shutil.copy(REPO_ROOT / "buf.yaml", tmp_path)
    jobs = tmp_path / "anyanomaly" / "v1" / "jobs.proto"
    jobs.write_text(jobs.read_text().replace("string job_id = 1;", "string jobId = 1;", 1))
    done = buf_lint(tmp_path)
    assert done.returncode != 0 and 'Field name "jobId" should be lower_snake_case' in done.stdout


@pytest.mark.parametrize("proto", PROTOS, ids=lambda p: p.name)
def test_every_file_names_its_go_java_and_csharp_packages(proto: Path) -> None:
    options = {name: quoted or bare for name, quoted, bare
               in re.findall(r'^option (\w+) = (?:"([^"]*)"|(\w+));$', proto.read_text(), re.M)}
    assert options["go_package"] == "github.com/anyanomaly/anyanomaly/gen/go/anyanomaly/v1;anyanomalyv1"
    assert options["java_package"] == "com.anyanomaly.v1" and options["java_multiple_files"] == "true"
    assert options["csharp_namespace"] == "AnyAnomaly.V1"
