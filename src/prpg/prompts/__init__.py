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

The paper's own lists (GPT-written, keyed by instance) are NOT shipped: they are the paper's inputs, like
a dataset, and `prpg data download prompts` fetches them from the reference repository at a pinned
commit, checksum verified, into data/prompts/ (REFERENCE_PROMPT_FILES; prpg.prompts.download). Paper
experiments read them from there (experiments/datasets/<dataset>.yaml).
"""

from __future__ import annotations

import itertools
import json
import os
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
# Where the shipped sets live, relative to the repository root (src layout): the DVC dependency of a
# stage that reads a shipped set (a set name is not a path; see prompt_file_path).
SHIPPED_DIR = "src/prpg/prompts"
# The paper's prompt files: the reference repository at its last commit (2025-02-27), one file per dataset,
# {instance: [100 sentences]}. A download is kept only if its sha256 is the one pinned here.
REFERENCE_REPO = "ssundaram21/personalized-rep"
REFERENCE_COMMIT = "2679a9234a0a264ab2cf1dcae1edb8d0c5990d1e"
REFERENCE_URL = "https://raw.githubusercontent.com/{repo}/{commit}/configs/prompts/{file}"
REFERENCE_PROMPT_FILES = {  # dataset -> (file name, sha256)
    "pods": ("gpt_prompts_pods.json", "01dcd7f727d12fb37e859e241b9cc79a87f57df8873c3bd865bacff78d79b3c2"),
    "dogs": ("gpt_prompts_dogs.json", "d262a9bc29ba29b7f0713a788746a9032c81ba1e75d45208757964113d0bb9e2"),
    "df2": ("gpt_prompts_df2.json", "46d50f764a1b4837ff218d5c92e9d22627dbf98892cef509aeb936893c49e656"),
}
PROMPTS_DIR = "data/prompts"  # where `prpg data download prompts` puts them: data/, which data.dvc tracks


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


def reference_prompt_file(dataset: str, folder: str | Path = PROMPTS_DIR) -> str:
    """The path of a dataset's downloaded reference prompt file, e.g. data/prompts/gpt_prompts_pods.json."""
    if dataset not in REFERENCE_PROMPT_FILES:
        raise PromptFileError(f"no reference prompt file for dataset {dataset!r}; the reference ships "
                              f"{', '.join(REFERENCE_PROMPT_FILES)}")
    return str(Path(folder) / REFERENCE_PROMPT_FILES[dataset][0])


def prompt_file_path(name_or_path: str | Path) -> Path:
    """The file a prompt_file value names, relative to the repository root for a shipped set (the path a
    DVC dependency must cover), without checking that it exists."""
    if str(name_or_path) in PROMPT_SETS:
        return Path(SHIPPED_DIR) / f"{name_or_path}.json"
    return Path(name_or_path)


def covers(source: str | Path, name_or_path: str | Path) -> bool:
    """Whether the file or folder `source` holds the prompt file `name_or_path` (compared as paths, both
    relative to the same working directory: no file needs to exist)."""
    src = Path(os.path.abspath(source))
    target = Path(os.path.abspath(prompt_file_path(name_or_path)))
    return target == src or target.is_relative_to(src)


def stand_in_reference_prompts(instances: Mapping[str, str], n: int = 4) -> dict[str, list[str]]:
    """A reference-FORMAT table for worlds without the download (rehearsals, launch checks): keyed by
    instance, `n` sentences each, the identifier written `<new1>` before the category word as in the
    paper's files. Not the paper's sentences; only their shape."""
    scenes = ("on a wooden table", "in a sunny park", "on a kitchen counter", "next to a window",
              "on a beach at sunset", "in a cluttered room", "on a stone wall", "in the snow")
    if not 1 <= n <= len(scenes):
        raise ValueError(f"n must be 1..{len(scenes)}, got {n}")
    return {name: [f"A {REFERENCE_IDENTIFIER} {category} {scene}" for scene in scenes[:n]]
            for name, category in instances.items()}


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
