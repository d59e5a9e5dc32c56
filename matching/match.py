"""Match two images with NCNet: ``python -m matching.match IMAGE_A IMAGE_B [options]`` and ``match_images``.

Keypoints are pixels (x, y) of the ORIGINAL images in the COLMAP convention (top-left pixel centre at
(0.5, 0.5); an image of width W spans [0, W]).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from matching.extract import extract_matches
from matching.model import NCNet, build_ncnet

log = logging.getLogger(__name__)
DEFAULT_IMAGE_SIZE = 400


def load_image(path: str | Path) -> np.ndarray:
    """Image file -> H x W x 3 uint8 RGB (raises ValueError when unreadable)."""
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"cannot read image {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def resized_shape(height: int, width: int, image_size: int, multiple: int) -> tuple[int, int]:
    """(h, w) with the longer side ~ image_size, aspect kept, both rounded down to multiples of ``multiple``."""
    scale = image_size / max(height, width)
    h = max(multiple, int(round(height * scale)) // multiple * multiple)
    w = max(multiple, int(round(width * scale)) // multiple * multiple)
    return h, w


def image_to_tensor(img: np.ndarray, shape_hw: tuple[int, int], device: str | torch.device) -> torch.Tensor:
    """H x W x 3 uint8 RGB -> [1, 3, h, w] float 0..1 resized (area interpolation) to shape_hw."""
    import cv2

    h, w = shape_hw
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    interp = cv2.INTER_AREA if h * w < img.shape[0] * img.shape[1] else cv2.INTER_LINEAR
    small = cv2.resize(img[..., :3], (w, h), interpolation=interp)
    return torch.from_numpy(small).to(device).permute(2, 0, 1)[None].float() / 255.0


@torch.no_grad()
def match_images(model: NCNet, img_a: np.ndarray, img_b: np.ndarray, image_size: int = DEFAULT_IMAGE_SIZE,
                 refine: bool = False, max_matches: int | None = None, min_score: float = 0.0,
                 refine_options: dict | None = None) -> dict[str, np.ndarray]:
    """Match two H x W x 3 uint8 RGB images -> dict(keypoints0 N x 2, keypoints1 N x 2, scores N).

    ``image_size``: longer side after resizing (sides rounded down to multiples of stride x pooling).
    Keypoints in pixels of the original images (COLMAP convention), sorted by decreasing score.
    ``refine``: sub-cell refinement of the B keypoints at full resolution (``matching.refine``);
    then also ``ncc`` (N, refinement peak correlation) is returned.
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    mult = model.cell_multiple
    ta = image_to_tensor(img_a, resized_shape(img_a.shape[0], img_a.shape[1], image_size, mult), device)
    tb = image_to_tensor(img_b, resized_shape(img_b.shape[0], img_b.shape[1], image_size, mult), device)
    out = model(ta, tb)
    m = extract_matches(out.corr[:1], img_a.shape[:2], img_b.shape[:2], code=out.code, k=out.k)
    keep = m["scores"] >= min_score
    result = {"keypoints0": m["keypoints0"][keep].cpu().numpy(), "keypoints1": m["keypoints1"][keep].cpu().numpy(),
              "scores": m["scores"][keep].float().cpu().numpy()}
    if max_matches is not None:
        result = {k: v[:max_matches] for k, v in result.items()}
    if refine:
        from matching.refine import refine_matches

        cell_a = model.features.stride * img_a.shape[1] / ta.shape[-1]
        cell_b = model.features.stride * img_b.shape[1] / tb.shape[-1]
        opts = dict(refine_options or {})
        opts.setdefault("radius", max(cell_a, cell_b))
        result = refine_matches(img_a, img_b, result, **opts)
    return result


def write_matches_h5(path: str | Path, matches: dict[str, np.ndarray], attrs: dict | None = None) -> None:
    """HDF5 with datasets keypoints0 (N x 2), keypoints1 (N x 2), scores (N) [+ others], attrs optional."""
    import h5py

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for key, value in matches.items():
            f.create_dataset(key, data=value)
        for key, value in (attrs or {}).items():
            f.attrs[key] = value


def read_matches_h5(path: str | Path) -> dict[str, np.ndarray]:
    """Read back ``write_matches_h5``'s datasets."""
    import h5py

    with h5py.File(path, "r") as f:
        return {key: f[key][()] for key in f.keys()}


def plot_matches(path: str | Path, img_a: np.ndarray, img_b: np.ndarray, matches: dict[str, np.ndarray],
                 max_lines: int = 300) -> None:
    """Side-by-side PNG of both images with match lines coloured by score (viridis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = max(img_a.shape[0], img_b.shape[0])
    canvas = np.zeros((h, img_a.shape[1] + img_b.shape[1], 3), dtype=np.uint8)
    canvas[:img_a.shape[0], :img_a.shape[1]] = img_a[..., :3]
    canvas[:img_b.shape[0], img_a.shape[1]:] = img_b[..., :3]
    fig, ax = plt.subplots(figsize=(12, 12 * h / canvas.shape[1] + 0.5))
    ax.imshow(canvas, extent=(0, canvas.shape[1], h, 0))  # extent: COLMAP pixel convention
    kp0, kp1, sc = matches["keypoints0"][:max_lines], matches["keypoints1"][:max_lines], matches["scores"][:max_lines]
    if len(sc):
        norm = plt.Normalize(float(sc.min()), float(sc.max()) + 1e-12)
        for p, q, s in zip(kp0, kp1, sc):
            ax.plot([p[0], q[0] + img_a.shape[1]], [p[1], q[1]], color=plt.cm.viridis(norm(s)), lw=0.7)
    ax.set_axis_off()
    ax.set_title(f"{len(matches['scores'])} matches (top {len(sc)} drawn, colour = score)")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    ap = argparse.ArgumentParser(prog="python -m matching.match", description=__doc__.splitlines()[0])
    ap.add_argument("image_a")
    ap.add_argument("image_b")
    ap.add_argument("--weights", help="NCNet checkpoint (official .pth.tar layout); default: packaged weights")
    ap.add_argument("--features", choices=["resnet101", "dense-rootsift", "learned"], default=None,
                    help="feature extractor (default: from the checkpoint, else dense-rootsift)")
    ap.add_argument("--backbone-weights", help="torchvision resnet101 .pth (when the checkpoint has no backbone)")
    ap.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE, help="longer image side after resizing")
    ap.add_argument("--relocalize", action="store_true", help="2x2x2x2 max-pooling + relocalization")
    ap.add_argument("--no-consensus", action="store_true", help="correlation + mutual NN only")
    ap.add_argument("--refine", action="store_true", help="sub-cell refinement at full resolution")
    ap.add_argument("--half", action="store_true", help="float16 consensus (CUDA)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--max-matches", type=int, default=None)
    ap.add_argument("--sparse", action="store_true", help="Sparse-NCNet: top-k sparse correlation + sparse consensus")
    ap.add_argument("--top-k", type=int, default=10, help="--sparse: matches kept per cell, both directions")
    ap.add_argument("--reloc-mode", choices=["none", "hard", "hard+soft"], default="hard+soft",
                    help="--sparse with --relocalize: relocalization mode")
    ap.add_argument("--out", help="write matches to this HDF5 file")
    ap.add_argument("--plot", help="write a PNG of the matches")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device available")
    try:
        img_a, img_b = load_image(args.image_a), load_image(args.image_b)
        model = build_ncnet(weights=args.weights, features=args.features, backbone_weights=args.backbone_weights,
                            relocalization_k=2 if args.relocalize else 1, consensus=not args.no_consensus,
                            half=args.half, device=args.device)
    except (ValueError, FileNotFoundError, KeyError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.sparse:
        from matching.sparse_match import match_images_sparse

        matches = match_images_sparse(model, img_a, img_b, args.image_size, top_k=args.top_k,
                                      relocalization=args.reloc_mode if args.relocalize else "none",
                                      max_matches=args.max_matches)
        if args.refine:
            from matching.refine import refine_matches

            matches = refine_matches(img_a, img_b, matches,
                                     radius=model.features.stride * max(img_a.shape[:2]) / args.image_size)
    else:
        matches = match_images(model, img_a, img_b, args.image_size, refine=args.refine,
                               max_matches=args.max_matches)
    print(f"{len(matches['scores'])} matches")
    if args.out:
        write_matches_h5(args.out, matches, {"image_a": str(args.image_a), "image_b": str(args.image_b),
                                             "features": model.features.name, "image_size": args.image_size})
        print(f"wrote {args.out}")
    if args.plot:
        plot_matches(args.plot, img_a, img_b, matches)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
