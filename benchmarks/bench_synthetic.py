"""Benchmark of the synthetic generator: 640x480 render time and tiny/small generation times.

``python -m benchmarks.bench_synthetic [--sizes tiny,small] [--out DIR]``  (set OMP_NUM_THREADS=1 to
measure on one core). Prints wall and CPU seconds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from datasets import synthetic as S


def bench_render(size: str = "small", n: int = 12) -> dict[str, float]:
    """Median wall/CPU seconds of one 640x480 database-like view of a ``size`` building."""
    scene = S.build_scene(0, size)
    cam = S.cutout_camera(640, 480)
    scan = scene.scans[len(scene.scans) // 2]
    S.render(scene, cam, S.camera_pose(scan.center, 0))  # warm-up (texture atlas)
    wall, cpu = [], []
    for k in range(n):
        pose = S.camera_pose(scan.center, 360.0 * k / n, 0)
        t, c = time.perf_counter(), time.process_time()
        S.render(scene, cam, pose)
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return {"boxes": len(scene.boxes), "wall_s": statistics.median(wall), "cpu_s": statistics.median(cpu)}


def bench_generate(size: str, out: Path) -> dict[str, float]:
    """Wall/CPU seconds of a full (forced) generation."""
    t, c = time.perf_counter(), time.process_time()
    ds = S.generate(out / size, seed=0, size=size, force=True)
    return {"wall_s": time.perf_counter() - t, "cpu_s": time.process_time() - c, **ds.counts}


def main() -> None:
    """Run the benchmarks and print a table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="tiny,small")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    r = bench_render()
    print(f"render 640x480 ({r['boxes']} boxes): {r['wall_s']:.3f} s wall, {r['cpu_s']:.3f} s CPU (median)")
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        for size in [s for s in args.sizes.split(",") if s]:
            g = bench_generate(size, out)
            print(f"generate {size}: {g['wall_s']:.1f} s wall, {g['cpu_s']:.1f} s CPU; "
                  f"{g['db_images']} db images, {g['queries']} queries, {g['train_images']} train images")


if __name__ == "__main__":
    main()
