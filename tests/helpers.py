"""Helpers shared by the test modules (not fixtures: those live in conftest.py)."""

from __future__ import annotations

from pathlib import Path

from hack.devenv import wait_for

REPO = Path(__file__).resolve().parent.parent

__all__ = ["REPO", "wait_for"]
