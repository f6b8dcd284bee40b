"""An upstream-compatible option of the model core: the authors' released LDA-1B (``Qwen_MMDiT``), the same
function as their code, loading their checkpoints after ``lda-import-upstream`` converted them.

See docs/reference/model.md ("The upstream option") and docs/guides/upstream-checkpoints.md.
"""

from .config import (
    DIT_SIZES,
    PUBLISHED_ROBOCASA,
    UPSTREAM_PRESETS,
    UPSTREAM_TASKS,
    DinoSpec,
    UpstreamConfig,
    from_authors_config,
)
from .head import FlowDraws, UpstreamLDA
from .keymap import KeyMapError, to_ours, to_theirs

__all__ = [
    "DIT_SIZES", "DinoSpec", "FlowDraws", "KeyMapError", "PUBLISHED_ROBOCASA", "UPSTREAM_PRESETS", "UPSTREAM_TASKS",
    "UpstreamConfig",
    "UpstreamLDA", "from_authors_config", "to_ours", "to_theirs",
]
