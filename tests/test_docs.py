"""Documentation generated from code must match the code."""

from __future__ import annotations

from pathlib import Path

from streams.settings import settings_reference

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_the_configuration_reference_is_current() -> None:
    text = (DOCS / "operations.md").read_text()
    begin = text.index("<!-- settings:begin -->\n") + len("<!-- settings:begin -->\n")
    end = text.index("<!-- settings:end -->")
    assert text[begin:end] == settings_reference(), (
        "docs/operations.md is stale: paste the output of `profilestream config`"
    )
