"""PGDiff partial guidance over the FFHQ-512 IDDPM prior: colourise, inpaint, old photos, guided restoration.

``GuidedRestorer`` runs it on whole photos (detect → align → guided sampling → paste, like
:class:`bfrboost.Restorer`); ``PGDiff`` on aligned crops; ``sampler.sample`` and the properties
in ``properties`` are the building blocks.
"""

from bfrboost.guidance.restorer import GuidedRestorer, color_mask, read_mask
from bfrboost.guidance.sampler import Guidance, sample
from bfrboost.guidance.tasks import PGDiff, load_prior, make_guidance

__all__ = [
    "Guidance", "GuidedRestorer", "PGDiff",
    "color_mask", "load_prior", "make_guidance", "read_mask", "sample",
]
