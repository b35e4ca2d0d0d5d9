"""Every PIL mode is decoded to the right RGB pixels (a 16-bit PNG is not read as all white)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmembed.data.images import load_image_file, to_rgb
from mmembed.errors import ImageError


def pixels(image: Image.Image) -> np.ndarray:
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == image.size
    return np.asarray(rgb, dtype=np.int16)


def grey(*values: int) -> np.ndarray:
    return np.array([[[v, v, v] for v in values]], dtype=np.int16)


def saved(tmp_path: Path, image: Image.Image, name: str) -> Path:
    path = tmp_path / name
    image.save(path)
    return path


def test_16_bit_greyscale_png_keeps_its_levels(tmp_path):
    levels = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    path = saved(tmp_path, Image.fromarray(levels), "deep.png")
    with Image.open(path) as im:
        assert im.mode == "I;16"
    assert np.array_equal(np.asarray(load_image_file(path, "x")), grey(0, 1, 128, 255))


def test_32_bit_integer_mode_is_read_as_16_bit_levels():
    image = Image.fromarray(np.array([[0, 514, 65535, 70000]], dtype=np.int32), "I")
    assert np.array_equal(pixels(image), grey(0, 2, 255, 255))


@pytest.mark.parametrize("values, expected", [
    ([0.0, 0.5, 1.0], (0, 128, 255)),  # normalised floats
    ([0.0, 100.0, 300.0], (0, 100, 255)),  # 0-255 floats, clipped
])
def test_float_mode(values, expected):
    image = Image.fromarray(np.array([values], dtype=np.float32), "F")
    assert np.array_equal(pixels(image), grey(*expected))


def test_grey_with_alpha_is_composited_on_white():
    image = Image.new("LA", (3, 1))
    image.putdata([(0, 255), (0, 0), (100, 128)])
    expected = np.array([[[0] * 3, [255] * 3, [177] * 3]])  # 100*128/255 + 255*127/255 = 177.2
    assert np.abs(pixels(image) - expected).max() <= 1


def test_premultiplied_grey_with_alpha():
    image = Image.frombytes("La", (2, 1), bytes([50, 100, 0, 0]))  # grey 127.5 at alpha 100, transparent
    # over white: 127.5 * 100/255 + 255 * 155/255 = 50 + 155
    assert np.abs(pixels(image) - np.array([[[205] * 3, [255] * 3]])).max() <= 1


def test_palette_with_transparency(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putdata([0, 1])
    image.info["transparency"] = 1
    path = saved(tmp_path, image, "p.png")
    assert np.array_equal(np.asarray(load_image_file(path, "x")), [[[255, 0, 0], [255, 255, 255]]])


def test_palette_with_alpha_mode():
    image = Image.new("PA", (1, 1))
    image.putpalette([0, 0, 255] + [0] * 765)
    image.putdata([(0, 0)])
    assert np.array_equal(pixels(image), [[[255, 255, 255]]])


@pytest.mark.parametrize("cmyk, rgb", [
    ((0, 0, 0, 0), (255, 255, 255)), ((0, 0, 0, 255), (0, 0, 0)), ((255, 0, 0, 0), (0, 255, 255)),
    ((0, 255, 0, 0), (255, 0, 255)), ((0, 0, 255, 0), (255, 255, 0)),
])
def test_cmyk_jpeg(tmp_path, cmyk, rgb):
    path = saved(tmp_path, Image.new("CMYK", (8, 8), cmyk), "c.jpg")
    assert np.abs(np.asarray(load_image_file(path, "x"), dtype=np.int16) - np.array(rgb)).max() <= 3


def test_rgba_matches_the_previous_compositing():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (5, 7, 4), dtype=np.uint8), "RGBA")
    reference = Image.new("RGB", image.size, (255, 255, 255))
    reference.paste(image, mask=image.getchannel("A"))  # what emoji images were always read as
    assert np.array_equal(pixels(image), np.asarray(reference))


@pytest.mark.parametrize("mode, value, expected", [
    ("L", 77, (77, 77, 77)), ("1", 1, (255, 255, 255)), ("RGBX", (1, 2, 3, 0), (1, 2, 3)),
    ("HSV", (0, 255, 255), (255, 0, 0)), ("YCbCr", (255, 128, 128), (255, 255, 255)),
])
def test_other_modes(mode, value, expected):
    assert np.abs(pixels(Image.new(mode, (1, 1), value)) - np.array(expected)).max() <= 1


def test_a_truncated_file_is_an_error_naming_it(tmp_path):
    path = saved(tmp_path, Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 9), "t.png")
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(ImageError, match=r"t\.png.*unreadable image"):
        load_image_file(path, "x")


def test_loading_images_never_changes_the_warnings_filters(tmp_path):
    """Threads loading images must not race on warnings state (catch_warnings is not thread-safe)."""
    import threading
    import warnings as warnings_module

    from mmembed.data.images import load_image_file
    from mmembed.errors import ImageError

    Image.new("RGB", (8, 8)).save(tmp_path / "small.png")
    Image.new("1", (13000, 13000)).save(tmp_path / "big.png")  # 169 M pixels, a few kB
    before = list(warnings_module.filters)
    failures = []

    def work():
        for _ in range(5):
            load_image_file(tmp_path / "small.png", "s")
            try:
                load_image_file(tmp_path / "big.png", "b", max_pixels=1_000_000)
                failures.append("big image accepted")
            except ImageError:
                pass

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures and list(warnings_module.filters) == before
