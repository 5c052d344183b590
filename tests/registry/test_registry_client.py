"""The registry client against a real `mlflow server` (sqlite), with real registered models."""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from hack.proc import free_port
from hack.services import MlflowServer
from modelpilot.registry import (
    Credentials,
    ModelNotFound,
    NotARegistry,
    RegistryClient,
    RegistryUnreachable,
    Unauthorized,
)
from modelpilot.uri import parse_model_uri
from tests.helpers import Registry

pytestmark = pytest.mark.registry


@pytest.fixture(scope="module")
def two_versions(registry: Registry) -> str:
    """A model with versions 1 and 2; champion → 1, challenger → 2, version 2 in Production."""
    name = f"reg-{uuid.uuid4().hex[:6]}"
    registry.register(name, alias="champion", seed=0)
    registry.register(name, alias="challenger", seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # stages are deprecated in MLflow, but users still have them
        registry.client().transition_model_version_stage(name, "2", "Production")
    return name


@pytest.mark.parametrize(
    ("suffix", "version", "alias", "stage"),
    [
        pytest.param("@champion", "1", "champion", None, id="at-alias"),
        pytest.param("/champion", "1", "champion", None, id="slash-alias"),
        pytest.param("@challenger", "2", "challenger", None, id="other-alias"),
        pytest.param("/1", "1", None, None, id="version"),
        pytest.param("/Production", "2", None, "Production", id="stage"),
        pytest.param("/production", "2", None, "Production", id="stage-any-case"),
        pytest.param("/latest", "2", None, None, id="latest"),
    ],
)
def test_resolves_every_uri_form(registry: Registry, two_versions: str, suffix: str, version: str,
                                 alias: str | None, stage: str | None) -> None:
    resolved = RegistryClient(registry.url).resolve(parse_model_uri(f"models:/{two_versions}{suffix}"))
    assert (resolved.name, resolved.version, resolved.alias, resolved.stage) == (two_versions, version, alias, stage)
    assert len(resolved.run_id) == 32
    assert resolved.source
    assert resolved.download_uri.startswith("mlflow-artifacts:/"), resolved.download_uri


def test_follows_an_alias_that_moves(registry: Registry, model_name: str) -> None:
    client = RegistryClient(registry.url)
    ref = parse_model_uri(f"models:/{model_name}@prod")
    registry.register(model_name, alias="prod", seed=0)
    assert client.resolve(ref).version == "1"
    registry.register(model_name, alias="prod", seed=1)
    assert client.resolve(ref).version == "2"


@pytest.mark.parametrize(
    "suffix",
    [pytest.param("@nope", id="unknown-alias"), pytest.param("/99", id="unknown-version"),
     pytest.param("/Staging", id="empty-stage")],
)
def test_not_found_is_distinct(registry: Registry, two_versions: str, suffix: str) -> None:
    with pytest.raises(ModelNotFound) as err:
        RegistryClient(registry.url).resolve(parse_model_uri(f"models:/{two_versions}{suffix}"))
    assert err.value.reason == "ModelNotFound" and not err.value.transient


def test_unknown_model_is_not_found(registry: Registry) -> None:
    with pytest.raises(ModelNotFound, match="not found"):
        RegistryClient(registry.url).resolve(parse_model_uri("models:/does-not-exist@champion"))


def test_unreachable_is_distinct_and_transient() -> None:
    client = RegistryClient(f"http://127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(RegistryUnreachable) as err:
        client.resolve(parse_model_uri("models:/x@champion"))
    assert err.value.transient
    assert "unreachable" in str(err.value) and "Traceback" not in str(err.value)


def test_not_a_tracking_server_is_reported(mlflow_server: MlflowServer) -> None:
    """A URL that answers HTML (e.g. a typo'd path on some web server) is not mistaken for 'not found':
    NotARegistry is transient (a fixed URL or proxy heals it), and says status and host, nothing of the page."""
    client = RegistryClient(mlflow_server.url + "/static-files")
    with pytest.raises(NotARegistry) as err:
        client.resolve(parse_model_uri("models:/x@champion"))
    assert err.value.transient and not isinstance(err.value, ModelNotFound)
    assert mlflow_server.url in str(err.value) and "HTTP 404" in str(err.value)
    assert "<" not in str(err.value), "nothing of the page is echoed"


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = MlflowServer(Path(tmp_path_factory.mktemp("auth")), name="mlflow-auth",
                          admin_password="modelpilot-Test-1")
    server.start()
    yield server
    server.stop()


def test_basic_auth(auth_server: MlflowServer) -> None:
    ref = parse_model_uri("models:/nothing-here@champion")
    good = RegistryClient(auth_server.url, Credentials(username="admin", password="modelpilot-Test-1"))
    with pytest.raises(ModelNotFound):  # authenticated: the registry answers, the model is missing
        good.resolve(ref)
    for creds in (None, Credentials(username="admin", password="wrong"), Credentials(token="bogus")):
        with pytest.raises(Unauthorized) as err:
            RegistryClient(auth_server.url, creds).resolve(ref)
        assert err.value.reason == "RegistryUnauthorized" and not err.value.transient


def test_credentials_never_print_secrets() -> None:
    assert "hunter2" not in repr(Credentials(username="u", password="hunter2"))
    assert "s3cr3t" not in repr(Credentials(token="s3cr3t-123"))
