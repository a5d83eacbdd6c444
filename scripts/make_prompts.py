"""Regenerate the scene-prompt files of src/prpg/prompts/ ({category: [100 sentences]}).

The paper asked GPT-3.5 / GPT-4 (temperature 0.7) for 100 numbered sentences per category, each
naming the object as "<new1> <category>". This script does the same with any LLM, then parses the
numbered list, keeps only sentences that name the subject exactly once, turns "<new1> mug" into the
placeholders "{identifier} {category}", drops duplicates, asks again until it has --n per category,
and writes the JSON atomically (merging into an existing file: other categories are kept).

    # a local transformers model (a folder or a hub id already in the HF cache)
    python scripts/make_prompts.py pods --model Qwen/Qwen2.5-7B-Instruct
    # any OpenAI-compatible endpoint; the key comes from $OPENAI_API_KEY (or --api-key-env NAME)
    python scripts/make_prompts.py dogs --endpoint https://api.openai.com/v1 --api-model gpt-4o-mini
    # one category into another file
    python scripts/make_prompts.py pods --categories tote --out my_prompts.json --model ...
    # toybox: no LLM; sentences are built from the toybox world's own caption vocabulary
    python scripts/make_prompts.py toybox

Sets: pods (mug bottle screwdriver shoe tote), df2 (shirt), dogs (dog), toybox (the PODS five).
The toybox generator was trained only on toybox captions ("a photo of a mug on a wooden table,
tilted to the left, with other mugs"), so its prompts use exactly those phrases (backgrounds, pose
words, "partly hidden", distractor phrases) and must fit its 32-token text encoder.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import urllib.request
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

from prpg.core.atomic import write_json_atomic
from prpg.prompts import PROMPT_SETS, PROMPTS_PER_CATEGORY, REFERENCE_IDENTIFIER, SUBJECT, validate_prompts

SET_CATEGORIES = {
    "pods": ("mug", "bottle", "screwdriver", "shoe", "tote"),
    "df2": ("shirt",),
    "dogs": ("dog",),
    "toybox": ("mug", "bottle", "screwdriver", "shoe", "tote"),
}
PROMPTS_DIR = Path(__file__).resolve().parents[1] / "src/prpg/prompts"
TOYBOX_MAX_TOKENS = 32  # GeneratorConfig.max_length of the toybox text encoder (BOS and EOS included)

REQUEST = (
    "Write {n} different one-sentence descriptions of photographs of a {category} in realistic and varied "
    "everyday scenes: different places, surfaces, nearby objects, lighting and seasons. The object is a "
    "specific personal {category} called \"{ident} {category}\"; every sentence must begin with "
    "\"A {ident} {category}\" and contain that phrase exactly once, then describe where it is. "
    "Number the sentences 1 to {n}, one per line, with no other text."
)


# ----------------------------------------------------------------------------- parsing / validation

_NUMBERED = re.compile(r"^\s*(?:[-*•]\s*)?\**\s*(\d{1,4})\s*[.):]\**\s+(.+?)\s*$")


def build_request(category: str, n: int) -> str:
    return REQUEST.format(n=n, category=category, ident=REFERENCE_IDENTIFIER)


def parse_numbered(text: str) -> list[str]:
    """The sentences of a numbered list ("1. ...", "2) ...", "**3.** ..."); other lines are ignored."""
    out = []
    for line in text.splitlines():
        m = _NUMBERED.match(line)
        if m:
            sentence = m.group(2).strip().strip("*").strip().strip("\"'“”‘’").strip()
            if sentence:
                out.append(sentence)
    return out


def to_template(sentence: str, category: str) -> str | None:
    """'A <new1> mug on a desk.' -> 'A {identifier} {category} on a desk'; None when the sentence does
    not name the subject exactly once (or names it in the plural), or holds braces."""
    if "{" in sentence or "}" in sentence:
        return None
    subject = re.compile(re.escape(REFERENCE_IDENTIFIER) + r"\s+" + re.escape(category) + r"\b(?!['’]?s\b)",
                         re.IGNORECASE)
    if len(subject.findall(sentence)) != 1 or sentence.count(REFERENCE_IDENTIFIER) != 1:
        return None
    out = subject.sub(SUBJECT, re.sub(r"\s+", " ", sentence).strip())
    return out.rstrip(".").strip()


def _key(sentence: str) -> str:
    return re.sub(r"[^a-z0-9{} ]", "", sentence.lower()).strip()


def collect(sentences: Iterable[str], category: str, have: list[str], n: int) -> list[str]:
    """`have` extended with the valid, new (case/punctuation-insensitive) templates, up to n."""
    out = list(have)
    seen = {_key(s) for s in out}
    for s in sentences:
        t = to_template(s, category)
        if t is not None and _key(t) not in seen and len(out) < n:
            out.append(t)
            seen.add(_key(t))
    return out


def generate_category(ask: Callable[[str], str], category: str, n: int, max_rounds: int = 6) -> list[str]:
    """Ask until n valid distinct sentences are collected (each round asks for all n again)."""
    got: list[str] = []
    for _ in range(max_rounds):
        got = collect(parse_numbered(ask(build_request(category, n))), category, got, n)
        if len(got) >= n:
            return got
    raise RuntimeError(f"only {len(got)} of {n} valid distinct sentences for '{category}' after {max_rounds} "
                       "requests: try a stronger model or a higher temperature")


# ----------------------------------------------------------------------------- LLM back ends


def transformers_asker(model: str, *, temperature: float = 0.7, max_new_tokens: int = 6000, seed: int = 0):
    """A text-generation pipeline; chat models get the request as a user message."""
    from transformers import pipeline, set_seed

    set_seed(seed)
    gen = pipeline("text-generation", model=model, device_map="auto")

    def ask(request: str) -> str:
        kwargs = dict(max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature)
        if getattr(gen.tokenizer, "chat_template", None):
            out = gen([{"role": "user", "content": request}], **kwargs)[0]["generated_text"]
            return out[-1]["content"]
        return gen(request, return_full_text=False, **kwargs)[0]["generated_text"]

    return ask


def endpoint_asker(url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY", temperature: float = 0.7,
                   timeout: float = 300):
    """POST {url}/chat/completions (OpenAI-compatible); the key, if any, from the environment."""
    key = os.environ.get(api_key_env, "")

    def ask(request: str) -> str:
        body = json.dumps({"model": model, "temperature": temperature,
                           "messages": [{"role": "user", "content": request}]}).encode()
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
        req = urllib.request.Request(url.rstrip("/") + "/chat/completions", data=body, headers=headers)
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())["choices"][0]["message"]["content"]

    return ask


# ----------------------------------------------------------------------------- toybox


def toybox_token_counter():
    """Token count (BOS/EOS included) with the CLIP tokenizer the toybox generator uses."""
    import tempfile

    from prpg.zoo.tokenizer import build_clip_tokenizer

    tok = build_clip_tokenizer(Path(tempfile.mkdtemp(prefix="clip-vocab-")))
    return lambda text: len(tok(text).input_ids)


def toybox_prompts(category: str, n: int = PROMPTS_PER_CATEGORY, seed: int = 0,
                   max_tokens: int = TOYBOX_MAX_TOKENS,
                   count_tokens: Callable[[str], int] | None = None) -> list[str]:
    """n distinct toybox captions of the subject, cycling over the four PODS test conditions: canonical
    table-tops; any background with strong-pose words; with distractors (sometimes partly hidden); both.
    Every phrase comes from the toybox code itself (background phrases, pose_words, distractor_phrase)."""
    import numpy as np

    from prpg.toybox.backgrounds import ALL, BACKGROUNDS, CANONICAL
    from prpg.toybox.objects import CATEGORIES
    from prpg.toybox.scenes import Pose, distractor_phrase, pose_words

    count_tokens = count_tokens or toybox_token_counter()
    rng = np.random.default_rng([seed, zlib.crc32(category.encode())])
    poses = [Pose(rot, scale, flip, persp, (0.5, 0.5))
             for rot in (0.0, 30.0, -30.0) for scale in (1.0, 0.6, 1.2)
             for persp in ((0.0, 0.0), (0.0, 0.2), (0.0, -0.2), (0.2, 0.0)) for flip in (False, True)]
    strong = [p for p in poses if pose_words(p)]
    other_categories = [c for c in CATEGORIES if c != category]
    out: list[str] = []
    for attempt in range(200 * n):
        if len(out) == n:
            return out
        pose, distractors = ((False, False), (True, False), (False, True), (True, True))[attempt % 4]
        names = CANONICAL if not (pose or distractors) else ALL
        words = [f"a photo of a {SUBJECT} {BACKGROUNDS[names[int(rng.integers(len(names)))]].phrase}"]
        if pose:
            words += pose_words(strong[int(rng.integers(len(strong)))])
        if distractors:
            # 1-3 distractors, 40 % of them of the same category, as the toybox draws them
            others = [category if rng.random() < 0.4 else str(rng.choice(other_categories))
                      for _ in range(int(rng.integers(1, 4)))]
            words += (["partly hidden"] if rng.random() < 0.4 else []) + [distractor_phrase(category, others)]
        sentence = ", ".join(words)
        filled = sentence.replace("{identifier}", REFERENCE_IDENTIFIER).replace("{category}", category)
        if sentence not in out and count_tokens(filled) <= max_tokens:
            out.append(sentence)
    raise RuntimeError(f"could not build {n} distinct toybox prompts for '{category}' "
                       f"within {max_tokens} tokens")


# ----------------------------------------------------------------------------- main


def write_prompt_file(path: Path, table: dict[str, list[str]]) -> Path:
    """Merge `table` into the JSON at `path` (other keys kept), validate, and write it atomically."""
    existing = json.loads(path.read_text()) if path.is_file() else {}
    merged = validate_prompts({**existing, **table}, str(path))
    write_json_atomic(path, merged)
    path.chmod(0o644)  # package data: readable by all (the temp file it was renamed from is 0600)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("set", choices=PROMPT_SETS)
    p.add_argument("--categories", help="comma-separated subset (default: all of the set)")
    p.add_argument("--n", type=int, default=PROMPTS_PER_CATEGORY)
    p.add_argument("--out", type=Path, help="default: src/prpg/prompts/<set>.json")
    p.add_argument("--model", help="local transformers model (folder or cached hub id)")
    p.add_argument("--endpoint", help="OpenAI-compatible base URL, e.g. https://api.openai.com/v1")
    p.add_argument("--api-model", help="model name at the endpoint")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    categories = args.categories.split(",") if args.categories else list(SET_CATEGORIES[args.set])
    out = args.out or PROMPTS_DIR / f"{args.set}.json"
    if args.set == "toybox":
        count = toybox_token_counter()
        table = {c: toybox_prompts(c, args.n, args.seed, count_tokens=count) for c in categories}
    else:
        if bool(args.model) == bool(args.endpoint) or (args.endpoint and not args.api_model):
            p.error("give either --model, or --endpoint with --api-model")
        ask = (transformers_asker(args.model, temperature=args.temperature, seed=args.seed) if args.model else
               endpoint_asker(args.endpoint, args.api_model, api_key_env=args.api_key_env,
                              temperature=args.temperature))
        table = {c: generate_category(ask, c, args.n) for c in categories}
    write_prompt_file(out, table)
    print(f"wrote {out}: " + ", ".join(f"{c} {len(v)}" for c, v in table.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
