"""Loader of the official MatConvNet NetVLAD struct files, on a reduced file written here."""

import numpy as np
import torch
import torch.nn.functional as F
from scipy.io import savemat

from retrieval.mat_loader import load_netvlad_mat, save_netvlad_mat
from retrieval.netvlad import netvlad_reference

# VGG16 layout (29 layers: 13 conv, 12 relu, 4 pool), tiny channel counts
CFG = [3, 3, "M", 4, 4, "M", 4, 4, 4, "M", 5, 5, 5, "M", 6, 6, 6]


def _cell(arrays):
    c = np.empty(len(arrays), dtype=object)
    for i, a in enumerate(arrays):
        c[i] = a
    return c


def _write_reduced_mat(path, K=3, out_dim=5, seed=0):
    rng = np.random.default_rng(seed)
    layers, convs = [], []
    cin = 3
    n_conv = sum(1 for v in CFG if v != "M")
    seen = 0
    for v in CFG:
        if v == "M":
            layers.append({"name": "pool", "type": "pool", "method": "max", "pool": np.array([2.0, 2.0]),
                           "stride": np.array([2.0, 2.0]), "pad": np.zeros(4), "weights": _cell([])})
            continue
        w = rng.standard_normal((3, 3, cin, v)).astype(np.float32) * 0.3  # H x W x IN x OUT
        b = rng.standard_normal(v).astype(np.float32) * 0.1
        layers.append({"name": f"conv{seen}", "type": "conv", "weights": _cell([w, b]),
                       "pad": np.ones(4), "stride": np.array([1.0, 1.0])})
        convs.append((w, b))
        seen += 1
        if seen < n_conv:
            layers.append({"name": "relu", "type": "relu", "weights": _cell([])})
        cin = v
    assert len(layers) == 29
    D = cin
    assign = rng.standard_normal((1, 1, D, K)).astype(np.float32) * 3
    neg_c = rng.standard_normal((D, K)).astype(np.float32) * 0.3
    wh = rng.standard_normal((1, 1, D * K, out_dim)).astype(np.float32)
    bh = rng.standard_normal(out_dim).astype(np.float32)
    layers += [{"name": "preL2", "type": "normalize", "weights": _cell([])},
               {"name": "vlad:core", "type": "custom", "weights": _cell([assign, neg_c])},
               {"name": "vlad:intranorm", "type": "custom", "weights": _cell([])},
               {"name": "vlad:L2", "type": "custom", "weights": _cell([])},
               {"name": "WPCA", "type": "conv", "weights": _cell([wh, bh]), "pad": np.zeros(4),
                "stride": np.array([1.0, 1.0])},
               {"name": "L2", "type": "custom", "weights": _cell([])}]
    arr = np.empty(len(layers), dtype=object)
    for i, d in enumerate(layers):
        arr[i] = d
    avg = np.array([120.0, 110.0, 100.0], np.float32).reshape(1, 1, 3)
    savemat(str(path), {"net": {"layers": arr, "meta": {"normalization": {"averageImage": avg}}}})
    return convs, assign[0, 0], neg_c, wh[0, 0], bh, avg.reshape(3)


def _expected(img, convs, assign, neg_c, wh, bh, avg):
    """Independent forward pass of the official network (numpy weights, functional torch ops)."""
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() - torch.from_numpy(avg).view(1, 3, 1, 1)
    ci = 0
    for v in CFG:
        if v == "M":
            x = F.max_pool2d(x, 2, 2)
            continue
        w, b = convs[ci]
        x = F.conv2d(x, torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1))), torch.from_numpy(b), padding=1)
        ci += 1
        if ci < len(convs):
            x = F.relu(x)
    x = F.normalize(x, dim=1)[0].reshape(x.shape[1], -1).numpy()
    vlad = netvlad_reference(x, assign.T, -neg_c.T, order="dk", normalize_input=False)  # index d*K + k
    y = vlad @ wh + bh
    return y / np.linalg.norm(y)


def test_mat_loader_matches_independent_forward(tmp_path):
    path = tmp_path / "reduced_struct.mat"
    convs, assign, neg_c, wh, bh, avg = _write_reduced_mat(path)
    model = load_netvlad_mat(path)
    assert model.output_dim == 5 and model.netvlad.num_clusters == 3 and model.netvlad.dim == 6
    np.testing.assert_allclose(model.mean_rgb.view(3).numpy(), avg)
    img = np.random.default_rng(1).uniform(0, 255, (48, 40, 3)).astype(np.float32)
    with torch.no_grad():
        out = model(torch.from_numpy(img).permute(2, 0, 1)[None])[0].numpy()
    np.testing.assert_allclose(out, _expected(img, convs, assign, neg_c, wh, bh, avg), atol=2e-4)


def test_mat_round_trip(tmp_path):
    path = tmp_path / "reduced_struct.mat"
    _write_reduced_mat(path, seed=3)
    m1 = load_netvlad_mat(path)
    save_netvlad_mat(tmp_path / "again.mat", m1)
    m2 = load_netvlad_mat(tmp_path / "again.mat")
    x = torch.rand(1, 3, 32, 32) * 255
    with torch.no_grad():
        torch.testing.assert_close(m1(x), m2(x))
