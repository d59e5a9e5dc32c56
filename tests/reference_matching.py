"""Plain float64 reference implementations of NCNet formulas, independent of matching/ (no tests here)."""

from __future__ import annotations

import itertools

import numpy as np


def ref_l2norm(f: np.ndarray) -> np.ndarray:
    """[B, C, h, w] -> f / sqrt(sum_c f^2 + 1e-6)."""
    return f / np.sqrt((f ** 2).sum(axis=1, keepdims=True) + 1e-6)


def ref_correlation(fa: np.ndarray, fb: np.ndarray) -> np.ndarray:
    """c[b, 0, i, j, k, l] = sum_c fa[b, c, i, j] fb[b, c, k, l]."""
    return np.einsum("bcij,bckl->bijkl", fa, fb)[:, None]


def ref_mutual(c: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """c * (c / (max over A cells + eps)) * (c / (max over B cells + eps))."""
    max_a = c.max(axis=(2, 3), keepdims=True)
    max_b = c.max(axis=(4, 5), keepdims=True)
    return c * (c / (max_a + eps)) * (c / (max_b + eps))


def ref_conv4d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """Explicit sum over shifted slices: out[o, x] = b[o] + sum_{c, d} w[o, c, d + p] x[c, x + d]."""
    B, C, h1, w1, h2, w2 = x.shape
    O, _, k = w.shape[:3]
    p = k // 2
    xp = np.pad(x, [(0, 0), (0, 0)] + [(p, p)] * 4)
    out = np.zeros((B, O, h1, w1, h2, w2))
    for a, bb, c, d in itertools.product(range(k), repeat=4):
        sl = xp[:, :, a:a + h1, bb:bb + w1, c:c + h2, d:d + w2]
        out += np.einsum("oc,bcijkl->boijkl", w[:, :, a, bb, c, d], sl)
    if b is not None:
        out += b.reshape(1, O, 1, 1, 1, 1)
    return out


def ref_transpose(x: np.ndarray) -> np.ndarray:
    """Swap the (hA, wA) and (hB, wB) axis pairs."""
    return x.transpose(0, 1, 4, 5, 2, 3)


def ref_consensus(c: np.ndarray, weights: list[np.ndarray], biases: list[np.ndarray], symmetric: bool) -> np.ndarray:
    """N(c) (+ T(N(T(c))) when symmetric); N = [conv4d, ReLU]*."""
    def net(x: np.ndarray) -> np.ndarray:
        for w, b in zip(weights, biases):
            x = np.maximum(ref_conv4d(x, w, b), 0.0)
        return x
    out = net(c)
    if symmetric:
        out = out + ref_transpose(net(ref_transpose(c)))
    return out


def ref_maxpool4d(c: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Loop implementation: pooled values and full-resolution argmax indices [..., 4] (i, j, k, l)."""
    B, C, h1, w1, h2, w2 = c.shape
    out = np.zeros((B, C, h1 // k, w1 // k, h2 // k, w2 // k))
    arg = np.zeros(out.shape + (4,), dtype=np.int64)
    for bb, cc, i, j, m, n in itertools.product(range(B), range(C), range(h1 // k), range(w1 // k),
                                               range(h2 // k), range(w2 // k)):
        win = c[bb, cc, i * k:(i + 1) * k, j * k:(j + 1) * k, m * k:(m + 1) * k, n * k:(n + 1) * k]
        pos = np.unravel_index(np.argmax(win), win.shape)
        out[bb, cc, i, j, m, n] = win[pos]
        arg[bb, cc, i, j, m, n] = [i * k + pos[0], j * k + pos[1], m * k + pos[2], n * k + pos[3]]
    return out, arg


def ref_matches(c: np.ndarray) -> dict[tuple[int, int, int, int], float]:
    """{(iA, jA, iB, jB): score}: softmax-argmax in both directions, best score per distinct pair."""
    h1, w1, h2, w2 = c.shape
    m = c.reshape(h1 * w1, h2 * w2)
    out: dict[tuple[int, int, int, int], float] = {}

    def add(a: int, b: int, s: float) -> None:
        key = (a // w1, a % w1, b // w2, b % w2)
        out[key] = max(out.get(key, -1.0), s)

    for bcell in range(h2 * w2):
        col = np.exp(m[:, bcell] - m[:, bcell].max())
        col /= col.sum()
        add(int(np.argmax(col)), bcell, float(col.max()))
    for acell in range(h1 * w1):
        row = np.exp(m[acell] - m[acell].max())
        row /= row.sum()
        add(acell, int(np.argmax(row)), float(row.max()))
    return out
