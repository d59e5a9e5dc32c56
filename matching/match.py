"""Match two images with NCNet (dense or Sparse-NCNet): ``Matcher``, ``main`` and ``python -m matching.match``.

``MatchConfig`` holds every option of the pipeline's 'matching' stage; ``Matcher(conf).match(img_a, img_b)``
is the one dense / sparse dispatch, ``Matcher.features(img)`` + ``Matcher.match_features(fa, fb, ...)`` the
same in two steps (each image's features computed once, reused across pairs); ``main(conf, image_a, image_b, ...)`` is the library entry (files in,
matches out) and ``cli(argv)`` the command line. Keypoints are pixels (x, y) of the ORIGINAL images in the
COLMAP convention (top-left pixel centre at (0.5, 0.5); an image of width W spans [0, W]).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

import h5py
import numpy as np
import torch

from localize.core.config import from_dict, positive_int
from localize.core.errors import InputError
from localize.core.records import load_rgb
from matching.configuration_search import scale_ladder
from matching.extract import extract_matches
from matching.features import PRECISIONS, ImageFeatures, ResNet101Features, extractor_identity, resolve_precision
from matching.learned_features import DIRECTIONS, from_smaller_grid, match_images_learned
from matching.model import NCNet, build_ncnet
from matching.plot import plot_matches
from matching.preprocess import image_to_tensor, resized_shape
from matching.pyramid import configurations, match_pyramid
from matching.refine import RefineConfig, refine_with
from matching.sparse.match import DEFAULT_TOP_K, RELOCALIZATION_MODES, match_sparse_head, sparse_cell_multiple

log = logging.getLogger(__name__)
DEFAULT_IMAGE_SIZE = 400
SEARCH_IMAGE_SIZE = 640  # the command line's default with ``search`` (the size its settings were chosen at)
SEARCH_ANGLES = tuple(45.0 * i for i in range(8))  # B's turns tried by ``search`` (degrees)
SEARCH_SCALE_LEVELS = 4  # relative scales sqrt(2)^k, |k| <= 4 (0.25-4), tried by ``search``
# the command line's NCC refinement with ``search``: patches warped by the affine fit of 12 neighbouring matches,
# matches farther than 2 px from their neighbours' fit dropped (chosen on held-out pairs: bench_config_search.py)
SEARCH_REFINE = RefineConfig(local_affine=12, max_affine_residual=2.0)
SEARCH_DIRECTIONS = "mutual"  # matches kept by ``search``: mutual nearest neighbours after consensus
DEFAULT_FEATURE_CACHE_MB = 512
PLOT_MAX_LINES = 300


@dataclasses.dataclass(frozen=True)
class MatchConfig:
    """The matching stage's options (the pipeline's 'matching' dict; build with ``from_dict(MatchConfig, d)``).

    weights: NCNet checkpoint (official layout; None = packaged weights); features: 'dense-rootsift' or
    'resnet101' (None = from the checkpoint); backbone_weights: torchvision resnet101 .pth for checkpoints
    without a backbone; image_size: longer image side after resizing (px); relocalize: 2x2x2x2 pooling +
    relocalization (sparse: mode ``reloc_mode``); sparse: Sparse-NCNet with ``top_k`` matches per cell both
    ways; refine: sub-cell NCC refinement with ``refine_options`` (common scale, radius in matching cells);
    max_matches: keep the best N (None = all); half: float16 consensus (CUDA); consensus: False =
    correlation + mutual NN only; precision: the resnet101 backbone's compute dtype ('auto', 'float32',
    'bfloat16'; ``matching.features.resolve_precision``); channels_last: resnet101 convolutions in
    channels-last memory format; feature_cache_mb: in-memory database features kept by the pipeline's
    matching worker across queries (MiB, least recently used dropped first; 0 = none); scales / rotations: match B
    at each of these relative sizes and quarter turns, per cell of A the best (``matching.pyramid``; (1.0,) / (0,) =
    off); prescreen: only the identity and this many other configurations, those with the strongest raw mutual
    neighbours, through consensus (0 = all); store_db_features: the pipeline keeps database images' features
    in its export folder in float16 (``matching.features.FeatureStore``; read back by later runs and queries);
    search: B's turn and relative scale searched first (``matching.learned_features.match_images_learned``: every
    45 deg x sqrt(2)^k, |k| <= 4, by neighbour agreement; dense matching without relocalization only), with
    ``refine`` its NCC refinement at full resolution against B turned upright; directions: the dense matches kept
    ('mutual': mutual nearest neighbours only, 'smaller': the smaller grid's direction, 'both': NCNet's, both
    directions; None: ``SEARCH_DIRECTIONS`` with the search, 'both' otherwise; not with sparse or scales/rotations).

    """

    weights: str | None = None
    features: str | None = None
    backbone_weights: str | None = None
    image_size: int = DEFAULT_IMAGE_SIZE
    relocalize: bool = False
    reloc_mode: str = "hard+soft"
    sparse: bool = False
    top_k: int = DEFAULT_TOP_K
    refine: bool = False
    refine_options: RefineConfig = dataclasses.field(default_factory=RefineConfig)
    max_matches: int | None = None
    half: bool = False
    consensus: bool = True
    precision: str = "auto"
    channels_last: bool = False
    feature_cache_mb: int = DEFAULT_FEATURE_CACHE_MB
    scales: tuple[float, ...] = (1.0,)
    rotations: tuple[int, ...] = (0,)
    prescreen: int = 0
    store_db_features: bool = False
    search: bool = False
    directions: str | None = None

    def __post_init__(self) -> None:
        if int(self.image_size) <= 0:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        if self.reloc_mode not in RELOCALIZATION_MODES:
            raise ValueError(f"reloc_mode must be one of {RELOCALIZATION_MODES}, got {self.reloc_mode!r}")
        if int(self.top_k) < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.max_matches is not None and int(self.max_matches) < 0:
            raise ValueError(f"max_matches must be >= 0 or None, got {self.max_matches}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if int(self.feature_cache_mb) < 0:
            raise ValueError(f"feature_cache_mb must be >= 0, got {self.feature_cache_mb}")
        configurations(self.scales, self.rotations)  # ValueError on bad scales
        if int(self.prescreen) < 0:
            raise ValueError(f"prescreen must be >= 0, got {self.prescreen}")
        if self.sparse and (tuple(self.scales), tuple(self.rotations)) != ((1.0,), (0,)):
            raise ValueError("scales / rotations (matching.pyramid) need dense matching, not sparse")
        if self.directions is not None and self.directions not in DIRECTIONS:
            raise ValueError(f"directions must be one of {DIRECTIONS} or None, got {self.directions!r}")
        if self.directions not in (None, "both") and (self.sparse or (tuple(self.scales), tuple(self.rotations))
                                                      != ((1.0,), (0,))):
            raise ValueError("directions other than 'both' need dense matching without scales / rotations")
        if self.search and (self.sparse or self.relocalize or (tuple(self.scales), tuple(self.rotations)) != ((1.0,), (0,))):
            raise ValueError("search needs dense matching without relocalization, scales or rotations")


class Matcher:
    """NCNet built once from a ``MatchConfig``; ``match(img_a, img_b)`` dispatches to dense or sparse matching,
    ``features(img)`` + ``match_features(fa, fb, img_a, img_b)`` are the same in two steps (same results)."""

    def __init__(self, conf: MatchConfig, device: str | torch.device = "cpu") -> None:
        self.conf, self.device = conf, device
        self.model = build_ncnet(conf.weights, features=conf.features, backbone_weights=conf.backbone_weights,
                                 relocalization_k=2 if conf.relocalize else 1, consensus=bool(conf.consensus),
                                 half=bool(conf.half), device=device)
        self.dtype = resolve_precision(conf.precision, device)
        if isinstance(self.model.features, ResNet101Features):
            self.model.features.set_compute(self.dtype, bool(conf.channels_last))

    @property
    def pyramid(self) -> bool:
        """True when B is matched across several scales or turns (``matching.pyramid`` or ``search``: no per-image
        features)."""
        return bool(self.conf.search) or (tuple(self.conf.scales), tuple(self.conf.rotations)) != ((1.0,), (0,))

    @property
    def cell_multiple(self) -> int:
        """Network input sides are multiples of this (feature stride x pooling)."""
        c = self.conf
        if c.sparse:
            return sparse_cell_multiple(self.model, c.reloc_mode if c.relocalize else "none")
        return self.model.cell_multiple

    def feature_identity(self) -> dict[str, object]:
        """What an image's features depend on besides its content: extractor (weights included), input size
        rule, compute dtype and layout, device type (the key of a ``FeatureStore``)."""
        return {"extractor": extractor_identity(self.model.features), "image_size": int(self.conf.image_size),
                "cell_multiple": int(self.cell_multiple), "dtype": str(self.dtype),
                "channels_last": bool(self.conf.channels_last), "device": torch.device(self.device).type}

    def features(self, img: np.ndarray) -> ImageFeatures:
        """H x W x 3 uint8 RGB image -> its ``ImageFeatures`` (to pair with any other image's)."""
        return image_features(self.model, img, int(self.conf.image_size), self.cell_multiple)

    def match_features(self, feat_a: ImageFeatures, feat_b: ImageFeatures, img_a: np.ndarray | None = None,
                       img_b: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Matches of two images from their ``features``; the images themselves are needed only to refine."""
        c, model = self.conf, self.model
        if c.refine and (img_a is None or img_b is None):
            raise ValueError("refine needs both images: match_features(feat_a, feat_b, img_a, img_b)")
        if not c.sparse:
            return match_dense_head(model, feat_a, feat_b, img_a, img_b, refine=bool(c.refine),
                                    max_matches=c.max_matches, refine_options=c.refine_options,
                                    directions=c.directions or "both")
        m = match_sparse_head(model, feat_a.tensor, feat_b.tensor, feat_a.image_hw, feat_b.image_hw,
                              top_k=int(c.top_k), relocalization=c.reloc_mode if c.relocalize else "none",
                              max_matches=c.max_matches)
        if c.refine:
            stride, size = model.features.stride, int(c.image_size)
            m = refine_with(img_a, img_b, m, c.refine_options, stride * max(feat_a.image_hw) / size,
                            stride * max(feat_b.image_hw) / size)
        return m

    def match(self, img_a: np.ndarray, img_b: np.ndarray) -> dict[str, np.ndarray]:
        """Two H x W x 3 uint8 RGB images -> keypoints0 / keypoints1 (N x 2 px, COLMAP), scores (N) [+ ncc (N)].

        Refinement (dense and sparse): ``matching.refine.refine_with`` at the two images' common scale.
        """
        c = self.conf
        if c.search:
            return match_images_learned(self.model, img_a, img_b, int(c.image_size), max_matches=c.max_matches,
                                        angles=SEARCH_ANGLES, scales=scale_ladder(SEARCH_SCALE_LEVELS),
                                        select="agreement", ncc=c.refine_options if c.refine else None,
                                        directions=c.directions or SEARCH_DIRECTIONS)
        if self.pyramid:
            return match_pyramid(self.model, img_a, img_b, int(c.image_size), c.scales, c.rotations,
                                 refine=bool(c.refine), refine_options=c.refine_options, max_matches=c.max_matches,
                                 prescreen=int(c.prescreen))
        return self.match_features(self.features(img_a), self.features(img_b), img_a, img_b)

    __call__ = match


@torch.no_grad()
def image_features(model: NCNet, img: np.ndarray, image_size: int, multiple: int) -> ImageFeatures:
    """``model.features`` of an H x W x 3 uint8 RGB image resized to longer side ~``image_size`` (sides
    rounded down to multiples of ``multiple``), on the model's device."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    shape = resized_shape(img.shape[0], img.shape[1], image_size, multiple)
    return ImageFeatures(model.features(image_to_tensor(img, shape, device)), tuple(img.shape[:2]), shape)


@torch.no_grad()
def match_dense_head(model: NCNet, feat_a: ImageFeatures, feat_b: ImageFeatures, img_a: np.ndarray | None = None,
                     img_b: np.ndarray | None = None, refine: bool = False, max_matches: int | None = None,
                     min_score: float = 0.0, refine_options: RefineConfig | None = None,
                     directions: str = "both") -> dict[str, np.ndarray]:
    """Dense NCNet matches from two images' features (``match_images`` after the backbone); images only to refine.
    ``directions``: 'both' (NCNet's extraction), 'smaller' or 'mutual' (``learned_features.from_smaller_grid``)."""
    if directions not in DIRECTIONS:
        raise ValueError(f"directions must be one of {DIRECTIONS}, got {directions!r}")
    out = model.head(feat_a.tensor, feat_b.tensor)
    m = extract_matches(out.corr[:1], feat_a.image_hw, feat_b.image_hw, code=out.code, k=out.k)
    keep = m["scores"] >= min_score
    if directions != "both":
        keep &= from_smaller_grid(out.corr, m["indices0"], m["indices1"], out.k, mutual=directions == "mutual")
    result = {"keypoints0": m["keypoints0"][keep].cpu().numpy(), "keypoints1": m["keypoints1"][keep].cpu().numpy(),
              "scores": m["scores"][keep].float().cpu().numpy()}
    if max_matches is not None:
        result = {k: v[:max_matches] for k, v in result.items()}
    if refine:
        cell_a = model.features.stride * feat_a.image_hw[1] / feat_a.input_hw[1]
        cell_b = model.features.stride * feat_b.image_hw[1] / feat_b.input_hw[1]
        result = refine_with(img_a, img_b, result, refine_options or RefineConfig(), cell_a, cell_b)
    return result


def match_images(model: NCNet, img_a: np.ndarray, img_b: np.ndarray, image_size: int = DEFAULT_IMAGE_SIZE,
                 refine: bool = False, max_matches: int | None = None, min_score: float = 0.0,
                 refine_options: RefineConfig | None = None) -> dict[str, np.ndarray]:
    """Match two H x W x 3 uint8 RGB images -> dict(keypoints0 N x 2, keypoints1 N x 2, scores N).

    ``image_size``: longer side after resizing (sides rounded down to multiples of stride x pooling).
    Keypoints in pixels of the original images (COLMAP convention), sorted by decreasing score.
    ``refine``: sub-cell refinement (``matching.refine.refine_with``, options ``refine_options``: both images
    at a common scale, radius in matching cells); then also ``ncc`` (N, peak NCC) is returned.
    """
    feat_a = image_features(model, img_a, image_size, model.cell_multiple)
    feat_b = image_features(model, img_b, image_size, model.cell_multiple)
    return match_dense_head(model, feat_a, feat_b, img_a, img_b, refine, max_matches, min_score, refine_options)


def match_agreement(reference: dict[str, np.ndarray], other: dict[str, np.ndarray], tol_px: float = 0.5) -> float:
    """Share of matches two results have in common: |common| / max(|reference|, |other|), 1.0 when both are empty.

    A match is common when both its keypoints (keypoints0 and keypoints1, px) fall in the same ``tol_px``
    grid cell in both results (matches on a feature grid are the same match when equal).
    """
    def keyset(m: dict[str, np.ndarray]) -> set[tuple[int, ...]]:
        kp = np.concatenate([np.asarray(m["keypoints0"], np.float64), np.asarray(m["keypoints1"], np.float64)], 1)
        return set(map(tuple, np.floor(kp / tol_px).astype(np.int64).tolist()))

    ref, got = keyset(reference), keyset(other)
    n = max(len(reference["scores"]), len(other["scores"]))
    return 1.0 if n == 0 else len(ref & got) / n


def write_matches_h5(path: str | Path, matches: dict[str, np.ndarray], attrs: dict | None = None) -> None:
    """HDF5 with datasets keypoints0 (N x 2), keypoints1 (N x 2), scores (N) [+ others], attrs optional."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for key, value in matches.items():
            f.create_dataset(key, data=value)
        for key, value in (attrs or {}).items():
            f.attrs[key] = value


def read_matches_h5(path: str | Path) -> dict[str, np.ndarray]:
    """Read back ``write_matches_h5``'s datasets."""
    with h5py.File(path, "r") as f:
        return {key: f[key][()] for key in f}


def main(conf: MatchConfig, image_a: str | Path, image_b: str | Path, out: str | Path | None = None,
         plot: str | Path | None = None, device: str | torch.device = "cpu") -> dict[str, np.ndarray]:
    """Match two image files per ``conf``; optionally write the matches (HDF5, ``write_matches_h5``) and a PNG.

    Returns the matches (keypoints0 / keypoints1 N x 2 px, COLMAP convention, scores N [+ ncc N]).
    """
    img_a, img_b = load_rgb(image_a), load_rgb(image_b)
    matcher = Matcher(conf, device)
    matches = matcher.match(img_a, img_b)
    if out is not None:
        write_matches_h5(out, matches, {"image_a": str(image_a), "image_b": str(image_b),
                                        "features": matcher.model.features.name, "image_size": conf.image_size})
    if plot is not None:
        plot_matches(plot, img_a, img_b, matches["keypoints0"], matches["keypoints1"], matches["scores"],
                     max_lines=PLOT_MAX_LINES)
    return matches


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m matching.match``."""
    ap = argparse.ArgumentParser(prog="python -m matching.match", description=__doc__.splitlines()[0])
    ap.add_argument("image_a")
    ap.add_argument("image_b")
    ap.add_argument("--weights", help="NCNet checkpoint (official .pth.tar layout); default: packaged weights")
    ap.add_argument("--features", choices=["resnet101", "dense-rootsift", "learned"], default=None,
                    help="feature extractor (default: from the checkpoint given with --weights, else learned)")
    ap.add_argument("--backbone-weights", help="torchvision resnet101 .pth (when the checkpoint has no backbone)")
    ap.add_argument("--image-size", type=positive_int, default=None,
                    help=f"longer image side after resizing (default {SEARCH_IMAGE_SIZE} with the search, else "
                         f"{DEFAULT_IMAGE_SIZE})")
    ap.add_argument("--relocalize", action="store_true", help="2x2x2x2 max-pooling + relocalization")
    ap.add_argument("--no-consensus", action="store_true", help="correlation + mutual NN only")
    ap.add_argument("--refine", action=argparse.BooleanOptionalAction, default=True,
                    help="sub-cell NCC refinement at full resolution (default on)")
    ap.add_argument("--local-affine", type=int, default=None, metavar="N",
                    help="refine with patches warped by the affine fit of N neighbouring matches (default "
                         f"{SEARCH_REFINE.local_affine} with the search, else 0 = upright patches)")
    ap.add_argument("--max-affine-residual", type=float, default=None, metavar="PX",
                    help="drop matches farther than PX from their neighbours' affine fit (default "
                         f"{SEARCH_REFINE.max_affine_residual:g} with --local-affine, 0 = keep all)")
    ap.add_argument("--directions", choices=list(DIRECTIONS), default=None,
                    help="dense matches kept: mutual nearest neighbours, the smaller grid's direction, or both "
                         "directions as NCNet (default: mutual with the learned features, else both)")
    ap.add_argument("--search", choices=["auto", "on", "off"], default="auto",
                    help="search B's turn (every 45 deg) and relative scale (0.25-4) first; auto: with the "
                         "learned features, dense matching without --relocalize")
    ap.add_argument("--half", action="store_true", help="float16 consensus (CUDA)")
    ap.add_argument("--precision", choices=list(PRECISIONS), default="auto",
                    help="resnet101 backbone compute dtype (auto: bfloat16 on CPUs with AMX-BF16)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--max-matches", type=positive_int, default=None)
    ap.add_argument("--sparse", action="store_true", help="Sparse-NCNet: top-k sparse correlation + sparse consensus")
    ap.add_argument("--top-k", type=positive_int, default=DEFAULT_TOP_K, help="--sparse: matches kept per cell, both directions")
    ap.add_argument("--reloc-mode", choices=list(RELOCALIZATION_MODES), default="hard+soft",
                    help="--sparse with --relocalize: relocalization mode")
    ap.add_argument("--out", help="write matches to this HDF5 file")
    ap.add_argument("--plot", help="write a PNG of the matches")
    ap.add_argument("-v", "--verbose", action="store_true")
    return ap


def affine_refine_options(local_affine: int, max_affine_residual: float | None, **options) -> RefineConfig:
    """``RefineConfig`` of the command-line pair --local-affine N (0: upright patches) / --max-affine-residual PX
    (0 or None: keep all; ignored without affine patches), other ``RefineConfig`` fields from ``options``."""
    return RefineConfig(local_affine=local_affine,
                        max_affine_residual=(max_affine_residual or None) if local_affine else None, **options)


def conf_from_args(args: argparse.Namespace) -> MatchConfig:
    """``MatchConfig`` of parsed ``build_parser`` options: without --weights and --features the learned features,
    searched (``--search auto``) and refined (``SEARCH_REFINE``); with --weights the checkpoint's features."""
    features = args.features if args.features or args.weights else "learned"
    search = args.search == "on" or (args.search == "auto" and features == "learned" and not args.sparse
                                     and not args.relocalize)
    size = args.image_size or (SEARCH_IMAGE_SIZE if search else DEFAULT_IMAGE_SIZE)
    local_affine = (SEARCH_REFINE.local_affine if search else 0) if args.local_affine is None else args.local_affine
    residual = SEARCH_REFINE.max_affine_residual if args.max_affine_residual is None else args.max_affine_residual
    refine_options = affine_refine_options(local_affine, residual)
    return from_dict(MatchConfig, {
        "weights": args.weights, "features": features, "backbone_weights": args.backbone_weights,
        "image_size": size, "relocalize": args.relocalize, "reloc_mode": args.reloc_mode,
        "sparse": args.sparse, "top_k": args.top_k, "refine": args.refine, "max_matches": args.max_matches,
        "half": args.half, "consensus": not args.no_consensus, "precision": args.precision, "search": search,
        "refine_options": refine_options,
        "directions": args.directions or (SEARCH_DIRECTIONS if features == "learned" and not args.sparse else None)})


def cli(argv: list[str] | None = None) -> int:
    """``python -m matching.match IMAGE_A IMAGE_B [options]``: exit status 0, or 2 on bad input."""
    ap = build_parser()
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device available")
    try:
        matches = main(conf_from_args(args), args.image_a, args.image_b, args.out, args.plot, args.device)
    except (InputError, ValueError, FileNotFoundError, KeyError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(matches['scores'])} matches")
    if args.out:
        print(f"wrote {args.out}")
    if args.plot:
        print(f"wrote {args.plot}")
    return 0


__all__ = ["DEFAULT_FEATURE_CACHE_MB", "DEFAULT_IMAGE_SIZE", "SEARCH_REFINE", "MatchConfig", "affine_refine_options", "Matcher", "build_parser", "cli",
           "conf_from_args", "image_features", "main", "match_agreement", "match_dense_head", "match_images", "read_matches_h5",
           "write_matches_h5"]


if __name__ == "__main__":
    sys.exit(cli())
