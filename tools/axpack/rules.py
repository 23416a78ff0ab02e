"""One shape for every rule table: a named check with the source that justifies it.

``plan``'s rules (a plan and its config), ``diff``'s change rules (two plans
and their configs) and ``validate``'s pitfalls (a config) are all
:class:`Rule` rows: an ``id`` (stable, kebab-case, shown to users and usable
in tests), a ``source`` (the paper, docs page or pinned code the threshold
comes from) and a ``test`` over the table's subject that returns what it
found, or a falsy value when the rule does not fire. Foundation module: no
axpack imports.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Rule:
    """A named check.

    ``test(*subject)`` returns a falsy value when the rule does not fire, else
    what it found: a message (plan and diff rules) or a list of findings
    (validate's pitfalls: ``(key, what, todo, near)`` tuples).
    """

    id: str
    source: str
    test: Callable[..., Any]


def fire(rules: Iterable[Rule], *subject: Any) -> list[tuple[Rule, Any]]:
    """``(rule, result)`` of every rule in ``rules`` whose test fires on ``subject``, in table order."""
    out = []
    for rule in rules:
        found = rule.test(*subject)
        if found:
            out.append((rule, found))
    return out
