"""Test-time scale (and rotation) robustness: match A against a small pyramid of relative scales of image B.

Dense RootSIFT on a fixed grid is not scale invariant: when B shows the scene 1.5-2x larger or smaller than A
the cells no longer cover the same part of the scene and few matches are correct. ``match_pyramid`` runs the
whole NCNet (correlation -> consensus -> extraction) once per configuration: a relative scale s of B (B
resized to s x the matching size when s >= 1, A to 1/s x it otherwise: an image is only ever enlarged, so no
configuration loses cells) and optionally a number of quarter turns of B. For each cell of A's grid at the
matching size the configuration whose best match of that cell scores highest wins, and that configuration's
matches of the cell are kept (so with one configuration the result is exactly ``matching.match.match_images``).
A prescreen can send only the identity and the best few other configurations (raw mutual-nearest-neighbour
strength, before consensus) through consensus. Keypoints are mapped back to the original pixels of A and B
(COLMAP convention, top-left pixel centre at (0.5, 0.5)); refinement runs per configuration at its own cells.
"""

from __future__ import annotations

import numpy as np
import torch

from matching.configuration_search import mutual_strength
from matching.configuration_search import scale_ladder as pyramid_scales
from matching.extract import extract_matches
from matching.learned_features import unrotate_points
from matching.model import NCNet
from matching.preprocess import image_to_tensor, resized_shape
from matching.refine import RefineConfig, refine_with

IDENTITY = (0, 1.0)  # (quarter turns, scale): the plain matcher's configuration


def configurations(scales: tuple[float, ...], rotations: tuple[int, ...] = (0,)) -> list[tuple[int, float]]:
    """(quarter turns of B, scale of B) per configuration, the identity first when present (it wins ties)."""
    if not scales or any(not s > 0 for s in scales):
        raise ValueError(f"scales must be positive and non-empty, got {scales}")
    out = sorted({(int(k) % 4, float(s)) for k in rotations for s in scales}, key=lambda c: (c != IDENTITY, c))
    return out


def configuration_sizes(image_size: int, scale: float) -> tuple[int, int]:
    """(longer side of A, longer side of B) in px for a relative scale of B: the image that must grow is enlarged
    (B by ``scale`` >= 1, A by 1 / ``scale`` otherwise), never shrunk, so no configuration has fewer cells."""
    if scale >= 1.0:
        return int(image_size), int(round(image_size * scale))
    return int(round(image_size / scale)), int(image_size)


def _shape(model: NCNet, img: np.ndarray, long_side: int) -> tuple[int, int]:
    """(h, w) of ``img`` resized to ``long_side`` px, sides multiples of the model's cell (at least two cells)."""
    mult = model.cell_multiple
    return resized_shape(img.shape[0], img.shape[1], max(long_side, 2 * mult), mult)


def _tensor(model: NCNet, img: np.ndarray, long_side: int, device: torch.device) -> torch.Tensor:
    """``img`` resized to ``long_side`` (``_shape``) as a [1, 3, h, w] tensor."""
    return image_to_tensor(img, _shape(model, img, long_side), device)


def best_configuration_per_cell(cells: list[np.ndarray], scores: list[np.ndarray], n_cells: int) -> list[np.ndarray]:
    """Per configuration c: bool mask of its matches whose A cell (flat index) is won by c, i.e. c has the highest
    best score of that cell among all configurations (ties: the earlier configuration)."""
    best = np.full((len(cells), n_cells), -np.inf)
    for c, (cell, sc) in enumerate(zip(cells, scores)):
        np.maximum.at(best[c], cell, sc)
    winner = np.argmax(best, axis=0)  # first maximum on ties
    return [winner[cell] == c for c, cell in enumerate(cells)]


def base_cells(kp: np.ndarray, grid_hw: tuple[int, int], image_hw: tuple[int, int]) -> np.ndarray:
    """Flat index of the cell of an h x w grid over the image (H x W px) holding each pixel (x, y) [N, 2]."""
    h, w = grid_hw
    col = np.clip((kp[:, 0] * w / image_hw[1]).astype(np.int64), 0, w - 1)
    row = np.clip((kp[:, 1] * h / image_hw[0]).astype(np.int64), 0, h - 1)
    return row * w + col


@torch.no_grad()
def match_pyramid(model: NCNet, img_a: np.ndarray, img_b: np.ndarray, image_size: int,
                  scales: tuple[float, ...], rotations: tuple[int, ...] = (0,), refine: bool = False,
                  refine_options: RefineConfig | None = None,
                  max_matches: int | None = None, prescreen: int = 0) -> dict[str, np.ndarray]:
    """Two H x W x 3 uint8 RGB images -> keypoints0 / keypoints1 (N x 2 px, COLMAP), scores (N) [+ ncc (N)],
    sorted by decreasing score: B at each relative scale of ``scales`` (sizes per ``configuration_sizes``)
    turned by each of ``rotations`` quarter turns (counter-clockwise, ``np.rot90``); per cell of A's grid at
    ``image_size`` the best-scoring configuration's matches (see the module docstring); ``refine``:
    ``refine_with`` per configuration at its own cells (options ``refine_options``). ``prescreen`` > 0: only the
    identity and the ``prescreen`` other configurations with the strongest raw mutual nearest neighbours
    (``mutual_strength``) go through consensus (0 = all)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    stride, k = model.features.stride, model.relocalization_k
    feats_a: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    prepared = []
    for turns, scale in configurations(tuple(scales), tuple(rotations)):
        side_a, side_b = configuration_sizes(image_size, scale)
        if side_a not in feats_a:
            ta = _tensor(model, img_a, side_a, device)
            feats_a[side_a] = (ta, model.features(ta))
        ta, fa = feats_a[side_a]
        rb = np.ascontiguousarray(np.rot90(img_b, turns)) if turns else img_b
        tb = _tensor(model, rb, side_b, device)
        prepared.append(((turns, scale), ta, fa, rb, tb, model.features(tb)))
    if prescreen > 0 and len(prepared) > prescreen + 1:
        strength = [mutual_strength(fa, fb) for _, _, fa, _, _, fb in prepared]
        others = sorted(range(1, len(prepared)), key=lambda i: -strength[i])[:prescreen]
        prepared = [prepared[i] for i in sorted([0, *others])]
    runs = []
    for (turns, _), ta, fa, rb, tb, fb in prepared:
        corr, code = model.correlate(fa, fb)
        m = extract_matches(model.filter_correlation(corr)[:1], img_a.shape[:2], rb.shape[:2], code=code, k=k)
        part = {"keypoints0": m["keypoints0"].cpu().numpy(), "keypoints1": m["keypoints1"].cpu().numpy(),
                "scores": m["scores"].float().cpu().numpy()}
        runs.append((turns, part, rb, stride * img_a.shape[1] / ta.shape[-1],
                     stride * rb.shape[1] / tb.shape[-1]))
    h_a, w_a = _shape(model, img_a, int(image_size))
    grid = (h_a // stride * k, w_a // stride * k)
    cells = [base_cells(part["keypoints0"], grid, img_a.shape[:2]) for _, part, _, _, _ in runs]
    keeps = best_configuration_per_cell(cells, [part["scores"] for _, part, _, _, _ in runs], grid[0] * grid[1])
    parts = []
    for (turns, part, rb, cell_a, cell_b), keep in zip(runs, keeps):
        part = {key: v[keep] for key, v in part.items()}
        if refine:
            part = refine_with(img_a, rb, part, refine_options or RefineConfig(), cell_a, cell_b)
        if turns:
            part["keypoints1"] = unrotate_points(torch.as_tensor(part["keypoints1"]), turns, img_b.shape[:2]).numpy()
        parts.append(part)
    out = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    order = np.argsort(-out["scores"], kind="stable")
    return {key: v[order][:max_matches] for key, v in out.items()}


__all__ = ["IDENTITY", "base_cells", "best_configuration_per_cell", "configuration_sizes", "configurations",
           "match_pyramid", "mutual_strength", "pyramid_scales"]
