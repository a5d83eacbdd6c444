"""Scene-prompt files: `{category: [sentences]}` JSONs, one per dataset, shipped as package data.

Every sentence names the subject as `{identifier} {category}` ("A {identifier} {category} on a
picnic blanket"). Both placeholders are filled at generation time: the identifier with the
DreamBooth token (`<new1>` by default), the category with the dataset's own category word, i.e.
the word the DreamBooth instance prompt was trained with. That is also why the tote list is keyed
`tote` here: the reference's PODS file calls it `bag` and writes "<new1> bag" into the sentences,
a different word from the one its DreamBooth run was trained on ("a photo of <new1> tote").

The reference's files also load: they are keyed by instance name and write the identifier
literally as `<new1>` (it is replaced by the configured identifier); a `bag` key serves totes.

Shipped sets: pods (mug, bottle, screwdriver, shoe, tote), df2 (shirt), dogs (dog), toybox (the
PODS categories, in the toybox world's caption vocabulary only; see scripts/make_prompts.py).
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

PROMPT_SETS = ("pods", "df2", "dogs", "toybox")
IDENTIFIER = "{identifier}"
CATEGORY = "{category}"
SUBJECT = f"{IDENTIFIER} {CATEGORY}"
REFERENCE_IDENTIFIER = "<new1>"  # how the reference's prompt files write the identifier
CATEGORY_ALIASES = {"tote": ("bag",)}  # our category -> the reference's key for it
PROMPTS_PER_CATEGORY = 100  # the reference's lists all hold exactly 100 sentences
_BRACES = re.compile(r"\{[^{}]*\}|[{}]")


class PromptFileError(ValueError):
    """A prompt file is missing, malformed, or has no list for the requested instance/category."""


def prompt_path(name_or_path: str | Path) -> Path:
    """A shipped set name (pods, df2, dogs, toybox) or the path of a JSON file."""
    if str(name_or_path) in PROMPT_SETS:
        return Path(str(resources.files(__name__).joinpath(f"{name_or_path}.json")))
    path = Path(name_or_path)
    if not path.is_file():
        raise PromptFileError(
            f"prompt file '{name_or_path}' not found: pass one of {', '.join(PROMPT_SETS)} "
            "or the path of a JSON file {category or instance: [sentences]}"
        )
    return path


def validate_prompts(obj: object, source: str) -> dict[str, list[str]]:
    """The file's dict, checked: lists of non-empty sentences that each name the subject."""
    if not isinstance(obj, Mapping) or not obj:
        raise PromptFileError(f"{source}: expected a non-empty JSON object {{category: [sentences]}}")
    out: dict[str, list[str]] = {}
    for key, sentences in obj.items():
        if not isinstance(sentences, list) or not sentences:
            raise PromptFileError(f"{source}: key '{key}' must map to a non-empty list of sentences")
        for i, s in enumerate(sentences):
            if not isinstance(s, str) or not s.strip():
                raise PromptFileError(f"{source}: '{key}'[{i}] is not a non-empty string")
            if IDENTIFIER not in s and REFERENCE_IDENTIFIER not in s:
                raise PromptFileError(
                    f"{source}: '{key}'[{i}] = {s!r} has no identifier: write '{SUBJECT}' where the "
                    "personal object is named"
                )
            unknown = [b for b in _BRACES.findall(s) if b not in (IDENTIFIER, CATEGORY)]
            if unknown:
                raise PromptFileError(
                    f"{source}: '{key}'[{i}] = {s!r} has {unknown}: only {IDENTIFIER} and {CATEGORY} may "
                    "appear in braces"
                )
        out[str(key)] = list(sentences)
    return out


def load_prompts(name_or_path: str | Path) -> dict[str, list[str]]:
    path = prompt_path(name_or_path)
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise PromptFileError(f"{path}: not valid JSON ({err})") from err
    return validate_prompts(obj, str(path))


def prompts_for(prompts: Mapping[str, list[str]], *, instance: str, category: str,
                source: str = "") -> list[str]:
    """The list for an instance: by instance name (reference files), then category, then alias."""
    for key in (instance, category, *CATEGORY_ALIASES.get(category, ())):
        if key in prompts:
            return list(prompts[key])
    raise PromptFileError(
        f"prompt file {source or ''} has no list for instance '{instance}' or category '{category}' "
        f"(keys: {', '.join(sorted(prompts))}); add one, e.g. with scripts/make_prompts.py"
    )


def category_prompts(prompts: Mapping[str, list[str]], *, category: str, instances: Sequence[str] = (),
                     source: str = "") -> list[str]:
    """The sentences of a whole category (generated backgrounds are shared per category): its own list
    in a category-keyed file; in an instance-keyed (reference) file, the lists of the category's
    `instances`, interleaved (first sentence of each, then the second, ...) without repeats."""
    for key in (category, *CATEGORY_ALIASES.get(category, ())):
        if key in prompts:
            return list(prompts[key])
    lists = [prompts[i] for i in instances if i in prompts]
    if not lists:
        raise PromptFileError(
            f"prompt file {source or ''} has no list for category '{category}' nor for any of its instances "
            f"({', '.join(list(instances)[:5]) or 'none given'}; keys: {', '.join(sorted(prompts)[:8])} ...); "
            "key it by category or by the dataset's instance names"
        )
    interleaved = [s for row in itertools.zip_longest(*lists) for s in row if s is not None]
    return list(dict.fromkeys(interleaved))


def fill(sentence: str, identifier: str, category: str) -> str:
    """The sentence with the identifier and category substituted (no str.format: text may hold braces)."""
    out = sentence.replace(IDENTIFIER, identifier).replace(CATEGORY, category)
    return out.replace(REFERENCE_IDENTIFIER, identifier) if identifier != REFERENCE_IDENTIFIER else out
