"""The one quality vocabulary of the suite: an episode's label when recorded, a sample's data role when trained.

The recorder's checks, the converter's ``--quality`` choices, the dataset's ``quality`` column, the
training roles and the ``QUALITY_*`` constants of ``lda_msgs/srv/StopEpisode`` all come from
:class:`Quality` (a test holds the service constants to it).
"""

from __future__ import annotations

import enum


class Quality(enum.IntEnum):
    """Quality label; the value is the id stored in datasets and used as the data role in training batches."""

    HIGH = 0  # clean expert demonstrations: every objective (paper section III-B)
    LOW = 1  # valid but suboptimal actions: dynamics and forecasting, never imitation
    ACTIONLESS = 2  # video and state without actions: forecasting only

    @property
    def label(self) -> str:
        """The name written in datasets, services and on the command line: ``high``, ``low``, ``actionless``."""
        return self.name.lower()

    @classmethod
    def parse(cls, value: Quality | str | int) -> Quality:
        """A member from itself, its label (case-insensitive) or its id; ``ValueError`` naming the value."""
        if isinstance(value, str):
            try:
                return cls[value.strip().upper()]
            except KeyError:
                raise ValueError(f"unknown quality {value!r}; one of {list(QUALITIES)}") from None
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"unknown quality id {value!r}; one of {[int(q) for q in cls]}") from None


#: The labels in id order, for argparse choices and messages.
QUALITIES: tuple[str, ...] = tuple(q.label for q in Quality)
