"""PGDiff partial guidance over the FFHQ-512 IDDPM prior: colourise, inpaint, old photos, guided restoration.

``Restorer("pgdiff", guidance=GuidanceOptions(task=...))`` runs it on whole photos (the ``pgdiff``
face restorer, :mod:`bfrboost.restorers.guided`); ``PGDiff`` on aligned crops; ``sampler.sample``
and the properties in ``properties`` are the building blocks; ``masks`` reads and warps masks.
"""

from bfrboost.guidance.masks import color_mask, read_mask
from bfrboost.guidance.sampler import Guidance, sample
from bfrboost.guidance.tasks import PGDiff, load_prior, make_guidance

__all__ = [
    "Guidance", "PGDiff",
    "color_mask", "load_prior", "make_guidance", "read_mask", "sample",
]
