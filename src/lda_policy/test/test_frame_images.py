"""FrameLatents keeps the raw pixels of the newest frames for the image-conditioned VLM (one read per
replan), while each frame's own copy is still dropped once DINO-encoded."""

import numpy as np
import torch
from lda_policy.deploy.observations import FrameLatents


def test_image_at_returns_the_raw_frame_of_that_stamp_after_encoding():
    frames = FrameLatents(lambda im: torch.full((2, 2, 4), float(im[0, 0, 0])), min_period_s=0.05)
    images = {t: np.full((8, 8, 3), i, np.uint8) for i, t in enumerate([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])}
    for t, im in images.items():
        assert frames.add(t, im)
    frames.history(0.5, (-0.5, 0.0))  # encodes the frames at 0.0 and 0.5; their own pixels are dropped
    assert frames.image_at(0.5) is images[0.5]  # what the policy's replan hands the VLM
    assert frames.image_at(0.2) is images[0.2]
    assert frames.image_at(0.0) is None  # only the newest few are kept
    assert frames.image_at(0.45) is None  # exact stamps only: never another frame's pixels
    assert not frames.add(0.52, np.zeros((8, 8, 3), np.uint8))  # skipped frames are not kept either
    assert frames.image_at(0.52) is None
    frames.clear()
    assert frames.image_at(0.5) is None
