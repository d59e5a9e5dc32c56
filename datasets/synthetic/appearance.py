"""Image appearance of a render: illumination, per-channel gain, gamma, noise and blur (0..255 image units)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from datasets.synthetic.raycast import Illumination


@dataclass(frozen=True)
class Appearance:
    """Illumination plus image-level changes: per-channel gain, gamma, Gaussian noise (0..255), blur (px)."""

    name: str = "db"
    illumination: Illumination = field(default_factory=Illumination)
    gain: tuple[float, float, float] = (1.0, 1.0, 1.0)
    gamma: float = 1.0
    noise: float = 0.0
    blur: float = 0.0


def random_appearance(rng: np.random.Generator) -> Appearance:
    """A random query-time appearance: day / overcast / evening / night-like lighting and camera effects."""
    kind = str(rng.choice(["day", "overcast", "evening", "night"]))
    az = rng.uniform(0, 2 * np.pi)
    if kind == "day":
        el = rng.uniform(0.6, 1.2)
        il = Illumination((math.cos(az) * math.cos(el), math.sin(az) * math.cos(el), math.sin(el)),
                          tuple(rng.uniform(0.4, 0.6, 3)), tuple(rng.uniform(0.35, 0.5, 3)),
                          tuple(rng.uniform(0.3, 0.55, 3)))
    elif kind == "overcast":
        il = Illumination((0.0, 0.0, 1.0), (0.15, 0.15, 0.16), tuple(np.full(3, rng.uniform(0.6, 0.8))),
                          (0.25, 0.25, 0.25))
    elif kind == "evening":
        el = rng.uniform(0.1, 0.35)
        il = Illumination((math.cos(az) * math.cos(el), math.sin(az) * math.cos(el), math.sin(el)),
                          (0.6, 0.38, 0.2), (0.3, 0.27, 0.25), (0.6, 0.45, 0.3))
    else:
        il = Illumination((0.0, 0.0, 1.0), (0.0, 0.0, 0.0), tuple(rng.uniform(0.08, 0.15) * np.array([0.8, 0.9, 1.2])),
                          tuple(rng.uniform(0.7, 1.0) * np.array([1.0, 0.8, 0.55])), lamp_range=2.5)
    gain = tuple(float(v) for v in rng.uniform(0.85, 1.15, 3))
    gamma = float(rng.uniform(0.8, 1.25))
    noise = float(rng.choice([0.0, rng.uniform(1.0, 6.0)]))
    blur = float(rng.choice([0.0, 0.0, rng.uniform(0.5, 1.5)]))
    return Appearance(kind, il, gain, gamma, noise, blur)


def finish_image(rgb: np.ndarray, app: Appearance, rng: np.random.Generator | None = None) -> np.ndarray:
    """Linear 0..1 colour -> uint8 image with the appearance's gain, gamma, blur and noise."""
    img = np.clip(rgb * np.asarray(app.gain, np.float32), 0, 1)
    if app.gamma != 1.0:
        img = img ** np.float32(app.gamma)
    img = img * 255.0
    if app.blur > 0:
        img = cv2.GaussianBlur(img, (0, 0), app.blur)
    if app.noise > 0:
        rng = rng or np.random.default_rng(0)
        img = img + rng.standard_normal(img.shape).astype(np.float32) * app.noise
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)
