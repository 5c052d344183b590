"""Which models may have rows of different requests merged into one predict call (the scoring server)."""

from __future__ import annotations

from typing import Any

import pytest

from modelpilot_serve.batching_policy import DECLARATION, ROW_INDEPENDENT_FLAVORS, may_merge


@pytest.mark.parametrize("flavor", ROW_INDEPENDENT_FLAVORS)
def test_each_row_wise_flavor_is_merged_under_auto(flavor: str) -> None:
    assert may_merge("auto", ["python_function", flavor], None)[0]


@pytest.mark.parametrize(("flavors", "metadata", "mode", "merged"), [
    pytest.param(["python_function"], None, "auto", False, id="custom-pyfunc"),
    pytest.param(["python_function"], {DECLARATION: True}, "auto", True, id="custom-pyfunc-declared"),
    pytest.param(["python_function"], {DECLARATION: "true"}, "auto", True, id="declared-as-text"),
    pytest.param(["python_function"], {DECLARATION: False}, "auto", False, id="declared-false"),
    pytest.param(["python_function", "pytorch"], None, "auto", False, id="deep-learning-not-assumed"),
    pytest.param(["python_function", "transformers"], None, "auto", False, id="transformers"),
    pytest.param(["python_function"], None, "always", True, id="always"),
    pytest.param(["python_function", "sklearn"], None, "off", False, id="off"),
])
def test_may_merge(flavors: list[str], metadata: dict[str, Any] | None, mode: str, merged: bool) -> None:
    ok, why = may_merge(mode, flavors, metadata)
    assert ok is merged and why


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="auto, always, off"):
        may_merge("sometimes", [], None)
