"""The scale-out files in infra/: they load, carry the keys Compose and Prefect need, run one image,
and name only settings DataBright (or Prefect, or the AWS SDK) actually reads."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import yaml

from databright.config import Settings

INFRA = Path(__file__).resolve().parents[1] / "infra"
VERSION = tomllib.loads((INFRA.parent / "pyproject.toml").read_text())["project"]["version"]
IMAGE = f"databright:{VERSION}"


def _settings_read() -> set[str]:
    """Every environment variable ``Settings.from_env`` asks for."""
    seen: set[str] = set()

    class Recording(dict[str, str]):
        def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
            seen.add(key)
            return super().get(key, default)

        def __getitem__(self, key: str) -> str:
            seen.add(key)
            return super().__getitem__(key)

    Settings.from_env(Recording())
    return seen


def _compose() -> dict[str, Any]:
    return yaml.safe_load((INFRA / "compose.yaml").read_text())


def test_compose_has_the_production_counterparts_and_one_databright_image() -> None:
    services = _compose()["services"]
    assert {"postgres", "prefect-server", "object-store", "exchange"} <= set(services)
    providers = [name for name in services if name.startswith("provider-")]
    assert len(providers) >= 2
    assert (
        "postgresql+asyncpg://"
        in services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    )
    for name in ["exchange", *providers]:
        assert services[name]["image"] == IMAGE, name
    for name in providers:
        command = services[name]["command"].split()
        assert command[:2] == ["worker", "start"] and "--pool" in command
        for flag in ("--provider", "--price", "--capacity"):
            assert flag in command


def test_every_setting_named_in_the_files_is_one_something_reads() -> None:
    read = _settings_read()
    assert {"DATABRIGHT_HOME", "DATABRIGHT_S3_BUCKET", "DATABRIGHT_S3_ENDPOINT_URL"} <= read
    compose_env = _compose()["x-databright-env"]
    template = json.loads((INFRA / "kubernetes" / "work-pool-base-job-template.json").read_text())
    k8s_env = template["variables"]["properties"]["env"]["default"]
    for env in (compose_env, k8s_env):
        for key in env:
            assert key in read or key.startswith("PREFECT_"), f"{key} is read by nothing"
    # The object store endpoint in compose is the object-store service DataBright talks to.
    assert compose_env["DATABRIGHT_S3_ENDPOINT_URL"].startswith("http://object-store:")
    assert compose_env["PREFECT_API_URL"].startswith("http://prefect-server:")


def test_the_kubernetes_base_job_template_is_a_prefect_template_for_the_same_image() -> None:
    template = json.loads((INFRA / "kubernetes" / "work-pool-base-job-template.json").read_text())
    assert set(template) == {"job_configuration", "variables"}
    config, variables = template["job_configuration"], template["variables"]
    manifest = config["job_manifest"]
    assert (manifest["apiVersion"], manifest["kind"]) == ("batch/v1", "Job")
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "{{ image }}" and variables["properties"]["image"]["default"] == IMAGE
    # Every {{ placeholder }} the configuration uses is a declared variable (or Prefect's own).
    used = set(re.findall(r"{{\s*(\w+)\s*}}", json.dumps(config)))
    assert used <= set(variables["properties"]), used - set(variables["properties"])
    mount = container["volumeMounts"][0]["mountPath"]
    assert mount == variables["properties"]["env"]["default"]["DATABRIGHT_HOME"]


def test_the_dockerfile_builds_that_image_from_the_locked_environment() -> None:
    text = (INFRA / "Dockerfile").read_text()
    assert f"-t {IMAGE}" in text and "uv sync --frozen --no-dev" in text
    assert 'ENTRYPOINT ["databright"]' in text
    home = re.search(r"DATABRIGHT_HOME=(\S+)", text)
    assert home is not None and home.group(1) == _compose()["x-databright-env"]["DATABRIGHT_HOME"]
    readme = (INFRA / "README.md").read_text()
    for setting in ("PREFECT_API_URL", "DATABRIGHT_S3_BUCKET", "DATABRIGHT_HOME", "Postgres", "Kubernetes"):
        assert setting in readme
