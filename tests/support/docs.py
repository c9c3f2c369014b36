"""Code blocks of the Markdown pages, for the tests that run the documentation's examples."""

from __future__ import annotations

import re

BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)
"""A fenced code block with its language: (language, body)."""


def marked_blocks(page: str, marker: str) -> dict[str, str]:
    """The blocks of ``page`` whose first line is ``# <marker>: <name>``, by name, without
    that line."""
    out = {}
    for _, body in BLOCK.findall(page):
        first, _, rest = body.partition("\n")
        match = re.fullmatch(rf"# {marker}: (\S+)", first.strip())
        if match:
            out[match.group(1)] = rest
    return out
