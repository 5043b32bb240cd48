"""How idc-sync writes quantities for people: bytes in decimal units (as IDC's own sizes
are, series_size_MB being 1e6 bytes). Pure."""

from __future__ import annotations


def size_text(count: float) -> str:
    """``1234567`` -> ``"1.2 MB"``; whole bytes below a kilobyte."""
    value = float(count)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1000
    raise AssertionError("the loop returns at TB")
