"""Markdown a person reads (a flow run's page in the Prefect UI, a report stored with a
version): numbers rounded to what a reader can compare, charts inline as data URIs (the UI
needs no access to the store to show them)."""

from __future__ import annotations

import base64
from typing import Any


def fmt(value: Any) -> str:
    """A number as a reader compares it: 4 significant digits, thousands separated."""
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.4g}"
    return str(value)


def png_uri(data: bytes) -> str:
    """A PNG as a data URI: the UI shows it without access to the store."""
    return f"data:image/png;base64,{base64.b64encode(data).decode()}"


def inline_png(data: bytes, alt: str) -> str:
    return f"![{alt}]({png_uri(data)})"
