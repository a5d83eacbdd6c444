"""The one rule for instance, category and dataset names, and for paths built from them.

Names become folder names (outputs/personalize/<instance>), DVC stage names (personalize@<instance>)
and command-line arguments (`-r instance <name>`), so they are data that must never be read as code
or as a path: the dataset reader, `prpg data check` and params validation all apply this rule.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

NAME_MAX = 100
# ASCII letters and digits, then also '.', '_', '-': no shell metacharacter, quote, space, slash or
# non-ASCII look-alike; a leading letter/digit rules out hidden files ('.x') and options ('-x').
NAME_RULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
RULE_TEXT = (
    f"1 to {NAME_MAX} characters from A-Z a-z 0-9 . _ -, starting with a letter or digit, without '..'"
)


class BadNameError(ValueError):
    """A name or path that breaks the rule; the message names the entry, where it came from and the rule."""


def name_problem(value: object) -> str | None:
    """Why `value` is not a valid name, or None when it is."""
    if not isinstance(value, str):
        return f"is a {type(value).__name__}, not a string"
    if not value:
        return "is empty"
    if len(value) > NAME_MAX:
        return f"is {len(value)} characters long"
    if ".." in value:
        return "contains '..'"
    if not NAME_RULE.fullmatch(value):
        bad = sorted({c for c in value if not re.fullmatch(r"[A-Za-z0-9._-]", c)})
        if bad:
            return "contains " + " ".join(repr(c) for c in bad)
        return f"starts with {value[0]!r}"
    return None


def name_error(value: object, what: str) -> str | None:
    """The message for a bad name (None when it is valid), for reports that say where themselves."""
    why = name_problem(value)
    if why is None:
        return None
    return (
        f"{what} {value!r} {why}; a name must be {RULE_TEXT} "
        "(names become folder names and command-line arguments): rename it"
    )


def check_name(value: object, what: str, where: str) -> str:
    """`value` when it is a valid name; else BadNameError naming `what` (e.g. "instance name"),
    `where` it came from (a file or params key) and the rule."""
    message = name_error(value, what)
    if message is not None:
        raise BadNameError(f"{where}: {message}")
    return value  # type: ignore[return-value]  # a str: name_problem checked it


def case_duplicates(names: Iterable[str]) -> list[list[str]]:
    """Groups of names equal but for case ('Mug' and 'mug'): one folder on macOS / Windows, two here."""
    groups: dict[str, list[str]] = defaultdict(list)
    for name in dict.fromkeys(names):
        groups[name.casefold()].append(name)
    return [sorted(g) for g in groups.values() if len(g) > 1]


def check_unique(names: Iterable[str], what: str, where: str) -> None:
    """BadNameError when two names differ only by case."""
    dups = case_duplicates(names)
    if dups:
        listed = "; ".join(" and ".join(repr(n) for n in g) for g in dups)
        raise BadNameError(
            f"{where}: {what}s {listed} differ only by case, which is one folder on case-insensitive "
            "file systems; rename one of them"
        )


def contained(root: str | Path, path: str | Path, where: str = "") -> Path:
    """`path` (absolute, or relative to `root`) resolved, when it stays inside `root` after
    following '..' and symlinks; else BadNameError. Guards every path built from a name or a JSON field."""
    root_real = Path(root).resolve()
    real = (Path(root) / path).resolve()  # an absolute `path` replaces root: caught just below
    if real != root_real and not real.is_relative_to(root_real):
        prefix = f"{where}: " if where else ""
        raise BadNameError(
            f"{prefix}{str(path)!r} leads to {real}, outside {root_real}; paths built from names and "
            "JSON fields must stay inside their root (no '..', absolute paths or symlinks out of it)"
        )
    return real
