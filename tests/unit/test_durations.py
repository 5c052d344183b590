import re

import pytest
import yaml

from modelpilot.durations import PATTERN, format_duration, parse_duration
from tests.helpers import REPO


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("60s", 60), ("5m", 300), ("1h30m", 5400), ("250ms", 0.25), ("1.5s", 1.5), ("90", 90), (30, 30),
     ("2h", 7200), ("30d", 2592000), ("1d12h", 129600)],
)
def test_parse(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "5x", "-5s", "5 s", "m5", "1h-3m", "-1", True])
def test_reject(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)  # type: ignore[arg-type]


def test_crd_pattern_matches_parser() -> None:
    crd = yaml.safe_load((REPO / "crds" / "modeldeployments.modelpilot.dev.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["properties"]["refreshInterval"]["pattern"] == PATTERN
    for ok in ("60s", "1h30m", "250ms"):
        assert re.match(PATTERN, ok)


@pytest.mark.parametrize(("seconds", "text"), [(0.25, "250ms"), (30, "30s"), (300, "5m"), (90, "90s")])
def test_format(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
