"""PromQL text built from values a tenant wrote: quoted, never spliced in raw."""

from __future__ import annotations

from string import Template

__all__ = ["promql_string", "render_query", "window_text"]


def promql_string(value: str) -> str:
    """`value` safe inside a double-quoted PromQL string literal."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_query(template: str, variables: dict[str, str]) -> str:
    return Template(template).safe_substitute({k: promql_string(v) for k, v in variables.items()})


def window_text(seconds: float) -> str:
    """A PromQL range: whole seconds, at least 1."""
    return f"{max(1, round(seconds))}s"
