"""What the filter stage tries: the synthesized positives, then, when they run out before enough are
kept, fresh samples from the instance's personalized generator (filter.sample_more). Apart from
filtering.py, which prpg.evaluate imports too: only the filter stage needs the generator code."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path

from PIL import Image

from prpg.core.configs import SynthesizeConfig
from prpg.core.models import load_generator
from prpg.personalize import load_personalized
from prpg.synthesize import sample_stream


def candidate_images(synthesized: Iterable[str | Path], more: Iterable[Image.Image] = (), *,
                     max_attempts: int) -> Iterator[Image.Image]:
    """What the filter tries, at most `max_attempts`: the synthesized image files, then `more` (fresh
    samples). `more` is only read once the files run out, so a lazy sampler loads no generator when
    the synthesized set is enough."""
    files = (Image.open(p).convert("RGB") for p in synthesized)
    return itertools.islice(itertools.chain(files, more), max_attempts)


def personalized_samples(generator: str, personalized_dir: str | Path, positives: SynthesizeConfig, instance: str,
                         category: str, seed: int, device: str = "cpu") -> Iterator[Image.Image]:
    """Endless fresh positives from the instance's personalized generator (the synthesize stage's
    prompts, new seeds). A generator function: nothing is loaded before the first image is asked for."""
    pipe = load_personalized(load_generator(generator, device=device), personalized_dir)
    yield from sample_stream(pipe, positives, instance, category, seed=seed)
