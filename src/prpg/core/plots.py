"""Figures the stage notebooks share."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image

ImageLike = Image.Image | str | Path


def image_grid(rows: Mapping[str, Sequence[ImageLike]], ncols: int, *,
               captions: Mapping[str, Sequence[str]] | None = None, width: float = 12, row_height: float = 1.7,
               title: str | None = None, fontsize: float = 8):
    """One row of up to `ncols` images per entry of `rows` (images or image files), axes off; cells
    past a row's images stay blank. Each row's label is the left title of its first cell, unless
    `captions` gives that row a caption per image (which then says what the row is) and it has images."""
    import matplotlib.pyplot as plt

    captions = captions or {}
    fig, axes = plt.subplots(len(rows), ncols, figsize=(width, row_height * len(rows)), squeeze=False)
    for row_axes, (label, images) in zip(axes, rows.items(), strict=True):
        for ax in row_axes:
            ax.axis("off")
        for ax, image in zip(row_axes, images, strict=False):
            ax.imshow(Image.open(image) if isinstance(image, str | Path) else image)
        if label in captions and images:
            for ax, caption in zip(row_axes, captions[label][: len(images)], strict=False):
                ax.set_title(caption, fontsize=fontsize)
        else:
            row_axes[0].set_title(label, fontsize=fontsize, loc="left")
    if title:
        fig.suptitle(title, fontsize=fontsize + 1)
    fig.tight_layout()
    return fig
