"""Putting faces back: the Restorer's last part — upscale the frame (Lanczos or Real-ESRGAN), optionally
upsample the restored faces, and blend them in with the parsing mask."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from bfrboost.background import load_upsampler
from bfrboost.faces.paste import paste_faces
from bfrboost.faces.types import FACE_SIZE, Face, FaceNetworks
from bfrboost.options import PasteOptions


class Paster:
    """Restored faces into the (upscaled) photo, as :class:`~bfrboost.options.PasteOptions` asks.

    ``bg_upsampler="realesrgan"`` upscales the whole photo with Real-ESRGAN (tiles of ``bg_tile`` px)
    instead of a Lanczos resize. ``face_upsample`` (with ``upscale`` > 1) also runs each restored face
    through that upsampler (Real-ESRGAN even when the background uses a plain resize) and pastes it
    directly, as CodeFormer does, so faces are as sharp as an upsampled background. With ``aligned``
    inputs the restored crop is the result.
    """

    def __init__(self, options: PasteOptions, device: torch.device, aligned: bool = False,
                 networks: FaceNetworks | None = None) -> None:
        """``networks``: where the parser's network runs (default: PyTorch on ``device``)."""
        self.upscale = float(options.upscale)
        self.aligned = aligned
        self.notes: list[str] = []
        self.mode = options.paste
        self.blend = options.blend  # restored vs original face, applied to the crops before pasting
        self.color_match = options.color_match
        tile = options.bg_tile
        self.background = None if aligned else load_upsampler(options.bg_upsampler, self.upscale, device=device, tile=tile)
        self.face_upsampler = None
        if options.face_upsample and not aligned:
            if self.upscale > 1:
                self.face_upsampler = self.background or load_upsampler("realesrgan", self.upscale, device=device, tile=tile)
            else:
                self.notes.append(f"face upsampling does nothing at upscale {self.upscale:g}; pass -s 2 (up to 4) to use it")
        self.parser = None
        if options.parse and not aligned:
            from bfrboost.faces.parse import load_parser

            self.parser = load_parser(device=device)
            if self.parser is not None and networks is not None:
                self.parser = networks.parser(self.parser)

    def paste(self, image: np.ndarray, faces: list[Face], alpha: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """The upscaled photo with every restored face blended in, and its alpha resized alike."""
        if self.aligned:
            return faces[0].restored, None
        frame = self.upscaled(image)
        if faces:
            masks = self.parser.masks([face.restored for face in faces]) if self.parser is not None else None
            residual = self.mode == "residual"
            if self.face_upsampler is not None:
                faces, masks = self._upsampled_faces(faces, masks)
                residual = False  # the frame under the face is an upscale of the *degraded* face: replace it
            frame = paste_faces(frame, faces, self.upscale, masks=masks, residual=residual, color_match=self.color_match)
        if alpha is not None and self.upscale != 1:
            alpha = cv2.resize(alpha, frame.shape[1::-1], interpolation=cv2.INTER_LINEAR)
        return frame, alpha

    def upscaled(self, image: np.ndarray) -> np.ndarray:
        """The whole photo at ``upscale``× (Real-ESRGAN, also at 1× where it cleans the background; else Lanczos)."""
        if self.background is not None:
            return self.background.upscale(image, self.upscale)
        if self.upscale == 1:
            return image.copy()
        h, w = image.shape[:2]
        size = (round(w * self.upscale), round(h * self.upscale))
        return cv2.resize(image, size, interpolation=cv2.INTER_LANCZOS4)

    def _upsampled_faces(self, faces: list[Face], masks: list[np.ndarray] | None) -> tuple[list[Face], list[np.ndarray] | None]:
        """Copies of ``faces`` whose restored crop is upsampled ``upscale``× by the face upsampler, with
        the crop, mask and affine scaled to match (about pixel centres, as ``cv2.resize``)."""
        s = self.upscale
        size = round(FACE_SIZE * s)
        shift = 0.5 * size / FACE_SIZE - 0.5
        zoom = np.array([[size / FACE_SIZE, 0.0, shift], [0.0, size / FACE_SIZE, shift]])
        out = []
        for face in faces:
            restored = self.face_upsampler.upscale(face.restored, s)
            crop = cv2.resize(face.crop, (size, size), interpolation=cv2.INTER_CUBIC)
            affine = zoom @ np.vstack([face.affine, [0.0, 0.0, 1.0]])
            out.append(Face(box=face.box, score=face.score, landmarks=face.landmarks, affine=affine, crop=crop, restored=restored,
                            extras=face.extras))
        if masks is not None:
            masks = [cv2.resize(mask, (size, size), interpolation=cv2.INTER_LINEAR) for mask in masks]
        return out, masks
