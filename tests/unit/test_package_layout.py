"""Who may import whom: the services import the contract and services/common, never the client
package; the client package (`anyanomaly`) imports services/common, never a service; no cycles
between packages; and `from anyanomaly import Client` needs none of the service extras."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.helpers.fixtures import REPO_ROOT

SERVICES = ("clip_service", "context_service", "lvlm_service", "orchestrator")


def _module(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every absolute module a file imports, at any depth (function-level imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] in ("anyanomaly", "services")}


def _graph() -> dict[str, set[str]]:
    files = [p for top in ("anyanomaly", "services") for p in (REPO_ROOT / top).rglob("*.py")
             if "__pycache__" not in p.parts and not p.name.endswith(("_pb2.py", "_pb2_grpc.py"))]
    return {_module(path): _imports(path) for path in files}


def _package(module: str) -> str:
    """The unit of the layout: a service, services.common, the contract, or a part of the client."""
    parts = module.split(".")
    if parts[0] == "services":
        return ".".join(parts[:2])
    return "anyanomaly.v1" if parts[:2] == ["anyanomaly", "v1"] else ".".join(parts[:2])


def test_services_holds_only_the_services_and_common() -> None:
    entries = {p.name for p in (REPO_ROOT / "services").iterdir() if p.name != "__pycache__"}
    assert entries == {*SERVICES, "common", "__init__.py"}


def test_services_import_only_themselves_common_and_the_contract() -> None:
    for module, imported in _graph().items():
        if not module.startswith("services."):
            continue
        own = _package(module)
        allowed = (own, "services.common", "anyanomaly.v1")
        wrong = {name for name in imported if not name.startswith(allowed) and name != "services"}
        assert not wrong, f"{module} imports {sorted(wrong)}"


def test_the_client_package_imports_no_service() -> None:
    for module, imported in _graph().items():
        if module.startswith("anyanomaly"):
            wrong = {name for name in imported if name.startswith("services.") and
                     not name.startswith("services.common")}
            assert not wrong, f"{module} imports {sorted(wrong)}"


def test_no_import_cycles_between_packages() -> None:
    edges: dict[str, set[str]] = {}
    for module, imported in _graph().items():
        source = _package(module)
        edges.setdefault(source, set()).update(_package(name) for name in imported if _package(name) != source)

    def cycle_from(start: str, path: list[str]) -> list[str] | None:
        for target in sorted(edges.get(path[-1], ())):
            if target == start:
                return [*path, target]
            if target not in path:
                found = cycle_from(start, [*path, target])
                if found:
                    return found
        return None

    for package in sorted(edges):
        assert cycle_from(package, [package]) is None, " -> ".join(cycle_from(package, [package]) or [])


def test_the_client_imports_without_the_service_extras() -> None:
    """As in a venv with only the base install: every package the extras bring is blocked."""
    blocked = ["torch", "open_clip", "transformers", "scipy", "tqdm", "av", "psycopg", "paho", "httpx", "h5py",
               "sklearn", "matplotlib", "PIL", "kubernetes"]
    code = (f"import sys\nfor name in {blocked!r}:\n    sys.modules[name] = None\n"
            "from anyanomaly import AsyncClient, Client, AnyAnomalyError\nprint(Client.__module__)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "anyanomaly.client"


def test_importing_the_contract_loads_no_client_code() -> None:
    code = "import sys\nimport anyanomaly.v1.orchestrator_pb2\nprint(sorted(m for m in sys.modules if m.startswith(" \
           "('anyanomaly.client', 'anyanomaly.cli', 'services'))))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
