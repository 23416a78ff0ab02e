"""Numbers and tables as people read them: the shared formatting of plan, diff and report.

A foundation module (no axpack imports): ``plan``, ``diff`` and any other
command format a step count, a learning rate or a GiB figure the same way
by importing it from here, never from another command.

- :func:`fmt_int` ``9007 -> "9,007"``; :func:`fmt_num` ``2.0 -> "2"``,
  ``0.125 -> "0.125"``; :func:`fmt_lr` ``2e-4 -> "2.0e-4"``;
  :func:`fmt_params` ``7.6e9 -> "7.6B"``; :func:`fmt_gib` GiB or MiB;
  :func:`fmt_hours` seconds / minutes / hours; :func:`fmt_usd` dollars.
- :func:`md_cell` escapes a GitHub-Markdown table cell; :func:`md_table`
  writes a whole table; :func:`rich_table` builds a ``rich`` table with the
  given columns (rich imported only when called).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def fmt_int(n: float | None) -> str:
    """A count rounded to an integer with thousands separators (``"unknown"`` for None)."""
    return "unknown" if n is None else f"{round(n):,}"


def fmt_num(x: float | None) -> str:
    """An integer-valued number without decimals, else 3 significant digits (``"—"`` for None)."""
    if x is None:
        return "—"
    if float(x).is_integer():
        return f"{int(x):,}"
    return f"{x:.3g}" if abs(x) < 100 else f"{x:,.0f}"


def fmt_lr(x: float | None) -> str:
    """A learning rate in short e-notation: ``2e-4 -> "2.0e-4"`` (``"—"`` for None)."""
    return "—" if x is None else f"{x:.1e}".replace("e-0", "e-").replace("e+0", "e")


def fmt_params(n: float | None) -> str:
    """A parameter or token count with a K/M/B suffix, 3 significant digits below 100."""
    if n is None:
        return "unknown"
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}" if n / div < 100 else f"{n / div:.0f}{unit}"
    return str(int(n))


def fmt_gib(x: float | None) -> str:
    """Memory given in GiB (2**30 bytes): ``"6.1 GiB"``, or MiB below 0.1 GiB."""
    return "unknown" if x is None else (f"{x:.1f} GiB" if x >= 0.1 else f"{x * 1024:.0f} MiB")


def fmt_hours(h: float | None) -> str:
    """A duration given in hours, shown in the unit a person would say (s, min, h)."""
    if h is None:
        return "unknown"
    s = h * 3600
    if s < 0.05:
        return "< 0.1 s"
    if s < 10:
        return f"{s:.1f} s"
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{h:.1f} h"


def fmt_usd(x: float | None) -> str:
    """US dollars: cents below $100, whole dollars above (``"—"`` for None)."""
    if x is None:
        return "—"
    if x < 0.01:
        return "< $0.01"
    return f"${x:.2f}" if x < 100 else f"${x:,.0f}"


def md_cell(text: str) -> str:
    """Escape ``|`` so ``text`` stays one GitHub-Markdown table cell."""
    return text.replace("|", "\\|")


def md_table(header: Sequence[str], align: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A GitHub-Markdown table as lines.

    Args:
        header: column titles (an empty title is one space: ``| | value |``).
        align: one marker per column, as GitHub writes it (``"---"``, ``"---:"``).
        rows: cells, already escaped with :func:`md_cell` where they may hold ``|``.
    """
    out = ["|" + "|".join(f" {h} " if h else " " for h in header) + "|", "|" + "|".join(align) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


def rich_table(columns: Sequence[tuple[str, dict[str, Any]]], **kw: Any) -> Any:
    """A ``rich.table.Table`` with ``columns`` as ``(title, add_column kwargs)``; ``kw`` to the table."""
    from rich.table import Table

    table = Table(**kw)
    for title, opts in columns:
        table.add_column(title, **opts)
    return table


def show_value(value: Any) -> str:
    """A config value as the YAML would spell it (floats in e-notation when small or huge)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e6):
            return fmt_lr(value)
        return repr(value)
    if isinstance(value, (list, dict)):
        import yaml

        return yaml.safe_dump(value, default_flow_style=True, allow_unicode=True).strip()
    return str(value)
