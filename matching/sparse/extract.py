"""Match extraction from a sparse filtered correlation, and hard / soft relocalization from features.

* ``extract_sparse_matches``: for each cell of B the best cell of A among its entries, score = softmax
  over that line of the tensor (the entries and the implicit zeros of the dense tensor, so the score is
  exactly ``matching.extract.extract_matches``'s on the densified tensor); the same from A to B; both
  concatenated, sorted by score, duplicates removed. Lines without an entry, or whose best entry is
  <= 0 while the line has implicit zeros (the dense argmax would be an arbitrary empty cell), give no
  match.
* ``hard_relocalize``: a match of the 2x2-pooled grids -> full resolution: argmax of the correlation of
  the 2x2 window of A's full-resolution features with B's 2x2 window (equals the argmax code of the dense
  4D max-pooling, ``matching.relocalize.maxpool4d``, of the full-resolution correlation).
* ``soft_relocalize``: 3x3 soft-argmax (softmax of temperature x correlation) around the hard position:
  A's centre feature against B's 3x3 neighbourhood moves B's point, and vice versa (Sparse-NCNet "H+S").
  Neighbours outside the grid are left out. Computed locally from the features.
"""

from __future__ import annotations

import torch
from torch import Tensor

from matching.extract import cell_to_pixels, sort_unique_matches
from matching.sparse.correlation import SparseCorr4d


def _best_per_line(line: Tensor, other: Tensor, v: Tensor, n_lines: int, line_len: int,
                   softmax: bool) -> tuple[Tensor, Tensor, Tensor]:
    """For each line (cell) with entries: (line index, best other index, score)."""
    vmax = v.new_full((n_lines,), float("-inf")).scatter_reduce(0, line, v, "amax")
    cnt = torch.bincount(line, minlength=n_lines)
    cand = v == vmax[line]
    big = torch.iinfo(torch.int64).max
    best = torch.full((n_lines,), big, dtype=torch.long, device=v.device)
    best = best.scatter_reduce(0, line[cand], other[cand], "amin")
    has_zeros = cnt < line_len
    valid = (cnt > 0) & ((vmax > 0) | ~has_zeros)
    if softmax:
        m = torch.where(has_zeros, vmax.clamp(min=0.0), vmax)
        m = torch.where(cnt > 0, m, torch.zeros_like(m))
        denom = v.new_zeros((n_lines,)).index_add_(0, line, torch.exp(v - m[line]))
        denom = denom + (line_len - cnt).to(v.dtype) * torch.exp(-m)
        score = torch.exp(vmax - m) / denom
    else:
        score = vmax
    idx = torch.nonzero(valid).squeeze(1)
    return idx, best[idx], score[idx]


def extract_sparse_matches(corr: SparseCorr4d, both_directions: bool = True, softmax: bool = True,
                           channel: int = 0) -> dict[str, Tensor]:
    """Matches from a sparse tensor: indices0 / indices1 [N, 2] (row, col) cells, scores [N] (decreasing)."""
    ha, wa, hb, wb = corr.shape
    v = corr.values[:, channel]
    ia, ib = corr.index_a(), corr.index_b()
    cb, ca_best, s_ba = _best_per_line(ib, ia, v, hb * wb, ha * wa, softmax)  # for each B cell: best A
    a_all, b_all, sc = [ca_best], [cb], [s_ba]
    if both_directions:
        ca, cb_best, s_ab = _best_per_line(ia, ib, v, ha * wa, hb * wb, softmax)
        a_all.append(ca)
        b_all.append(cb_best)
        sc.append(s_ab)
    a_t, b_t, scores = torch.cat(a_all), torch.cat(b_all), torch.cat(sc)
    a_t, b_t, scores = sort_unique_matches(a_t, b_t, scores, hb * wb)
    return {"indices0": torch.stack([a_t // wa, a_t % wa], dim=1),
            "indices1": torch.stack([b_t // wb, b_t % wb], dim=1), "scores": scores}


def _feat_hw(f: Tensor) -> Tensor:
    """[1, C, H, W] or [C, H, W] -> [H, W, C]."""
    if f.dim() == 4:
        f = f[0]
    return f.permute(1, 2, 0)


def hard_relocalize(idx0: Tensor, idx1: Tensor, feat_a: Tensor, feat_b: Tensor, k: int = 2,
                    chunk: int = 8192) -> tuple[Tensor, Tensor]:
    """Pooled-grid cells idx0 / idx1 [N, 2] -> full-resolution cells: argmax of <fA, fB> over the k x k
    windows (row*k + di, col*k + dj) of both full-resolution feature maps [1, C, H, W]."""
    fa, fb = _feat_hw(feat_a), _feat_hw(feat_b)
    d = torch.arange(k, device=idx0.device)
    di, dj = torch.meshgrid(d, d, indexing="ij")
    di, dj = di.reshape(-1), dj.reshape(-1)  # window order di * k + dj
    outs_a, outs_b = [], []
    for s in range(0, len(idx0), chunk):
        a, b = idx0[s:s + chunk], idx1[s:s + chunk]
        ra, ca = a[:, :1] * k + di, a[:, 1:] * k + dj  # [n, k^2]
        rb, cb = b[:, :1] * k + di, b[:, 1:] * k + dj
        wa_, wb_ = fa[ra, ca], fb[rb, cb]  # [n, k^2, C]
        corr = torch.bmm(wa_, wb_.transpose(1, 2)).reshape(len(a), -1)  # code = (di*k+dj)*k^2 + (dk*k+dl)
        code = corr.argmax(dim=1)
        pa, pb = code // (k * k), code % (k * k)
        outs_a.append(torch.stack([a[:, 0] * k + di[pa], a[:, 1] * k + dj[pa]], dim=1))
        outs_b.append(torch.stack([b[:, 0] * k + di[pb], b[:, 1] * k + dj[pb]], dim=1))
    if not outs_a:
        return idx0.clone(), idx1.clone()
    return torch.cat(outs_a), torch.cat(outs_b)


def soft_relocalize(pos0: Tensor, pos1: Tensor, feat_a: Tensor, feat_b: Tensor, temperature: float = 10.0,
                    chunk: int = 8192) -> tuple[Tensor, Tensor]:
    """3x3 soft-argmax around integer full-resolution cells pos0 / pos1 [N, 2] (row, col).

    B's point moves by E[offset] under softmax(temperature * <fA(pos0), fB(pos1 + offset)>) over the 3x3
    offsets inside B's grid; A's point likewise with B's centre feature. Returns float64 (row, col) [N, 2].
    """
    fa, fb = _feat_hw(feat_a), _feat_hw(feat_b)
    d = torch.tensor([-1, 0, 1], device=pos0.device)
    dr, dc = torch.meshgrid(d, d, indexing="ij")
    dr, dc = dr.reshape(-1), dc.reshape(-1)
    off = torch.stack([dr, dc], dim=1).double()

    def move(centre_feat: Tensor, fmap: Tensor, p: Tensor) -> Tensor:
        h, w = fmap.shape[:2]
        r, c = p[:, :1] + dr, p[:, 1:] + dc  # [n, 9]
        inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
        nb = fmap[r.clamp(0, h - 1), c.clamp(0, w - 1)]  # [n, 9, C]
        logit = (nb * centre_feat[:, None]).sum(-1).double() * temperature
        prob = torch.softmax(logit.masked_fill(~inside, float("-inf")), dim=1)
        return p.double() + prob @ off

    out_a, out_b = [], []
    for s in range(0, len(pos0), chunk):
        a, b = pos0[s:s + chunk].long(), pos1[s:s + chunk].long()
        ca, cb = fa[a[:, 0], a[:, 1]], fb[b[:, 0], b[:, 1]]
        out_b.append(move(ca, fb, b))
        out_a.append(move(cb, fa, a))
    if not out_a:
        return pos0.double(), pos1.double()
    return torch.cat(out_a), torch.cat(out_b)


def matches_to_pixels(idx0: Tensor, idx1: Tensor, grid_a: tuple[int, int], grid_b: tuple[int, int],
                      size_a: tuple[float, float], size_b: tuple[float, float]) -> tuple[Tensor, Tensor]:
    """(row, col) cells (integer or fractional) of the feature grids -> pixels (x, y) of the original images."""
    return cell_to_pixels(idx0, grid_a, size_a), cell_to_pixels(idx1, grid_b, size_b)


__all__ = ["extract_sparse_matches", "hard_relocalize", "soft_relocalize", "matches_to_pixels"]
