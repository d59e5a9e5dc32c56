"""Rendering of one view of a building: ray-cast colour, z-depth (metres) and world XYZ."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from datasets.synthetic.appearance import Appearance, finish_image
from datasets.synthetic.raycast import (
    Box,
    CompiledScene,
    Illumination,
    cast_rays,
    shade,
)
from datasets.synthetic.scene import Scene
from localize.core.geometry import Camera, Pose


def render(scene: Scene | CompiledScene, camera: Camera, pose: Pose, illumination: Illumination | None = None,
           boxes: Sequence[Box] | None = None, appearance: Appearance | None = None,
           rng: np.random.Generator | None = None, return_ids: bool = False):
    """Ray-cast a view -> (rgb uint8 H x W x 3, z-depth H x W metres NaN = none, world XYZ H x W x 3 [, box ids]).

    ``boxes`` renders another state of the building (e.g. ``scene_variant``); ``appearance`` adds
    image-level changes (its illumination is used unless ``illumination`` is given)."""
    cs = scene if isinstance(scene, CompiledScene) else scene.compile(boxes)
    app = appearance or Appearance()
    il = illumination or app.illumination
    ids, _, dirs = cast_rays(cs, camera, pose)
    rgb, depth, xyz = shade(cs, ids, dirs, pose.center, float(np.mean(camera.focal)), il)
    img = finish_image(rgb, app, rng)
    return (img, depth, xyz, ids) if return_ids else (img, depth, xyz)
