"""Pictures of matches: two images side by side with lines between matched keypoints (pixels, COLMAP convention)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def side_by_side(img0: np.ndarray, img1: np.ndarray) -> np.ndarray:
    """H0 x W0 and H1 x W1 uint8 images (RGB or gray) -> max(H) x (W0 + W1) x 3 uint8 canvas, black padding."""
    rgb = [np.repeat(im[..., None], 3, axis=2) if im.ndim == 2 else im[..., :3] for im in (img0, img1)]
    h = max(rgb[0].shape[0], rgb[1].shape[0])
    canvas = np.zeros((h, rgb[0].shape[1] + rgb[1].shape[1], 3), dtype=np.uint8)
    canvas[:rgb[0].shape[0], :rgb[0].shape[1]] = rgb[0]
    canvas[:rgb[1].shape[0], rgb[0].shape[1]:] = rgb[1]
    return canvas


def plot_matches(path: str | Path, img0: np.ndarray, img1: np.ndarray, kp0: np.ndarray, kp1: np.ndarray,
                 scores: np.ndarray | None = None, highlight: np.ndarray | None = None, title: str | None = None,
                 max_lines: int = 400, dpi: int = 100) -> None:
    """PNG of img0 | img1 with the ``max_lines`` best-scored match lines coloured by score (viridis).

    ``kp0`` / ``kp1``: N x 2 pixels (x, y) of img0 / img1, COLMAP convention (image of width W spans
    [0, W]). ``scores``: N (None = all equal). ``highlight``: N bool; matches where it is False are drawn
    red. ``title``: None = "N matches (top n drawn, colour = score)". Parent folders are created.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    canvas = side_by_side(img0, img1)
    h, w = canvas.shape[:2]
    kp0 = np.asarray(kp0, dtype=np.float64).reshape(-1, 2)
    kp1 = np.asarray(kp1, dtype=np.float64).reshape(-1, 2)
    n = len(kp0)
    s = np.ones(n) if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1)
    order = np.argsort(-s, kind="stable")[:max(int(max_lines), 0)]
    fig, ax = plt.subplots(figsize=(12, 12 * h / w + 0.5))
    ax.imshow(canvas, extent=(0, w, h, 0))  # extent: pixel (x, y) of the COLMAP convention plots as is
    if len(order):
        lo, span = float(s.min()), float(s.max() - s.min()) or 1.0
        cmap = plt.get_cmap("viridis")
        for i in order[::-1]:  # best drawn last, on top
            colour = "red" if highlight is not None and not highlight[i] else cmap((s[i] - lo) / span)
            ax.plot([kp0[i, 0], kp1[i, 0] + img0.shape[1]], [kp0[i, 1], kp1[i, 1]], color=colour, lw=0.7, alpha=0.8)
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_axis_off()
    ax.set_title(f"{n} matches (top {len(order)} drawn, colour = score)" if title is None else title, fontsize=9)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)


__all__ = ["plot_matches", "side_by_side"]
