"""The models:/ grammar, as a table: every spelling MLflow accepts, and the mistakes users make."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelpilot.uri import InvalidModelURI, RefKind, parse_model_uri


@pytest.mark.parametrize(
    ("uri", "name", "kind", "value"),
    [
        pytest.param("models:/fraud-detector@champion", "fraud-detector", RefKind.ALIAS, "champion", id="at-alias"),
        pytest.param("models:/fraud-detector/champion", "fraud-detector", RefKind.ALIAS, "champion", id="slash-alias"),
        pytest.param("models:/fraud-detector/7", "fraud-detector", RefKind.VERSION, "7", id="version"),
        pytest.param("models:/fraud-detector/007", "fraud-detector", RefKind.VERSION, "7", id="version-leading-zeros"),
        pytest.param("models:/fraud-detector/Production", "fraud-detector", RefKind.STAGE, "Production",
                     id="stage"),
        pytest.param("models:/fraud-detector/staging", "fraud-detector", RefKind.STAGE, "Staging",
                     id="stage-lowercase"),
        pytest.param("models:/fraud-detector/None", "fraud-detector", RefKind.STAGE, "None", id="stage-none"),
        pytest.param("models:/fraud-detector/latest", "fraud-detector", RefKind.LATEST, "", id="latest"),
        pytest.param("models:/My Model.v2@prod_1", "My Model.v2", RefKind.ALIAS, "prod_1", id="spaces-dots"),
        pytest.param("models:/team@x/model@champion", "team@x/model", RefKind.ALIAS, "champion", id="last-at-wins"),
    ],
)
def test_valid_uris(uri: str, name: str, kind: RefKind, value: str) -> None:
    ref = parse_model_uri(uri)
    assert (ref.name, ref.kind, ref.value) == (name, kind, value)


@pytest.mark.parametrize(
    ("uri", "fragment"),
    [
        pytest.param("s3://bucket/x", "must start with 'models:/'", id="storage-uri"),
        pytest.param("runs:/abc/model", "must start with 'models:/'", id="runs-uri"),
        pytest.param("models:/", "names no version", id="empty"),
        pytest.param("models:/fraud", "names no version", id="no-version"),
        pytest.param("models:/fraud/", "names no version", id="trailing-slash"),
        pytest.param("models:/@champion", "name is empty", id="no-name"),
        pytest.param("models://profile/fraud/1", "registry profile", id="profile"),
        pytest.param("models:/fraud/0", "start at 1", id="version-zero"),
        pytest.param("models:/fraud@v3", "reserved", id="reserved-alias"),
        pytest.param("models:/fraud@latest", "reserved", id="latest-alias"),
        pytest.param("models:/fraud@cham pion", "may only hold", id="alias-space"),
        pytest.param("models:/fraud@champion/1", "nothing may follow", id="alias-then-path"),
        pytest.param(" models:/fraud/1", "must start with", id="leading-space"),
    ],
)
def test_invalid_uris_name_the_problem(uri: str, fragment: str) -> None:
    with pytest.raises(InvalidModelURI) as err:
        parse_model_uri(uri)
    assert fragment in str(err.value)


@pytest.mark.parametrize("uri", ["models:/fraud@champion", "models:/fraud/3", "models:/fraud/Staging",
                                 "models:/fraud/latest"])
def test_str_roundtrips(uri: str) -> None:
    assert str(parse_model_uri(uri)) == uri


def test_pinned_uri_is_immutable_version() -> None:
    ref = parse_model_uri("models:/fraud@champion")
    assert ref.is_floating and ref.pinned("8") == "models:/fraud/8"
    assert not parse_model_uri("models:/fraud/8").is_floating


@given(st.text())
def test_parser_never_crashes(text: str) -> None:
    """Any string either parses or raises InvalidModelURI; never another exception."""
    try:
        ref = parse_model_uri("models:/" + text)
    except InvalidModelURI:
        return
    assert ref.name
