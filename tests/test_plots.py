"""prpg.core.plots: the image grid of the stage notebooks."""

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from prpg.core.plots import image_grid


def _image(value: int) -> Image.Image:
    return Image.new("RGB", (8, 8), (value, value, value))


def test_one_row_per_set_with_blank_cells_past_its_images(tmp_path):
    path = tmp_path / "a.png"
    _image(200).save(path)
    fig = image_grid({"class images": [path, str(path), _image(10)], "negatives": [_image(50)]}, 4,
                     width=8, row_height=2, title="mug")
    try:
        axes = np.array(fig.axes).reshape(2, 4)
        assert tuple(fig.get_size_inches()) == (8, 4)
        assert [[len(ax.images) for ax in row] for row in axes] == [[1, 1, 1, 0], [1, 0, 0, 0]]
        assert not any(ax.axison for ax in axes.flat)
        assert axes[0, 0].get_title(loc="left") == "class images" and axes[1, 0].get_title(loc="left") == "negatives"
        assert axes[0, 1].get_title(loc="left") == "" and fig._suptitle.get_text() == "mug"
        assert axes[0, 0].images[0].get_array()[0, 0, 0] == 200  # files are opened, images shown as they are
    finally:
        plt.close(fig)


def test_captions_title_each_image_instead_of_the_row():
    fig = image_grid({"kept": [_image(1), _image(2)], "rejected": [_image(3)], "none kept": []}, 3,
                     captions={"kept": ["kept 0.91", "kept 0.80"], "rejected": ["rejected 0.20", "unused"],
                               "none kept": []})
    try:
        axes = np.array(fig.axes).reshape(3, 3)
        assert [ax.get_title() for ax in axes[0]] == ["kept 0.91", "kept 0.80", ""]
        assert [ax.get_title() for ax in axes[1]] == ["rejected 0.20", "", ""]
        assert all(ax.get_title(loc="left") == "" for ax in axes[:2].flat)
        assert axes[2, 0].get_title(loc="left") == "none kept"  # an empty row still says what it is
        assert fig._suptitle is None
    finally:
        plt.close(fig)


def test_more_images_than_cells_shows_the_first_ncols():
    fig = image_grid({"samples": [_image(k) for k in range(5)]}, 2)
    try:
        assert [len(ax.images) for ax in fig.axes] == [1, 1]
        assert fig.axes[1].images[0].get_array()[0, 0, 0] == 1
    finally:
        plt.close(fig)
