"""Dense RootSIFT: triangular binning equals the explicit convolution, descriptor layout and invariances."""

import numpy as np
import torch
import torch.nn.functional as F

from matching.dense_sift import (
    _triangle_kernel,
    dense_rootsift,
    dense_rootsift_image,
    grid_centers,
    triangle_filter,
    window_means,
)


def test_triangle_filter_matches_explicit_convolution():
    for b in (4, 5, 8):
        x = torch.rand(2, 3, 23, 31, dtype=torch.float64)
        k = _triangle_kernel(b, x.device, x.dtype)
        p = b - 1
        ref = F.conv2d(F.pad(x.reshape(6, 1, 23, 31), (p, p, 0, 0)), k.view(1, 1, 1, -1))
        ref = F.conv2d(F.pad(ref, (0, 0, p, p)), k.view(1, 1, -1, 1)).reshape(2, 3, 23, 31)
        torch.testing.assert_close(triangle_filter(x, b), ref, rtol=1e-10, atol=1e-10)


def test_window_means_equal_average_pooling_of_each_plane():
    """Exactly avg_pool2d's numbers (features, refined matches and poses unchanged), with and without strips."""
    g = torch.Generator().manual_seed(0)
    for planes, side, size in ((37, 47, 15), (1, 61, 8), (8, 254, 8), (3, 20, 7), (2, 9, 9)):
        x = torch.rand(planes, side, side + 3, generator=g)
        ref = F.avg_pool2d(x[:, None], size, stride=1)[:, 0]
        assert torch.equal(window_means(x, size), ref), (planes, side, size)


def test_descriptor_shape_norm_and_grid():
    g = torch.rand(2, 1, 50, 70)
    d = dense_rootsift(g, bin_size=8, step=8)
    assert d.shape == (2, 128, 6, 8)
    torch.testing.assert_close(d.norm(dim=1), torch.ones(2, 6, 8), rtol=1e-4, atol=1e-4)
    assert (d >= 0).all()
    c = grid_centers(50, 70, 8)
    assert c.shape == (6, 8, 2) and tuple(c[0, 0]) == (4.0, 4.0) and tuple(c[1, 2]) == (20.0, 12.0)


def test_shift_equivariance_and_brightness_invariance():
    rng = np.random.default_rng(0)
    img = rng.random((64, 96)).astype(np.float32)
    img = (img + np.roll(img, 1, 0) + np.roll(img, 1, 1)) / 3
    a = dense_rootsift_image(img, 8, 4)
    b = dense_rootsift_image(np.roll(img, 8, axis=1), 8, 4)  # shifted by two grid steps
    # away from the wrap-around seam (descriptor support is about 46 px wide) the grid shifts by 2 cells
    np.testing.assert_allclose(a[:, 8:-8], b[:, 10:-6], atol=1e-5)
    c = dense_rootsift_image(0.5 * img + 0.2, 8, 4)  # affine brightness change
    np.testing.assert_allclose(a[4:-4, 4:-4], c[4:-4, 4:-4], atol=2e-2)


def test_descriptors_from_the_sampled_lattice_equal_the_full_filter(monkeypatch):
    """Filtering only the pixels the cell sampling reads gives the same descriptors bit for bit."""
    import matching.dense_sift as ds

    g = torch.Generator().manual_seed(1)
    cases = ((2, 61, 83, 8, 8), (1, 48, 64, 8, 4), (1, 37, 50, 12, 4), (2, 40, 41, 5, 5), (1, 33, 47, 4, 8))
    fast = []
    for b, h, w, bin_size, step in cases:
        img = torch.rand(b, 1, h, w, generator=g)
        fast.append(dense_rootsift(img, bin_size=bin_size, step=step, min_contrast=0.05))
        assert len(ds.sampled_residues(step / 2 - 0.5 + (np.arange(4) - 1.5) * bin_size, step)) < step
    monkeypatch.setattr(ds, "sampled_residues", lambda centres, period: list(range(period)))
    g = torch.Generator().manual_seed(1)
    for (b, h, w, bin_size, step), d in zip(cases, fast):
        img = torch.rand(b, 1, h, w, generator=g)
        assert torch.equal(d, dense_rootsift(img, bin_size=bin_size, step=step, min_contrast=0.05)), (h, w, step)


def test_sampled_residues_cover_floor_and_ceiling_and_integer_rounding():
    from matching.dense_sift import sampled_residues

    assert sampled_residues(np.array([3.5, -8.5]), 8) == [0, 3, 4, 7]
    assert sampled_residues(np.array([8.0]), 8) == [0, 1, 7]  # an integer coordinate may round down


def test_fast_descriptors_equal_exact_ones_up_to_rounding():
    """exact=False (OpenCV filter, channels-last normalisation) computes the same descriptors."""
    g = torch.Generator().manual_seed(2)
    for b, h, w, bin_size, step, min_contrast in ((2, 61, 83, 8, 4, 0.0), (1, 50, 70, 6, 8, 0.05), (1, 33, 47, 4, 8, 0.0)):
        img = torch.rand(b, 1, h, w, generator=g)
        exact = dense_rootsift(img, bin_size=bin_size, step=step, min_contrast=min_contrast)
        fast = dense_rootsift(img, bin_size=bin_size, step=step, min_contrast=min_contrast, exact=False)
        assert fast.shape == exact.shape
        torch.testing.assert_close(fast, exact, rtol=0, atol=1e-6)
        assert not torch.equal(fast, exact)  # the fast path was taken: a different order of operations
