"""Pose stage: lifting of DB pixels to 3D, PnP-RANSAC (pycolmap / OpenCV), InLoc candidates, DensePV.

Modules: ``pose.lifting`` (DB pixels -> world points), ``pose.pnp`` (``estimate_pose`` ->
``PoseResult``), ``pose.candidates`` (``estimate_candidates``, ``choose_pose``, cache records),
``pose.densepv`` (``densepv_score``, ``order_by_densepv``, ``point_source``, ``save_render_debug``),
``pose.verify_shortlist`` (spatial verification of retrieval shortlists), ``pose.estimate`` (CLI
``python -m pose.estimate``).
All poses are WORLD-TO-CAMERA; pixels follow COLMAP (top-left pixel centre = (0.5, 0.5)).
"""
