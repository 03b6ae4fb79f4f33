"""Selection: which models of the zoo apply to an image, from the image and the models alone.

- :mod:`.views`, :mod:`.encoder`: the bundled encoder (image -> view embeddings, modality x region class);
- :mod:`.prototypes`: what represents a model in the index (exemplar and data-free prototypes);
- :mod:`.inversion`: inputs synthesised from a model alone (model inversion);
- :mod:`.index`: the hnswlib index over every model's prototypes;
- :mod:`.scoring`: per-model scores for one image; :mod:`.selector`: :func:`select`;
- :mod:`.calibration`: the calibrated "nothing fits" threshold, and the calibrated index of a zoo.

Nothing here imports :mod:`ModelSelectorLib.training`.
"""

from __future__ import annotations

from .selector import ModelMatch, Selection, select, verify_fit

__all__ = ["ModelMatch", "Selection", "select", "verify_fit"]
