"""Conventions: quaternions vs scipy, world-to-camera poses, COLMAP pixel centres, camera scaling."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from localize.core.geometry import (
    Camera,
    Pose,
    depth_to_world,
    look_at,
    matrix_to_quat_wxyz,
    pose_error,
    project_world,
    quat_wxyz_to_matrix,
    xyzw_to_wxyz,
)


def test_quaternion_matches_scipy():
    rng = np.random.default_rng(0)
    for _ in range(200):
        r = Rotation.random(random_state=rng)
        q_xyzw = r.as_quat()
        R = quat_wxyz_to_matrix(xyzw_to_wxyz(q_xyzw))
        np.testing.assert_allclose(R, r.as_matrix(), atol=1e-12)
        q = matrix_to_quat_wxyz(R)
        assert q[0] >= 0
        ref = xyzw_to_wxyz(q_xyzw) * np.sign(q_xyzw[3] or 1)
        np.testing.assert_allclose(q, ref, atol=1e-9)


def test_pose_world_to_camera_and_center():
    R = Rotation.from_euler("xyz", [10, -20, 30], degrees=True).as_matrix()
    C = np.array([1.0, 2.0, 3.0])
    pose = Pose.from_cam_to_world(R, C)
    np.testing.assert_allclose(pose.center, C)
    np.testing.assert_allclose(pose.transform(C[None]), [[0, 0, 0]], atol=1e-12)
    # a point 2 m in front of the camera (camera +z in world is R[:, 2])
    X = C + 2 * R[:, 2]
    np.testing.assert_allclose(pose.transform(X[None]), [[0, 0, 2]], atol=1e-12)
    np.testing.assert_allclose((pose * pose.inverse()).matrix, np.eye(4), atol=1e-12)
    q, t = pose.qvec, pose.t
    np.testing.assert_allclose(Pose.from_qvec_tvec(q, t).matrix, pose.matrix, atol=1e-12)
    np.testing.assert_allclose(Pose.from_matrix(pose.P).matrix, pose.matrix)


def test_tum_conversion():
    # TUM: camera-to-world translation + quaternion (x, y, z, w)
    r = Rotation.from_euler("zyx", [40, 5, -7], degrees=True)
    t = [0.3, -1.0, 1.5]
    pose = Pose.from_tum(t, r.as_quat())
    np.testing.assert_allclose(pose.center, t)
    np.testing.assert_allclose(pose.R, r.as_matrix().T, atol=1e-12)


def test_projection_pixel_convention():
    cam = Camera.pinhole(640, 480, 500.0)
    # the optical axis hits the principal point (320, 240) = the corner shared by 4 centre pixels
    uv, ok = cam.project(np.array([[0, 0, 3.0]]))
    np.testing.assert_allclose(uv, [[320, 240]])
    assert ok.all()
    grid = cam.pixel_grid()
    np.testing.assert_allclose(grid[0, 0], [0.5, 0.5])
    np.testing.assert_allclose(grid[479, 639], [639.5, 479.5])


def test_known_points_project_and_backproject():
    cam = Camera("OPENCV", 320, 240, (300, 310, 161, 119, 0.05, -0.01, 0.001, 0.002))
    pose = look_at([0.5, -2, 1.2], [0, 0, 1.0])
    rng = np.random.default_rng(1)
    X = rng.uniform([-1, -1, 0.5], [1, 1, 1.5], size=(100, 3))
    uv, z, inside = project_world(X, cam, pose)
    Xc = pose.transform(X)
    np.testing.assert_allclose(z, Xc[:, 2])
    back = cam.backproject(uv, z)
    np.testing.assert_allclose(back, Xc, atol=1e-8)
    # independent pinhole check (no distortion) with K
    cam0 = Camera.pinhole(320, 240, 300, 310, 161, 119)
    uv0, _ = cam0.project(Xc)
    h = (cam0.K @ Xc.T).T
    np.testing.assert_allclose(uv0, h[:, :2] / h[:, 2:], atol=1e-9)


def test_camera_scaling_keeps_rays():
    cam = Camera.pinhole(4032, 3024, 3136.0)
    small = cam.scaled(1008, 756)
    assert small.focal == (784.0, 784.0) and small.principal_point == (504.0, 378.0)
    # a pixel corner maps to the same ray after scaling
    ray = cam.backproject(np.array([[4032.0, 0.0]]))
    ray2 = small.backproject(np.array([[1008.0, 0.0]]))
    np.testing.assert_allclose(ray, ray2)
    aniso = Camera.pinhole(100, 100, 50.0).scaled(200, 100)
    assert aniso.model == "PINHOLE" and aniso.focal == (100.0, 50.0)
    with pytest.raises(ValueError):
        Camera("PINHOLE", 10, 10, (1, 2, 3))


def test_depth_to_world_roundtrip_and_pose_error():
    cam = Camera.pinhole(64, 48, 60.0)
    pose = look_at([0, 0, 1], [3, 1, 1])
    depth = np.full((48, 64), 2.0)
    depth[0, 0] = np.nan
    xyz = depth_to_world(depth, cam, pose)
    assert np.isnan(xyz[0, 0]).all()
    uv, z, inside = project_world(xyz[1:].reshape(-1, 3), cam, pose)
    np.testing.assert_allclose(z, 2.0)
    np.testing.assert_allclose(uv, cam.pixel_grid()[1:].reshape(-1, 2), atol=1e-9)
    moved = Pose.from_cam_to_world(
        pose.inverse().R @ Rotation.from_euler("z", 5, degrees=True).as_matrix(), pose.center + [0.3, 0.4, 0])
    dp, dr = pose_error(moved, pose)
    assert abs(dp - 0.5) < 1e-9 and abs(dr - 5.0) < 1e-6


def test_full_opencv_matches_cv2_and_undistort_is_robust():
    import cv2

    # TUM fr1 calibration: strong distortion (k2 = -0.95, k3 = 1.16)
    cam = Camera("FULL_OPENCV", 640, 480, (517.3, 516.5, 318.6, 255.3, 0.2624, -0.9531, -0.0054, 0.0026, 1.1633, 0, 0, 0))
    rng = np.random.default_rng(0)
    X = np.c_[rng.uniform(-0.5, 0.5, (200, 2)), rng.uniform(1, 2, 200)]
    uv, _ = cam.project(X)
    K = cam.K.copy()
    ref, _ = cv2.projectPoints(X, np.zeros(3), np.zeros(3), K, cam.distortion)
    np.testing.assert_allclose(uv, ref.reshape(-1, 2), atol=1e-6)
    back = cam.backproject(uv, X[:, 2])
    ok = np.isfinite(back).all(1)
    assert ok.mean() > 0.9
    np.testing.assert_allclose(back[ok], X[ok], atol=1e-6)
    # the image corners must not overflow: finite or NaN, never inf/garbage
    corners = cam.backproject(np.array([[0.0, 0.0], [640.0, 480.0]]))
    assert not np.isinf(corners).any()


def test_depth_to_world_with_distortion_equals_per_pixel_backprojection():
    """The cached per-camera rays give exactly the per-pixel back-projection, for every depth map of that camera."""
    cam = Camera("FULL_OPENCV", 64, 48, (60.0, 61.0, 31.0, 25.0, 0.2624, -0.9531, -0.0054, 0.0026, 1.1633, 0, 0, 0))
    pose = look_at([0, 0, 1], [3, 1, 1])
    rng = np.random.default_rng(1)
    for _ in range(2):
        depth = rng.uniform(0.5, 3.0, (48, 64))
        depth[3, 5] = 0.0
        xyz = depth_to_world(depth, cam, pose)
        ref = pose.inverse().transform(cam.backproject(cam.pixel_grid().reshape(-1, 2), depth.reshape(-1)))
        ref[depth.reshape(-1) <= 0] = np.nan
        np.testing.assert_array_equal(xyz.reshape(-1, 3), ref)
    with pytest.raises(ValueError, match="depth map is 10x10"):
        depth_to_world(np.ones((10, 10)), cam, pose)
