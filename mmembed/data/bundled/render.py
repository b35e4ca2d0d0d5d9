"""Rendering emoji from the Noto Color Emoji font into deterministic PNG files.

The font is a colour bitmap font with one strike (109 px), so it is loaded at size 109 and drawn
with ``embedded_color``. A sequence the font cannot draw as one glyph (too new for this font
version) comes out either empty or as several glyphs side by side; :meth:`EmojiRenderer.fits`
tells those apart so that such emoji are left out instead of shipping a wrong picture.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

from mmembed.errors import MissingDependencyError

log = logging.getLogger(__name__)

FONT_SIZE = 109  # the font's only bitmap strike
CANVAS = (136, 128)  # width x height of one glyph at that size
BACKGROUND = (255, 255, 255)


class EmojiRenderer:
    """Draws single emoji on a white canvas and writes them as PNG."""

    def __init__(self, font_path: Path):
        from PIL import ImageFont, features

        if not features.check("raqm"):
            # Without complex text layout, ZWJ and skin-tone sequences fall apart into their parts.
            raise MissingDependencyError("rendering emoji sequences needs Pillow built with libraqm "
                                         "(the PyPI wheels are); reinstall with: pip install --force-reinstall pillow")
        self.font = ImageFont.truetype(str(font_path), FONT_SIZE, layout_engine=ImageFont.Layout.RAQM)
        self._fits: dict[str, bool] = {}

    def fits(self, sequence: str) -> bool:
        """True when the font draws ``sequence`` as exactly one non-empty glyph."""
        if sequence not in self._fits:
            left, top, right, bottom = self.font.getbbox(sequence)
            one_glyph = self.font.getlength(sequence) <= CANVAS[0] + 0.5
            self._fits[sequence] = one_glyph and bottom > top and right > left
        return self._fits[sequence]

    def render(self, sequence: str):
        """The emoji as an RGB image of :data:`CANVAS` size (transparency composed onto white)."""
        from PIL import Image, ImageDraw

        glyph = Image.new("RGBA", CANVAS, (0, 0, 0, 0))
        ImageDraw.Draw(glyph).text((0, 0), sequence, font=self.font, embedded_color=True)
        canvas = Image.new("RGB", CANVAS, BACKGROUND)
        canvas.paste(glyph, mask=glyph.getchannel("A"))
        return canvas

    def png_bytes(self, sequence: str) -> bytes:
        """PNG bytes without metadata, so equal pixels give equal files on every run."""
        buffer = io.BytesIO()
        self.render(sequence).save(buffer, format="PNG", compress_level=6, optimize=False)
        return buffer.getvalue()
