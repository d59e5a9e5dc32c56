"""Pose stage: lifting of DB pixels to 3D, PnP-RANSAC (pycolmap / OpenCV), InLoc candidates, DensePV.

Modules: ``pose.lifting`` (DB pixels -> world points), ``pose.pnp`` (``estimate_pose`` ->
``PoseResult``), ``pose.candidates`` (``estimate_candidates``), ``pose.densepv`` (``densepv_score``,
``rerank_candidates``, ``save_render_debug``), ``pose.estimate`` (CLI ``python -m pose.estimate``).
All poses are WORLD-TO-CAMERA; pixels follow COLMAP (top-left pixel centre = (0.5, 0.5)).
"""
