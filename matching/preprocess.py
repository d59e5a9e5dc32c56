"""Image preparation for matching: network input sizes, resizing and H x W x 3 uint8 RGB -> float tensors.

Images are loaded by ``localize.core.records.load_rgb`` (H x W x 3 uint8 RGB, truncated files refused);
everything here works on such arrays. Tensors hold RGB in 0..1.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor

from localize.core.records import load_rgb


def resized_shape(height: int, width: int, image_size: int, multiple: int) -> tuple[int, int]:
    """(h, w) with the longer side ~ image_size, aspect kept, both rounded down to multiples of ``multiple``."""
    scale = image_size / max(height, width)
    h = max(multiple, int(round(height * scale)) // multiple * multiple)
    w = max(multiple, int(round(width * scale)) // multiple * multiple)
    return h, w


def resize_rgb(img: np.ndarray, shape_hw: tuple[int, int]) -> np.ndarray:
    """H x W x C uint8 -> h x w x C; area interpolation when shrinking, bilinear when enlarging."""
    h, w = shape_hw
    interp = cv2.INTER_AREA if h * w < img.shape[0] * img.shape[1] else cv2.INTER_LINEAR
    return cv2.resize(img, (w, h), interpolation=interp)


def image_to_tensor(img: np.ndarray, shape_hw: tuple[int, int], device: str | torch.device) -> Tensor:
    """H x W x 3 uint8 RGB (or H x W gray) -> [1, 3, h, w] float 0..1 resized to shape_hw (``resize_rgb``)."""
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    small = resize_rgb(img[..., :3], shape_hw)
    return torch.from_numpy(small).to(device).permute(2, 0, 1)[None].float() / 255.0


def rgb_to_tensor(img: np.ndarray, size_wh: tuple[int, int], flip: bool = False) -> Tensor:
    """H x W x 3 uint8 RGB -> [3, H, W] float 0..1 resized to size_wh = (W, H) (aspect not kept), optionally
    mirrored left-right before resizing."""
    if flip:
        img = img[:, ::-1]
    w, h = size_wh
    small = resize_rgb(np.ascontiguousarray(img), (h, w))
    return torch.from_numpy(small).permute(2, 0, 1).float() / 255.0


def load_image_tensor(path: str | Path, size_wh: tuple[int, int], flip: bool = False) -> Tensor:
    """Image file -> [3, H, W] float 0..1 RGB resized to size_wh = (W, H) (``rgb_to_tensor``)."""
    return rgb_to_tensor(load_rgb(path), size_wh, flip)


__all__ = ["image_to_tensor", "load_image_tensor", "resize_rgb", "resized_shape", "rgb_to_tensor"]
