"""PF-Pascal keypoint transfer (PCK@0.1) following NCNet's protocol.

``python -m matching.eval_pf_pascal --data DIR --weights FILE [--features ...]``

Protocol (NCNet's eval_pf_pascal.py): both images resized to 400 x 400 (aspect not kept); for every cell
of the target image B the best source cell (softmax over A's cells of the filtered correlation, argmax);
each target keypoint is transferred to the source by bilinear interpolation of these dense matches over
B's cell grid; source keypoints (ground truth) and transferred points are rescaled to 224 x 224 and a
keypoint is correct within alpha * 224 px (alpha = 0.1); PCK of a pair = fraction of its valid keypoints
correct; the figure is the mean over pairs. Published NCNet (released PF-Pascal weights, ResNet-101): 78.9.

DIR holds ``test_pairs.csv`` (or ``image_pairs/test_pairs.csv``) in the PF-Pascal layout
``source_image,target_image,class,XA,YA,XB,YB`` (keypoints ``;``-separated, 1-based pixels of the original
images as in the MATLAB annotations; negative = missing), image paths relative to DIR.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from localize.core.errors import InputError
from localize.core.records import load_rgb
from matching.model import build_ncnet
from matching.pairs import ImagePair, find_pair_csv, read_pair_csv, resolve_image
from matching.preprocess import rgb_to_tensor

log = logging.getLogger(__name__)
PCK_SIZE = 224
ALPHA = 0.1
CorrFn = Callable[[Tensor, Tensor], Tensor]  # images [1,3,H,W] x2 -> corr [hA, wA, hB, wB]


def dense_matches_b_to_a(corr: Tensor) -> Tensor:
    """For every cell (k, l) of B the best A cell: softmax over A's cells, argmax -> [hB, wB, 2] (row, col)."""
    c = corr.reshape(corr.shape[-4:])
    ha, wa, hb, wb = c.shape
    idx = torch.softmax(c.reshape(ha * wa, hb * wb).double(), dim=0).argmax(dim=0)
    return torch.stack([idx // wa, idx % wa], dim=1).reshape(hb, wb, 2)


def transfer_keypoints(matches: Tensor, kp_b: np.ndarray, size_a_hw: tuple[float, float],
                       size_b_hw: tuple[float, float], grid_a_hw: tuple[int, int]) -> np.ndarray:
    """Target keypoints (x, y continuous pixels, COLMAP convention) -> source pixels, by bilinear
    interpolation over B's cell grid of the matched A cell centres (NCNet's bilinearInterpPointTnf).

    ``matches`` [hB, wB, 2] (row, col) A cells for each B cell; cell centres at (idx + 0.5) / n * side.
    """
    hb, wb = matches.shape[:2]
    ha, wa = grid_a_hw
    Ha, Wa = size_a_hw
    Hb, Wb = size_b_hw
    m = matches.double().cpu().numpy()
    ax = (m[..., 1] + 0.5) / wa * Wa  # A pixel x of each B cell's match
    ay = (m[..., 0] + 0.5) / ha * Ha
    kp_b = np.asarray(kp_b, dtype=np.float64).reshape(-1, 2)
    u = np.clip(kp_b[:, 0] / Wb * wb - 0.5, 0, wb - 1)  # continuous B cell coordinates
    v = np.clip(kp_b[:, 1] / Hb * hb - 0.5, 0, hb - 1)
    u0, v0 = np.floor(u).astype(int), np.floor(v).astype(int)
    u1, v1 = np.minimum(u0 + 1, wb - 1), np.minimum(v0 + 1, hb - 1)
    fu, fv = u - u0, v - v0
    out = np.zeros_like(kp_b)
    for arr, col in ((ax, 0), (ay, 1)):
        out[:, col] = (arr[v0, u0] * (1 - fu) * (1 - fv) + arr[v0, u1] * fu * (1 - fv)
                       + arr[v1, u0] * (1 - fu) * fv + arr[v1, u1] * fu * fv)
    return out


def pair_pck(kp_a_true: np.ndarray, kp_a_pred: np.ndarray, size_a_hw: tuple[float, float],
             alpha: float = ALPHA, size: int = PCK_SIZE) -> tuple[float, int]:
    """(PCK, number of valid keypoints) with both point sets rescaled to size x size; correct within
    alpha * size px. Keypoints with a negative or non-finite coordinate are missing and skipped."""
    Ha, Wa = size_a_hw
    valid = np.isfinite(kp_a_true).all(1) & (kp_a_true >= 0).all(1)
    if not valid.any():
        return float("nan"), 0
    scale = np.array([size / Wa, size / Ha])
    d = np.linalg.norm((kp_a_true[valid] - kp_a_pred[valid]) * scale, axis=1)
    return float((d <= alpha * size).mean()), int(valid.sum())


def load_square(path: Path, side: int) -> tuple[Tensor, tuple[int, int]]:
    """Image -> ([1, 3, side, side] float 0..1, original (H, W)); resized without keeping the aspect."""
    img = load_rgb(path)
    return rgb_to_tensor(img, (side, side))[None], img.shape[:2]


def model_corr_fn(model) -> CorrFn:
    """CorrFn of an ``NCNet``: filtered correlation of the pair (first batch element)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))

    @torch.no_grad()
    def fn(ta: Tensor, tb: Tensor) -> Tensor:
        out = model(ta.to(device), tb.to(device))
        if out.k > 1:
            raise ValueError("PF-Pascal evaluation runs without relocalization")
        return out.corr[0, 0]

    return fn


def evaluate_pf_pascal(corr_fn: CorrFn | torch.nn.Module, data: str | Path, csv_path: str | Path | None = None,
                       image_size: int = 400, alpha: float = ALPHA, max_pairs: int | None = None,
                       image_root: str | Path | None = None) -> dict:
    """Mean PCK@alpha over the pairs of a PF-Pascal-layout folder. ``corr_fn``: an NCNet or a function
    (source [1,3,S,S], target [1,3,S,S]) -> corr [hA, wA, hB, wB]. Returns mean_pck, per_pair, n_pairs."""
    if isinstance(corr_fn, torch.nn.Module):
        corr_fn = model_corr_fn(corr_fn)
    data = Path(data)
    csv_path = Path(csv_path) if csv_path is not None else find_pair_csv(data, "test")
    if csv_path is None:
        raise FileNotFoundError(f"no test_pairs.csv in {data} (or {data}/image_pairs)")
    pairs: list[ImagePair] = [p for p in read_pair_csv(csv_path) if p.keypoints_a is not None]
    if not pairs:
        raise ValueError(f"{csv_path}: no pairs with keypoints (need columns XA,YA,XB,YB)")
    if max_pairs:
        pairs = pairs[:max_pairs]
    roots = [Path(image_root)] if image_root else []
    roots += [data, csv_path.parent, csv_path.parent.parent]
    per_pair = []
    for p in tqdm(pairs, desc="PF-Pascal", leave=False, disable=None):
        ta, size_a = load_square(resolve_image(p.source, roots), image_size)
        tb, size_b = load_square(resolve_image(p.target, roots), image_size)
        corr = corr_fn(ta, tb)
        m = dense_matches_b_to_a(corr)
        kp_b = p.keypoints_b - 0.5  # 1-based (MATLAB) pixel -> continuous COLMAP coordinates
        kp_a = p.keypoints_a - 0.5
        valid_b = np.isfinite(p.keypoints_b).all(1) & (p.keypoints_b >= 0).all(1)
        pred = transfer_keypoints(m, np.where(valid_b[:, None], kp_b, 0.0), size_a, size_b, corr.shape[:2])
        kp_a = np.where((valid_b & (p.keypoints_a >= 0).all(1))[:, None], kp_a, -1.0)
        pck, n = pair_pck(kp_a, pred, size_a, alpha)
        per_pair.append({"source": p.source, "target": p.target, "class": p.cls, "pck": pck, "keypoints": n})
    scores = [r["pck"] for r in per_pair if np.isfinite(r["pck"])]
    return {"mean_pck": float(np.mean(scores)) if scores else float("nan"), "per_pair": per_pair,
            "n_pairs": len(scores), "alpha": alpha, "image_size": image_size}


def cli(argv: list[str] | None = None) -> int:
    """``python -m matching.eval_pf_pascal``: exit status 0, or 2 on bad input."""
    ap = argparse.ArgumentParser(prog="python -m matching.eval_pf_pascal", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="PF-Pascal folder (test_pairs.csv + images relative to it)")
    ap.add_argument("--weights", help="NCNet checkpoint (official layout); default: packaged weights")
    ap.add_argument("--features", choices=["resnet101", "dense-rootsift"], default=None)
    ap.add_argument("--backbone-weights", help="torchvision resnet101 .pth when the checkpoint has no backbone")
    ap.add_argument("--csv", help="pair file (default DIR/test_pairs.csv or DIR/image_pairs/test_pairs.csv)")
    ap.add_argument("--image-root", help="folder the CSV image paths are relative to (default DIR)")
    ap.add_argument("--image-size", type=int, default=400, help="square side images are resized to (400)")
    ap.add_argument("--alpha", type=float, default=ALPHA)
    ap.add_argument("--no-consensus", action="store_true", help="correlation + mutual NN only")
    ap.add_argument("--max-pairs", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", help="write per-pair PCK to this CSV")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        model = build_ncnet(weights=args.weights, features=args.features, backbone_weights=args.backbone_weights,
                            consensus=not args.no_consensus, device=args.device)
        if args.image_size % model.cell_multiple:
            ap.error(f"--image-size must be a multiple of {model.cell_multiple}")
        t0 = time.perf_counter()
        res = evaluate_pf_pascal(model, args.data, args.csv, args.image_size, args.alpha, args.max_pairs,
                                 args.image_root)
    except (InputError, ValueError, FileNotFoundError, KeyError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"PCK@{args.alpha:g}: {100 * res['mean_pck']:.1f} over {res['n_pairs']} pairs "
          f"({time.perf_counter() - t0:.1f} s; NCNet published 78.9 with its PF-Pascal weights)")
    if args.out:
        with open(args.out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["source", "target", "class", "pck", "keypoints"])
            w.writeheader()
            w.writerows(res["per_pair"])
    return 0


if __name__ == "__main__":
    sys.exit(cli())
