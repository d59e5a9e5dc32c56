"""Synthetic indoor RGB-D buildings with exact ground truth: the project's test world and demo.

``python -m datasets.synthetic --out DIR --seed N [--size tiny|small|medium|inloc-size] [--preview]``

``inloc-size`` is a small building (two scans of 12 cutouts) at the real InLoc image sizes: 1600 x 1200
database cutouts (60 deg) and twelve 4032 x 3024 queries with iPhone 7 intrinsics (f = 3136 px), for
the pipeline's accuracy and cost at InLoc sizes (``benchmarks/bench_localize.py inloc-size``).

World frame: metres, **z up**, floor of the ground storey at z = 0; the building is a row of
rooms on both sides of a corridor running along +x (storey ``k`` has its floor at z = 3 k).
Cameras follow ``localize.core.geometry`` (x right, y down, z forward; poses WORLD-TO-CAMERA; COLMAP
pixel centres). Cutout yaw is measured in the scan frame about +z from the scan's +x axis;
positive pitch looks up.

Output layout (all names relative to the folder they are listed in)::

    DIR/db/                    plain RGB-D database folder (datasets.rgbd_folder), depth_scale 1000,
                               names 'FL1/000/SYN_cutout_000_30_0.jpg'
    DIR/inloc/                 the same cutouts in InLoc's native layout (datasets.inloc):
                               cutouts/FL1/000/SYN_cutout_000_30_0.jpg(.mat, XYZcut in the scan frame),
                               alignments/FL1/transformations/SYN_trans_000.txt (P_after scan -> world)
    DIR/queries/               plain RGB-D folder of the queries (images/, depth/, poses.txt, cameras.txt)
    DIR/queries/queries_with_intrinsics.txt   query list 'query_0000.jpg MODEL W H params'
    DIR/queries/poses_gt.txt   ground-truth poses file (world-to-camera)
    DIR/queries/queries_meta.json  per query: room, appearance, occluder, best database image + covisibility
    DIR/train/                 plain RGB-D folder of training renders (a *different* building, same size)
    DIR/pairs/train_pairs.csv, DIR/pairs/val_pairs.csv
                               NCNet pair layout 'source_image,target_image,class,flip'; paths relative
                               to DIR; class 1 = positive (same place, >= 30 % co-visible both ways),
                               class 0 = negative (different rooms); flip always 0; the validation
                               split holds out whole training places (anchors)
    DIR/scene.json             the boxes of the database-time building (for debugging/plots)
    DIR/preview.png            (--preview) contact sheet of database and query images
    DIR/manifest.json          written last: parameters, counts, sha256 of every file

Query-time changes: furniture flagged movable is moved or removed, objects are added, a
person-like occluder may stand in front of the camera, and the illumination / colour / noise /
blur differ. Every query is checked to see >= ``min_query_covis`` of its pixels in some database
image (depth-checked) at an apparent scale within ``max_query_scale_ratio`` of that image (as
for a query taken from about the distance the building was scanned from), else it is resampled.
"""

from datasets.inloc import cutout_camera
from datasets.synthetic.appearance import Appearance, finish_image, random_appearance
from datasets.synthetic.building import build_scene
from datasets.synthetic.changes import person_occluder, scene_variant
from datasets.synthetic.config import (
    BUILDING,
    DEPTH_SCALE,
    GENERATOR_VERSION,
    SIZES,
    SURFACE_WEAR,
    SizeConfig,
    camera_pose,
)
from datasets.synthetic.generation import ensure_dataset, generate
from datasets.synthetic.manifest import SyntheticDataset, is_complete, read_manifest
from datasets.synthetic.raycast import Box, CompiledScene, Illumination, Lamp, Surface
from datasets.synthetic.rendering import render
from datasets.synthetic.sampling import texture_fraction
from datasets.synthetic.scene import Room, Scan, Scene
from datasets.synthetic.views import (
    View,
    apparent_scale,
    gt_correspondences,
    view_covisibility,
)

__all__ = [
    "BUILDING", "DEPTH_SCALE", "GENERATOR_VERSION", "SIZES", "SURFACE_WEAR", "Appearance", "Box", "CompiledScene",
    "Illumination", "Lamp", "Room", "Scan", "Scene", "SizeConfig", "Surface", "SyntheticDataset", "View",
    "apparent_scale", "build_scene", "camera_pose", "cutout_camera", "ensure_dataset", "finish_image", "generate",
    "gt_correspondences", "is_complete", "person_occluder", "random_appearance", "read_manifest", "render",
    "scene_variant", "texture_fraction", "view_covisibility",
]
