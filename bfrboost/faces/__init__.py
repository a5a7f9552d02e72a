"""Face stages: detect → align → (restore elsewhere) → parse → paste back."""

from bfrboost.faces.align import FFHQ_TEMPLATE_512, estimate_affine, warp_faces
from bfrboost.faces.detect import DETECTORS, Detector, get_detector
from bfrboost.faces.parse import FaceParser, load_parser
from bfrboost.faces.paste import match_color, paste_faces, soft_square_mask
from bfrboost.faces.select import FaceSelector, PersonMatcher, Selection
from bfrboost.faces.types import Face

__all__ = [
    "DETECTORS",
    "FFHQ_TEMPLATE_512",
    "Detector",
    "Face",
    "FaceParser",
    "FaceSelector",
    "PersonMatcher",
    "Selection",
    "estimate_affine",
    "get_detector",
    "load_parser",
    "match_color",
    "paste_faces",
    "soft_square_mask",
    "warp_faces",
]
