"""Dense features learned in this project from random initialisation (``--features learned``).

A small VGG-style trunk on the grey image to stride 8 (or 4), ``channels`` L2-normalised descriptors per cell,
trained by ``python -m matching.train_features`` (dense InfoNCE on exact ground-truth correspondences of
homography-warped real photos and synthetic building renders). Same interface as ``matching.features``:
``name``, ``stride``, ``channels``; forward RGB [B, 3, H, W] in 0..1 -> [B, C, H/s, W/s], cell (i, j) centred at
pixel ((j + 0.5) s, (i + 0.5) s).

Weight file (``matching/weights/learned_features.pth``, read with ``localize.core.torchfile.load_torch_file``,
no extra classes allowed): dict ``format`` = ``LEARNED_FORMAT``, ``config`` (plain dict of ``LearnedConfig``),
``state_dict`` (convolution kernels int8 with float32 per-output-channel ``scales``, other tensors
float16), ``meta`` (plain dict: training command, iterations, ...).

``match_images_learned``: the usual correlation -> (consensus) -> extraction, then a sub-cell refinement of the
B keypoints by the descriptor of A's cell against B's bilinearly interpolated descriptor field (+-1 cell,
1 px steps at matching resolution, parabolic peak), optionally NCC refinement at full resolution; optional
test-time search over turns of B and relative scales (scores from ``matching.configuration_search``: the
configuration whose raw feature maps score highest is matched).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from localize.core.config import from_dict
from localize.core.torchfile import load_torch_file
from matching.configuration_search import (
    mutual_pairs,
    mutual_strength,
    neighbour_agreement,
    turn_image,
    unturn_points,
)
from matching.correlation import feature_l2norm
from matching.extract import extract_matches
from matching.preprocess import image_to_tensor, resize_rgb, resized_shape
from matching.refine import RefineConfig, refine_with

log = logging.getLogger(__name__)

LEARNED_FORMAT = "learned-features-v1"
PACKAGED_LEARNED_WEIGHTS = Path(__file__).resolve().parent / "weights" / "learned_features.pth"
GRAY = (0.299, 0.587, 0.114)
SELECT_CRITERIA = ("agreement", "strength")
DIRECTIONS = ("both", "smaller", "mutual")  # matches kept by match_images_learned


@dataclass
class LearnedConfig:
    """Architecture: widths of the three resolution stages (full, 1/2, 1/4) and the last (1/8) stage."""

    channels: int = 128
    stride: int = 8  # 8 or 4 (4: the 1/8 stage runs at 1/4 without its downsampling)
    widths: tuple[int, int, int, int] = (32, 64, 128, 256)

    def __post_init__(self) -> None:
        if self.stride not in (4, 8):
            raise ValueError(f"stride must be 4 or 8, got {self.stride}")
        self.widths = tuple(int(w) for w in self.widths)
        if len(self.widths) != 4:
            raise ValueError("widths needs 4 entries")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d


def _conv(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class LearnedFeatures(nn.Module):
    """VGG-style trunk: grey -> [w0] -> /2 [w1 x2] -> /2 [w2 x2] -> /2 [w3 x3] -> 1x1 -> ``channels``, L2-normalised."""

    name = "learned"

    def __init__(self, config: LearnedConfig | None = None) -> None:
        super().__init__()
        self.config = config or LearnedConfig()
        w0, w1, w2, w3 = self.config.widths
        self.stride = int(self.config.stride)
        self.channels = int(self.config.channels)
        last = 2 if self.stride == 8 else 1
        layers = (_conv(1, w0) + _conv(w0, w1, 2) + _conv(w1, w1) + _conv(w1, w2, 2) + _conv(w2, w2)
                  + _conv(w2, w3, last) + _conv(w3, w3) + _conv(w3, w3))
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Conv2d(w3, self.channels, 1)
        self.register_buffer("gray", torch.tensor(GRAY).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: Tensor) -> Tensor:
        """[B, 3 or 1, H, W] 0..1 -> [B, C, H/s, W/s] L2-normalised (H, W multiples of s)."""
        x = (image * self.gray.to(image.dtype)).sum(1, keepdim=True) if image.shape[1] == 3 else image
        x = (x - 0.45) / 0.25
        return feature_l2norm(self.head(self.trunk(x)).float())


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def quantize_int8(w: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric int8 per output channel (dim 0) -> (int8 tensor, float32 scale per channel); w ~ q * scale."""
    flat = w.detach().float().reshape(len(w), -1)
    scale = flat.abs().amax(1).clamp_min(1e-12) / 127.0
    q = torch.round(flat / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q.reshape(w.shape), scale


def weights_payload(model: LearnedFeatures, meta: dict | None = None) -> dict:
    """The packaged-file dict: convolution kernels int8 per output channel (``scales``), the rest float16."""
    sd, scales = {}, {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if v.is_floating_point() and v.ndim == 4:
            sd[k], scales[k] = quantize_int8(v)
        else:
            sd[k] = v.half() if v.is_floating_point() else v
    return {"format": LEARNED_FORMAT, "config": model.config.to_dict(), "state_dict": sd, "scales": scales,
            "meta": dict(meta or {})}


def _dequantized(sd: dict, scales: dict) -> dict:
    """float32 state dict of a packaged file (int8 kernels times their per-channel scales)."""
    out = {}
    for k, v in sd.items():
        if k in scales:
            out[k] = v.float() * scales[k].float().reshape(-1, *([1] * (v.ndim - 1)))
        else:
            out[k] = v.float() if v.is_floating_point() else v
    return out


def save_learned_weights(model: LearnedFeatures, path: str | Path, meta: dict | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(weights_payload(model, meta), path)
    return path


def load_learned_features(path: str | Path | None = None, device: str | torch.device = "cpu") -> LearnedFeatures:
    """A packaged weight file (default ``PACKAGED_LEARNED_WEIGHTS``) -> LearnedFeatures in eval mode (float32).

    Also accepts a training checkpoint of ``matching.train_features`` (keys ``model``, ``feature_config``)."""
    path = Path(path or PACKAGED_LEARNED_WEIGHTS)
    obj = load_torch_file(path)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: not a learned-features weight file")
    if obj.get("format") == LEARNED_FORMAT:
        conf, sd = obj["config"], _dequantized(obj["state_dict"], obj.get("scales", {}))
    elif "model" in obj and "feature_config" in obj:
        conf, sd = obj["feature_config"], obj["model"]
    else:
        raise ValueError(f"{path}: neither format {LEARNED_FORMAT!r} nor a train_features checkpoint")
    model = LearnedFeatures(from_dict(LearnedConfig, dict(conf)))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, strict=True)
    return model.to(device).eval()


# ---------------------------------------------------------------------------------------------- matching
def sample_descriptors(feat: Tensor, xy: Tensor, image_hw: tuple[int, int]) -> Tensor:
    """Bilinear descriptors of feat [C, h, w] at pixels xy [..., 2] of the (resized) image -> [..., C] (not renormed)."""
    H, W = image_hw
    g = torch.stack([2.0 * xy[..., 0] / W - 1.0, 2.0 * xy[..., 1] / H - 1.0], dim=-1).float()
    shp = g.shape[:-1]
    out = F.grid_sample(feat[None].float(), g.reshape(1, 1, -1, 2), mode="bilinear", padding_mode="border",
                        align_corners=False)[0, :, 0]
    return out.t().reshape(*shp, feat.shape[0])


def refine_with_descriptors(feat_a: Tensor, feat_b: Tensor, kp_a: Tensor, kp_b: Tensor, hw_a: tuple[int, int],
                            hw_b: tuple[int, int], radius: float, step: float = 1.0, chunk: int = 512) -> tuple[Tensor, Tensor]:
    """Move kp_b [N, 2] (resized-B pixels) to the best descriptor response of A's descriptor at kp_a within
    +-radius px (grid of ``step`` px, parabolic sub-step peak). Returns (refined [N, 2], peak similarity [N])."""
    if len(kp_a) == 0:
        return kp_b.clone(), torch.zeros(0)
    da = F.normalize(sample_descriptors(feat_a, kp_a, hw_a), dim=-1)
    r = int(round(radius / step))
    off = torch.arange(-r, r + 1, dtype=torch.float32) * step
    oy, ox = torch.meshgrid(off, off, indexing="ij")
    grid_off = torch.stack([ox, oy], -1).reshape(-1, 2)  # [(2r+1)^2, 2]
    out_xy, out_s = [], []
    n = 2 * r + 1
    for s in range(0, len(kp_b), chunk):
        pb = kp_b[s:s + chunk].float()
        cand = pb[:, None, :] + grid_off[None]  # [n, K, 2]
        db = F.normalize(sample_descriptors(feat_b, cand, hw_b), dim=-1)
        sim = (db * da[s:s + chunk, None, :]).sum(-1).view(-1, n, n)  # [m, n(y), n(x)]
        best = sim.flatten(1).argmax(1)
        by, bx = best // n, best % n
        idx = torch.arange(len(pb))
        c = sim[idx, by, bx]

        def para(l: Tensor, m: Tensor, rr: Tensor) -> Tensor:
            den = l - 2 * m + rr
            return (0.5 * (l - rr) / torch.where(den.abs() < 1e-9, torch.full_like(den, -1e-9), den)).clamp(-0.5, 0.5)

        inner_x = (bx > 0) & (bx < n - 1)
        inner_y = (by > 0) & (by < n - 1)
        dx = torch.where(inner_x, para(sim[idx, by, (bx - 1).clamp(min=0)], c, sim[idx, by, (bx + 1).clamp(max=n - 1)]),
                         torch.zeros_like(c))
        dy = torch.where(inner_y, para(sim[idx, (by - 1).clamp(min=0), bx], c, sim[idx, (by + 1).clamp(max=n - 1), bx]),
                         torch.zeros_like(c))
        xy = pb + torch.stack([(bx.float() - r + dx) * step, (by.float() - r + dy) * step], -1)
        out_xy.append(xy)
        out_s.append(c)
    return torch.cat(out_xy), torch.cat(out_s)


def unrotate_points(xy: Tensor, k: int, hw: tuple[int, int]) -> Tensor:
    """Pixels (COLMAP convention) of ``np.rot90(img, k)`` -> pixels of ``img`` (H x W = ``hw``)."""
    H, W = hw
    widths = [W, H, W, H]
    out = xy.clone()
    for i in reversed(range(k % 4)):
        out = torch.stack([widths[i] - out[:, 1], out[:, 0]], 1)
    return out


def learned_sides(image_size: int, scale: float) -> tuple[int, int]:
    """(longer side of A, longer side of B) in px for a relative scale of B (B resized ``scale`` x relative to
    A): the image that must shrink is shrunk (B by ``scale`` <= 1, A by 1 / ``scale`` otherwise), never
    enlarged, so no configuration costs more than matching both at ``image_size``."""
    if scale <= 1.0:
        return int(image_size), int(round(image_size * scale))
    return int(round(image_size / scale)), int(image_size)


def search_configurations(angles: tuple[float, ...], scales: tuple[float, ...]) -> list[tuple[float, float]]:
    """(angle of B in degrees [0, 360), relative scale of B) per configuration, the identity first (it wins ties)."""
    if not scales or any(not s > 0 for s in scales) or not angles:
        raise ValueError(f"need angles and positive scales, got {angles}, {scales}")
    out = {(float(a) % 360.0, float(s)) for a in angles for s in scales}
    return sorted(out, key=lambda c: (c != (0.0, 1.0), abs(math.log(c[1])), c))


def from_smaller_grid(corr: Tensor, idx0: Tensor, idx1: Tensor, k: int = 1, mutual: bool = False) -> Tensor:
    """Bool mask of matches (cells idx0 / idx1 [N, 2] (row, col) of the grids at k x the correlation's) that are
    the best match of their cell in the image with fewer cells (all matches when both grids have as many);
    with ``mutual``: the best match of their cell in both images (mutual nearest neighbours of ``corr``).

    When B is resized against A, the image with fewer cells is the one whose view lies inside the other's;
    cells of the larger grid outside it have no counterpart, yet their softmax over the few cells of the
    smaller grid scores high, so only the smaller grid's direction is kept. Cells of either image that the
    other does not see get a best match too: only mutual ones leave those out whatever the grid sizes."""
    ha, wa, hb, wb = corr.shape[-4:]
    c = corr.reshape(ha * wa, hb * wb)
    i0 = idx0[:, 0] // k * wa + idx0[:, 1] // k
    i1 = idx1[:, 0] // k * wb + idx1[:, 1] // k
    if mutual:
        ma, mb, _ = mutual_pairs(c)
        return torch.isin(i0 * (hb * wb) + i1, ma * (hb * wb) + mb)
    if ha * wa < hb * wb:
        return c.argmax(1)[i0] == i1
    if ha * wa > hb * wb:
        return c.argmax(0)[i1] == i0
    return torch.ones(len(i0), dtype=torch.bool, device=corr.device)


def configuration_score(feat_a: Tensor, feat_b: Tensor, select: str) -> float:
    """How well a configuration fits, from the raw feature maps: ``select`` 'agreement' (``neighbour_agreement``)
    or 'strength' (``mutual_strength``)."""
    if select == "agreement":
        return float(neighbour_agreement(feat_a, feat_b))
    if select == "strength":
        return mutual_strength(feat_a, feat_b)
    raise ValueError(f"select must be one of {SELECT_CRITERIA}, got {select!r}")


@torch.no_grad()
def match_images_learned(model, img_a: np.ndarray, img_b: np.ndarray, image_size: int = 640,
                         max_matches: int | None = None, refine: bool = True, angles: tuple[float, ...] = (0.0,),
                         scales: tuple[float, ...] = (1.0,), select: str = "agreement",
                         ncc: RefineConfig | None = None, directions: str = "smaller") -> dict[str, np.ndarray]:
    """NCNet matching (``model``: a ``matching.model.NCNet``, normally with learned features) + descriptor refinement.

    Test-time search: B turned by each of ``angles`` (degrees, counter-clockwise, ``turn_image``) and resized
    relative to A by each of ``scales`` (sides per ``learned_sides``); the configuration with the highest
    ``configuration_score`` (``select``) is kept and matched fully (consensus, extraction, descriptor
    refinement when ``refine``; ``directions`` 'both': the matches of extraction, 'smaller': only those of
    ``from_smaller_grid``, 'mutual': only mutual ones (``from_smaller_grid(..., mutual=True)``); then, when ``ncc`` is given, NCC refinement of B's keypoints at full
    resolution by ``refine_with`` with those options). Keypoints in original pixels (COLMAP convention),
    sorted by decreasing score, matches whose B keypoint falls outside B dropped; ``transform`` = (angle,
    long side A, long side B) chosen, ``cells`` = one matching cell in px of A and of B (``refine_turned``'s)."""
    if directions not in DIRECTIONS:
        raise ValueError(f"directions must be one of {DIRECTIONS}, got {directions!r}")
    if select not in SELECT_CRITERIA:
        raise ValueError(f"select must be one of {SELECT_CRITERIA}, got {select!r}")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    mult = model.cell_multiple
    configs = search_configurations(tuple(angles), tuple(scales))
    feats_a: dict[int, tuple[Tensor, Tensor]] = {}
    feats_b: dict[tuple[float, int], tuple[tuple[int, int], np.ndarray, Tensor, Tensor]] = {}
    best, best_val = None, -math.inf
    for angle, scale in configs:
        sa, sb = learned_sides(image_size, scale)
        if sa not in feats_a:
            ta = image_to_tensor(img_a, resized_shape(img_a.shape[0], img_a.shape[1], sa, mult), device)
            feats_a[sa] = (ta, model.features(ta))
        if (angle, sb) not in feats_b:  # B at the matching size serves every scale >= 1 of a turn
            shape_b = resized_shape(img_b.shape[0], img_b.shape[1], sb, mult)
            rb, turn = turn_image(resize_rgb(img_b, shape_b), angle, mult)
            tb = image_to_tensor(rb, rb.shape[:2], device)
            feats_b[angle, sb] = (shape_b, turn, tb, model.features(tb))
        val = configuration_score(feats_a[sa][1], feats_b[angle, sb][3], select) if len(configs) > 1 else 0.0
        if val > best_val:
            best_val, best = val, (angle, sa, sb)
    assert best is not None
    angle, sa, sb = best
    (ta, fa), (shape_b, turn, tb, fb) = feats_a[sa], feats_b[angle, sb]
    corr, code = model.correlate(fa, fb)
    corr = model.filter_correlation(corr)
    m = extract_matches(corr[:1], img_a.shape[:2], tuple(tb.shape[-2:]), code=code, k=model.relocalization_k)
    if directions in ("smaller", "mutual"):
        keep = from_smaller_grid(corr, m["indices0"], m["indices1"], model.relocalization_k,
                                 mutual=directions == "mutual")
        m = {key: m[key][keep] for key in ("keypoints0", "keypoints1", "scores")}
    kp0, kp1, scores = m["keypoints0"].float().cpu(), m["keypoints1"].float().cpu(), m["scores"].float().cpu()
    if refine and len(scores):
        sxa, sya = ta.shape[-1] / img_a.shape[1], ta.shape[-2] / img_a.shape[0]
        kp1, _ = refine_with_descriptors(fa[0].float().cpu(), fb[0].float().cpu(), kp0 * torch.tensor([sxa, sya]),
                                         kp1, tuple(ta.shape[-2:]), tuple(tb.shape[-2:]),
                                         radius=float(model.features.stride))
    to_b = np.array([img_b.shape[1] / shape_b[1], img_b.shape[0] / shape_b[0]])
    res = {"keypoints0": kp0.double().numpy(), "keypoints1": unturn_points(kp1.double().numpy(), turn) * to_b,
           "scores": scores.numpy()}
    inside = ((res["keypoints1"] >= 0) & (res["keypoints1"] <= [img_b.shape[1], img_b.shape[0]])).all(1)
    res = {key: v[inside] for key, v in res.items()}
    cells = np.array([model.features.stride * img_a.shape[1] / ta.shape[-1], model.features.stride * to_b[0]])
    if ncc is not None and len(res["scores"]):
        res = refine_turned(img_a, img_b, res, ncc, angle, (float(cells[0]), float(cells[1])))
    order = np.argsort(-res["scores"], kind="stable")
    res = {key: v[order][:max_matches] for key, v in res.items()}
    res["transform"], res["cells"] = np.array([angle, sa, sb]), cells
    return res


def refine_turned(img_a: np.ndarray, img_b: np.ndarray, matches: dict[str, np.ndarray], conf: RefineConfig,
                  angle: float, cells: tuple[float, float]) -> dict[str, np.ndarray]:
    """``refine_with`` of ``matches`` (original pixels) against B turned by ``angle`` degrees at full resolution
    (so both patches are upright alike); ``cells``: one matching cell in px of A and of B. Keypoints of B
    mapped back to B's original pixels."""
    turned, turn = turn_image(img_b, angle)
    m = dict(matches, keypoints1=matches["keypoints1"] @ turn[:, :2].T + turn[:, 2])
    out = refine_with(img_a, turned, m, conf, cells[0], cells[1])
    out["keypoints1"] = unturn_points(out["keypoints1"], turn)
    return out


__all__ = ["LearnedConfig", "LearnedFeatures", "LEARNED_FORMAT", "PACKAGED_LEARNED_WEIGHTS", "load_learned_features",
           "save_learned_weights", "weights_payload", "sample_descriptors", "refine_with_descriptors",
           "match_images_learned", "num_parameters", "unrotate_points", "learned_sides", "search_configurations",
           "configuration_score", "refine_turned", "SELECT_CRITERIA", "DIRECTIONS", "from_smaller_grid"]
