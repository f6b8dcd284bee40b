"""Action chunks as they travel through deployment, ROS-free and torch-free.

- :class:`ProposedChunk`: a chunk in physical units as the model host proposes it;
- :func:`chunk_digest`: what binds an approval to the proposal it approves;
- :class:`HandTrajectory` / :class:`ChunkPlan`: a chunk chained into absolute per-hand targets.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from lda_common.geometry import HandsState, HandState, blend_states


def chunk_digest(sequence: int, stamp_ns: int, embodiment: str, actions: np.ndarray) -> str:
    """SHA-256 (hex) of a chunk's identity: sequence, observation stamp [ns], embodiment, shape (rows x
    columns) and the float32 actions exactly as they travel in ``lda_msgs/ActionChunk`` (so both ends hash
    the same bytes). Not covered: the column names, ``dt``, ``frame_id`` and the other fields (the gate
    checks names and ``dt`` against the robot itself). Without a key it detects corruption and an
    approval re-bound to other actions, not a forger: anyone can compute it (see docs/design/safety-gate.md)."""
    with np.errstate(over="ignore", invalid="ignore"):  # float64 beyond float32 hashes as inf, as it travels
        a = np.ascontiguousarray(np.asarray(actions, dtype="<f4"))
    h = hashlib.sha256()
    rows, cols = (a.shape[0] if a.ndim else 0), (a.shape[1] if a.ndim == 2 else 0)
    h.update(f"{int(sequence)}|{int(stamp_ns)}|{embodiment}|{rows}x{cols}|".encode())
    h.update(a.tobytes())
    return h.hexdigest()


@dataclass
class ProposedChunk:
    """A chunk in physical units as it goes on /lda/proposed_chunk."""

    sequence: int
    stamp: float  # observation (camera) stamp [s]
    dt: float
    embodiment: str
    dimension_names: list[str]
    actions: np.ndarray  # (H, A) float64
    inference_time: float  # [s], encoders included
    digest: str = ""  # chunk_digest(); set by the proposer
    stamp_ns: int = -1  # the stamp as it travels (header sec * 1e9 + nanosec); -1: from ``stamp``
    candidates: int = 1  # chunks the policy sampled for this replan (test-time selection; 1: none)
    selection_score: float = float("nan")  # the chosen candidate's score (NaN: no selection)
    selection_spread: float = float("nan")  # best minus worst candidate score

    def __post_init__(self) -> None:
        if self.stamp_ns < 0:
            self.stamp_ns = int(round(self.stamp * 1e9))

    def computed_digest(self) -> str:
        return chunk_digest(self.sequence, self.stamp_ns, self.embodiment, self.actions)


@dataclass(frozen=True)
class HandTrajectory:
    """Absolute targets of one hand, one row per chunk step (rows at stamp + k*dt)."""

    positions: np.ndarray  # (N, 3) metres, robot base frame
    quaternions: np.ndarray  # (N, 4) x, y, z, w
    fingers: np.ndarray  # (N, F) gripper width / finger joint targets

    def __post_init__(self) -> None:
        n = len(self.positions)
        if (n < 1 or self.positions.shape != (n, 3) or self.quaternions.shape != (n, 4) or self.fingers.ndim != 2
                or len(self.fingers) != n):
            raise ValueError("HandTrajectory needs (N, 3) positions, (N, 4) quaternions and (N, F) fingers, N >= 1")

    def row(self, i: int) -> HandState:
        return HandState(self.positions[i], self.quaternions[i], self.fingers[i])

    def is_finite(self) -> bool:
        return bool(np.isfinite(self.positions).all() and np.isfinite(self.quaternions).all()
                    and np.isfinite(self.fingers).all())


@dataclass(frozen=True)
class ChunkPlan:
    """An approved chunk turned into per-hand absolute targets."""

    sequence: int
    stamp: float  # observation stamp the chunk was predicted from [s]
    dt: float  # time between rows [s]
    hands: dict[str, HandTrajectory]

    @property
    def rows(self) -> int:
        return len(next(iter(self.hands.values())).positions)

    @property
    def end(self) -> float:
        """Time after which the chunk has no row left (its last row is valid until then)."""
        return self.stamp + self.rows * self.dt

    def sample(self, t: float) -> HandsState:
        """Targets at time ``t``, interpolated between rows; clamped to the first/last row."""
        u = min(max((t - self.stamp) / self.dt, 0.0), float(self.rows - 1))
        i = int(np.floor(u))
        frac = u - i
        out = {}
        for hand, traj in self.hands.items():
            a = traj.row(i)
            out[hand] = a if frac <= 1e-9 or i + 1 >= self.rows else blend_states(a, traj.row(i + 1), frac)
        return out


