"""MediaPipe hand landmarks as 2D pseudo labels (offline: the weights ship with mediapipe 0.10.21).

Each crop is run through MediaPipe Hands in static-image mode; the 21 landmarks (same order as
OpenPose) are the keypoints in crop pixels.

Confidence (documented, since MediaPipe gives none per joint): every joint of the found hand
gets the hand's handedness-classification score (MediaPipe's presence-like score, 0.5–1);
a joint that lands outside the crop gets 0. When MediaPipe finds no hand in the crop but the
detection stage found one in the full image, that detection's landmarks, mapped into crop
pixels, are the labels, with confidence 0.8 × its score (a lower-resolution estimate). When
neither exists (a recovered view that MediaPipe cannot see), all 21 joints get confidence 0
(keypoints 0, as OpenPose reports a missing joint). When several hands are found, the right
hand closest to the crop centre is taken (crops always show a right hand: left hands are
flipped).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from tqdm import tqdm

from ..detect import MediaPipeHands


class MediaPipeLabeler:
    name = "mediapipe"
    weights_sha256 = "bundled-with-mediapipe-0.10.21"

    def __init__(self, min_detection_confidence: float = 0.3, model_complexity: int = 1):
        self._hands = MediaPipeHands(max_num_hands=2, min_detection_confidence=min_detection_confidence,
                                     model_complexity=model_complexity)
        self.params = {"min_detection_confidence": min_detection_confidence, "model_complexity": model_complexity,
                       "confidence": "handedness score per joint, 0 outside the crop or when no hand is found"}

    FALLBACK_FACTOR = 0.8

    def label(self, crops_bgr: np.ndarray, progress: bool = False,
              hints: Optional[Sequence[Optional[tuple[np.ndarray, float]]]] = None) -> tuple[np.ndarray, np.ndarray]:
        """(N, S, S, 3) BGR crops → keypoints (N, 21, 2) crop pixels, confidence (N, 21).

        ``hints``: per crop, the detection stage's landmarks in crop pixels and its score, or None.
        """
        n = len(crops_bgr)
        kp = np.zeros((n, 21, 2), np.float32)
        conf = np.zeros((n, 21), np.float32)
        for i in tqdm(range(n), desc="mediapipe labels", unit="crop", disable=not progress):
            crop = crops_bgr[i]
            hands = self._hands(crop)
            size = np.array(crop.shape[1::-1], float)
            if not hands:
                hint = hints[i] if hints is not None else None
                if hint is not None and np.all(np.isfinite(hint[0])):
                    inside = np.all((hint[0] >= -0.5) & (hint[0] <= size - 0.5), axis=1)
                    kp[i] = hint[0]
                    conf[i] = np.where(inside, self.FALLBACK_FACTOR * hint[1], 0.0)
                continue
            centre = (size - 1) / 2
            right = [h for h in hands if h.handedness == "right"] or hands
            hand = min(right, key=lambda h: np.linalg.norm(np.mean(h.landmarks, 0) - centre))
            inside = np.all((hand.landmarks >= -0.5) & (hand.landmarks <= size - 0.5), axis=1)
            kp[i] = hand.landmarks
            conf[i] = np.where(inside, hand.score, 0.0)
        return kp, conf

    def close(self) -> None:
        self._hands.close()
