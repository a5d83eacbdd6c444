"""A real CLIP tokenizer with no download: open_clip ships CLIP's BPE merges inside its package.

From those merges we write the `vocab.json` + `merges.txt` pair that `transformers.CLIPTokenizer`
reads. The result yields exactly the token ids of OpenAI's CLIP (and so of SD 1.5's tokenizer), so
DreamBooth's identifier `<new1>` splits into the same sub-tokens as in the paper.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

N_MERGES = 49152 - 256 - 2  # CLIP's vocabulary: 256 bytes x2 (+</w>) + merges + 2 specials = 49408


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2/CLIP byte-level mapping: printable bytes map to themselves, the rest to 256+n.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def clip_bpe_path() -> Path:
    import open_clip

    return Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"


def write_clip_vocab(out_dir: Path) -> tuple[Path, Path]:
    lines = gzip.open(clip_bpe_path()).read().decode("utf-8").split("\n")[1 : N_MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    base = list(_bytes_to_unicode().values())
    vocab = base + [b + "</w>" for b in base] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = out_dir / "vocab.json", out_dir / "merges.txt"
    vocab_file.write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
    merges_file.write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return vocab_file, merges_file


def build_clip_tokenizer(work_dir: Path, max_length: int = 77):
    from transformers import CLIPTokenizer

    vocab_file, merges_file = write_clip_vocab(work_dir)
    return CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=max_length, pad_token="<|endoftext|>")
