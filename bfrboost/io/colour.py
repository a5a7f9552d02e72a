"""Colour of video frames: the YUV↔RGB matrix and range of a clip, and the tags that tell players.

A YUV video only looks right when the player converts it back to RGB with the matrix (BT.601,
BT.709, BT.2020 …) and range (limited 16–235 or full 0–255) it was encoded with. Players read the
stream's colour tags; when a clip has none they guess by size: BT.709 for HD, BT.601 for SD
(Chromium, mpv and FFmpeg-based players all do; FFmpeg's own converter always assumes BT.601).
So a clip is decoded with its tags, or with the players' guess when untagged, and re-encoded with
the same matrix, range, primaries and transfer, tagged explicitly: every player then shows the
output exactly as it showed the input. The primaries and transfer are only tagged (the RGB values
pass through unchanged, so the picture keeps the input's gamut and gamma).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# FFmpeg's AVColorSpace / AVColorPrimaries / AVColorTransferCharacteristic / AVColorRange values
BT709, UNSPECIFIED, BT470BG, SMPTE170M, BT2020_NCL, BT2020_CL = 1, 2, 5, 6, 9, 10
LIMITED, FULL = 1, 2
# AVColorSpace → swscale's SWS_CS_* table (the matrices swscale can convert with)
_SWSCALE = {BT709: 1, 4: 4, BT470BG: 5, SMPTE170M: 5, 7: 7, BT2020_NCL: 9, BT2020_CL: 9}
# the primaries and transfer that go with a matrix when only the matrix is tagged
_FAMILY = {
    BT709: (BT709, BT709), 4: (4, 4), BT470BG: (BT470BG, SMPTE170M), SMPTE170M: (SMPTE170M, SMPTE170M), 7: (7, 7),
    BT2020_NCL: (9, 14), BT2020_CL: (9, 14),
}


def is_hd(width: int, height: int) -> bool:
    """Whether players take an untagged clip of this size for BT.709 (mpv's and Chromium's rule)."""
    return width >= 1280 or height > 576


def _exact() -> Any:
    """swscale flags for conversions within 1 level (its default rounding is off by up to 3–4), at no cost here."""
    from av.video.reformatter import Interpolation

    return Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT | Interpolation.FULL_CHR_H_INP


@dataclass(frozen=True)
class Colour:
    """How a clip's YUV maps to RGB: FFmpeg's codes for ``matrix``, ``primaries`` and ``trc``
    (1 = BT.709, 5/6 = BT.601 625/525 lines, 9 = BT.2020 …) and ``full_range`` (0–255, else 16–235)."""

    matrix: int
    full_range: bool
    primaries: int
    trc: int

    @classmethod
    def guess(cls, width: int, height: int) -> Colour:
        """What players assume for an untagged clip of this size."""
        matrix = BT709 if is_hd(width, height) else SMPTE170M
        return cls(matrix, False, *_FAMILY[matrix])

    @classmethod
    def of_frame(cls, frame: Any) -> Colour:
        """The colour of a decoded frame: its tags, the players' guess for what is untagged."""
        guess = cls.guess(frame.width, frame.height)
        matrix = frame.colorspace if frame.colorspace in _SWSCALE else guess.matrix
        primaries, trc = _FAMILY[matrix]
        return cls(
            matrix,
            frame.color_range == FULL or frame.format.name.startswith("yuvj"),
            frame.color_primaries if frame.color_primaries not in (0, UNSPECIFIED) else primaries,
            frame.color_trc if frame.color_trc not in (0, UNSPECIFIED) else trc,
        )

    def _sws(self) -> tuple[Any, Any]:
        from av.video.reformatter import ColorRange, Colorspace

        return Colorspace(_SWSCALE[self.matrix]), ColorRange.JPEG if self.full_range else ColorRange.MPEG

    def to_rgb(self, frame: Any) -> np.ndarray:
        """``frame`` as RGB uint8 (H, W, 3), converted with this matrix and range."""
        if frame.format.is_rgb or frame.format.name.startswith("gray"):
            return frame.to_ndarray(format="rgb24")
        from av.video.reformatter import ColorRange

        space, rng = self._sws()
        rgb = frame.reformat(
            format="rgb24", src_colorspace=space, dst_colorspace=space, src_color_range=rng, dst_color_range=ColorRange.JPEG,
            interpolation=_exact(),
        )
        return rgb.to_ndarray()

    def from_rgb(self, rgb: np.ndarray) -> Any:
        """A tagged ``yuv420p`` :class:`av.VideoFrame` of ``rgb`` (even sizes), converted with this matrix and range."""
        import av

        space, rng = self._sws()
        source = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame = source.reformat(
            format="yuv420p", src_colorspace=space, dst_colorspace=space, dst_color_range=rng,
            dst_color_trc=self.trc, dst_color_primaries=self.primaries, interpolation=_exact(),
        )
        frame.colorspace = self.matrix
        return frame

    def tag(self, codec_context: Any) -> None:
        """Write the tags into an encoder's context (H.264 VUI, VP9 colour config, container atoms)."""
        codec_context.colorspace = self.matrix
        codec_context.color_range = FULL if self.full_range else LIMITED
        codec_context.color_primaries = self.primaries
        codec_context.color_trc = self.trc
