"""The API client's authentication header, against a real HTTP server (what the in-cluster config stores), and the
merge patch its status writes send."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kubernetes.client import Configuration

from modelpilot.kube import Kube, merge_patch
from tests.fakes.kube import apply_merge_patch


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[str | None]]]:
    seen: list[str | None] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *_: Any) -> None:
            pass

        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            body = b"{}"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()


@pytest.mark.parametrize(("api_key", "sent"), [
    pytest.param({"authorization": "bearer abc.def"}, "Bearer abc.def", id="in-cluster-lower-case"),
    pytest.param({"authorization": "Bearer abc.def"}, "Bearer abc.def", id="kubeconfig-token"),
    pytest.param({"BearerToken": "abc.def"}, "Bearer abc.def", id="bare-token"),
    pytest.param({}, None, id="client-certificate-only"),
])
def test_the_token_is_sent_once_prefixed(recorder: tuple[str, list[str | None]], api_key: dict[str, str],
                                         sent: str | None) -> None:
    url, seen = recorder
    cfg = Configuration()
    cfg.host = url
    cfg.api_key = dict(api_key)
    Kube(cfg).request("GET", "/api")
    assert seen == [sent]


def test_a_refreshed_token_is_sent_on_the_same_connection(recorder: tuple[str, list[str | None]]) -> None:
    url, seen = recorder
    cfg = Configuration()
    cfg.host = url
    cfg.api_key = {"authorization": "bearer first"}
    kube = Kube(cfg)
    kube.request("GET", "/api")
    cfg.api_key = {"authorization": "bearer second"}  # what the in-cluster loader's refresh does
    kube.request("GET", "/api")
    assert seen == ["Bearer first", "Bearer second"]


def test_no_netrc_credentials_go_to_the_api_server(recorder: tuple[str, list[str | None]], tmp_path: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    url, seen = recorder
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine 127.0.0.1 login someone password elsewhere\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    cfg = Configuration()
    cfg.host = url
    Kube(cfg).request("GET", "/api")
    assert seen == [None]


# -- the status patch ------------------------------------------------------------------------------------
_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=3), inner, max_size=4), max_leaves=12)
# what a status holds: objects without nulls (a null in a merge patch means "remove")
_no_nulls = st.recursive(st.booleans() | st.integers() | st.text(max_size=5),
                         lambda inner: st.lists(inner, max_size=3)
                         | st.dictionaries(st.text(max_size=3), inner, max_size=4), max_leaves=12)


@given(st.dictionaries(st.text(max_size=3), _json, max_size=4), st.dictionaries(st.text(max_size=3), _no_nulls,
                                                                               max_size=4))
def test_a_merge_patch_turns_the_old_status_into_the_new_one(old: dict[str, Any], new: dict[str, Any]) -> None:
    assert apply_merge_patch(old, merge_patch(old, new)) == new


def test_a_nested_key_that_is_gone_is_sent_as_null() -> None:
    old = {"autoscaling": {"engine": "hpa", "currentReplicas": 1, "problem": "no metrics"}, "url": "http://m"}
    new = {"autoscaling": {"engine": "hpa", "currentReplicas": 2}, "url": "http://m"}
    assert merge_patch(old, new) == {"autoscaling": {"engine": "hpa", "currentReplicas": 2, "problem": None},
                                     "url": "http://m"}
