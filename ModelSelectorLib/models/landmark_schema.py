"""The landmark schema: which contour points of which chest X-ray structures a landmark model predicts.

Point names are ``GROUP_NN`` (``RL_04`` = point 4 of the right lung contour); a model's output channels follow
:attr:`LandmarkSchema.names`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from ..errors import InputError

#: landmark groups of the chest X-ray landmark set and their number of contour points
GROUPS: dict[str, int] = {"RL": 44, "LL": 50, "H": 26, "RCLA": 23, "LCLA": 23}
GROUP_NAMES: dict[str, str] = {
    "RL": "right lung", "LL": "left lung", "H": "heart", "RCLA": "right clavicle", "LCLA": "left clavicle",
}  # fmt: skip
GROUP_COLORS: dict[str, tuple[float, float, float]] = {
    "RL": (0.27, 0.56, 0.84), "LL": (0.35, 0.71, 0.35), "H": (0.86, 0.31, 0.24), "RCLA": (0.93, 0.75, 0.26),
    "LCLA": (0.62, 0.42, 0.78),
}  # fmt: skip
#: the lung contours
LUNG_GROUPS = ("RL", "LL")
#: default sub-sampling of each contour: every ``step``-th point (42 landmarks in all)
DEFAULT_STEPS: dict[str, int] = {"RL": 4, "LL": 5, "H": 3, "RCLA": 4, "LCLA": 4}


@dataclasses.dataclass
class LandmarkSchema:
    """Which landmarks a model predicts: for each group, indices into that group's contour.

    Attributes:
        indices: ``{group: [index into the group's points, ...]}`` in channel order.
    """

    indices: dict[str, list[int]]

    @classmethod
    def default(cls, steps: Optional[dict[str, int]] = None) -> LandmarkSchema:
        """Every ``steps[group]``-th point of each group of :data:`GROUPS` (default :data:`DEFAULT_STEPS`)."""
        steps = dict(DEFAULT_STEPS if steps is None else steps)
        bad = [g for g in steps if g not in GROUPS]
        if bad:
            raise InputError(f"unknown landmark group(s) {bad}; expected some of {', '.join(GROUPS)}.")
        return cls({g: list(range(0, GROUPS[g], max(int(s), 1))) for g, s in steps.items()})

    @classmethod
    def from_names(cls, names: Sequence[str]) -> LandmarkSchema:
        """The schema whose point names are ``names`` (``GROUP_NN``, e.g. a model card's label names).

        Raises:
            InputError: a name that is not ``GROUP_NN`` of a known group and contour point.
        """
        indices: dict[str, list[int]] = {}
        for name in names:
            group, _, idx = str(name).rpartition("_")
            if group not in GROUPS or not idx.isdigit() or int(idx) >= GROUPS[group]:
                raise InputError(
                    f"landmark name {name!r} is not GROUP_NN with GROUP one of {', '.join(GROUPS)}."
                )
            indices.setdefault(group, []).append(int(idx))
        return cls(indices)

    @property
    def groups(self) -> list[str]:
        return list(self.indices)

    @property
    def n_points(self) -> int:
        return sum(len(v) for v in self.indices.values())

    @property
    def names(self) -> list[str]:
        """Point names ``GROUP_NN`` (NN = index in the full contour), in channel order."""
        return [f"{g}_{i:02d}" for g, idx in self.indices.items() for i in idx]

    @property
    def group_of(self) -> np.ndarray:
        """``(P,)`` group name of each channel."""
        return np.array([g for g, idx in self.indices.items() for _ in idx])

    def channels(self, group: str) -> np.ndarray:
        """Channel numbers of ``group``."""
        return np.flatnonzero(self.group_of == group)

    @property
    def contours(self) -> list[np.ndarray]:
        """The channel numbers of each group in order: the point indices of each contour."""
        return [self.channels(g) for g in self.groups]

    def to_dict(self) -> dict[str, list[int]]:
        return {g: list(v) for g, v in self.indices.items()}


def landmark_labels(schema: LandmarkSchema) -> list[dict[str, Any]]:
    """Model-card labels of a landmark model: one per channel, value = channel, group colour."""
    return [{"value": i, "name": name, "color": list(GROUP_COLORS.get(name.split("_")[0], (1.0, 0.0, 0.0)))}
            for i, name in enumerate(schema.names)]  # fmt: skip


__all__ = [
    "DEFAULT_STEPS", "GROUPS", "GROUP_COLORS", "GROUP_NAMES", "LUNG_GROUPS", "LandmarkSchema", "landmark_labels",
]  # fmt: skip
