"""Packaging metadata: what `pip install .` reads from pyproject.toml."""

from __future__ import annotations

import warnings
from pathlib import Path

from setuptools.config.pyprojecttoml import apply_configuration
from setuptools.dist import Distribution

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_licence_is_an_spdx_string_and_reads_without_a_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # setuptools deprecates the `license = {text=...}` table
        dist = apply_configuration(Distribution(), ROOT / "pyproject.toml")
    assert dist.metadata.license_expression == "Apache-2.0"
