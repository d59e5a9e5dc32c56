"""End-to-end localization benchmarks: TUM fr1_xyz split and the synthetic demo building.

python benchmarks/bench_localize.py tum [--conf default] [--max-queries N] [--out outputs/bench_tum]
python benchmarks/bench_localize.py synthetic [--size small] [--conf default]

TUM: database = even lines of frames.txt (50 frames, exported to the plain RGB-D folder),
queries = odd lines (49), calibrated pinhole intrinsics; prints % within (2 cm, 2 deg),
(5 cm, 5 deg) and median errors, plus seconds per query by stage and peak memory (RSS).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED = ROOT.parent / "shared" / "data"


def peak_rss_gb() -> float:
    """Peak resident memory of this process (GB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def prepare_tum_split(out: Path, max_queries: int | None = None) -> tuple[Path, Path, Path, Path]:
    """Export even frames as the database and odd frames as queries; returns (db, qdir, list, gt)."""
    from datasets.tum import TUM_FR1_CALIBRATED, export_rgbd_folder, read_tum_frames
    from localize.formats import write_poses, write_query_list

    root = SHARED / "tum_fr1_xyz"
    frames = read_tum_frames(root)
    db = out / "db"
    if not (db / "poses.txt").exists():
        export_rgbd_folder(root, db, frames[0::2])
    qdir = out / "queries"
    qdir.mkdir(parents=True, exist_ok=True)
    cams, gt = {}, {}
    for f in frames[1::2][:max_queries]:
        name = Path(f.rgb_file).name
        if not (qdir / name).exists():
            shutil.copyfile(root / f.rgb_file, qdir / name)
        cams[name], gt[name] = TUM_FR1_CALIBRATED, f.pose
    write_query_list(out / "queries.txt", cams)
    write_poses(out / "gt.txt", gt)
    return db, qdir, out / "queries.txt", out / "gt.txt"


def stage_times(log_path: Path) -> dict[str, float]:
    """Mean seconds per query by stage from log.jsonl."""
    rows = [json.loads(l) for l in log_path.read_text().splitlines()]
    keys = sorted({k for r in rows for k in r["time_s"]})
    return {k: sum(r["time_s"].get(k, 0.0) for r in rows) / max(len(rows), 1) for k in keys}


def bench_tum(args: argparse.Namespace) -> dict:
    """Localize the TUM odd frames against the even frames and score them."""
    from localize import run
    from localize.evaluate_inloc import main as evaluate

    out = Path(args.out or "outputs/bench_tum")
    db, qdir, qlist, gt = prepare_tum_split(out, args.max_queries)
    conf = run.resolve_conf(args.conf)
    t0 = time.time()
    run.main(conf, qdir, db, out / f"export-{args.conf}", "rgbd", qlist, args.device)
    wall = time.time() - t0
    thr = [(0.02, 2.0), (0.05, 5.0), (0.25, 10.0)]
    res = evaluate(gt, out / f"export-{args.conf}" / "poses.txt", gt_format="poses", thresholds=thr)["all"]
    doc = {"conf": args.conf, "queries": res.num_queries, "recall_2cm2deg": res.recall[0],
           "recall_5cm5deg": res.recall[1], "median_position_cm": 100 * res.median_position_m,
           "median_rotation_deg": res.median_rotation_deg, "wall_s": wall, "s_per_query": wall / res.num_queries,
           "stage_s_per_query": stage_times(out / f"export-{args.conf}" / "log.jsonl"), "peak_rss_gb": peak_rss_gb()}
    print(json.dumps(doc, indent=1))
    return doc


def bench_synthetic(args: argparse.Namespace) -> dict:
    """The demo building: recall and time per stage."""
    from localize import run

    t0 = time.time()
    r = run.run_demo(Path(args.out or f"outputs/bench_synthetic_{args.size}"), args.conf, args.device, args.size)
    out = Path(args.out or f"outputs/bench_synthetic_{args.size}") / "export"
    doc = {"size": args.size, "conf": args.conf, "recall_25cm10deg": r, "wall_s": time.time() - t0,
           "stage_s_per_query": stage_times(out / "log.jsonl"), "peak_rss_gb": peak_rss_gb()}
    print(json.dumps(doc, indent=1))
    return doc


def main() -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["tum", "synthetic"])
    p.add_argument("--conf", default="default")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-queries", type=int, default=None)
    p.add_argument("--size", default="small")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    {"tum": bench_tum, "synthetic": bench_synthetic}[a.what](a)


if __name__ == "__main__":
    main()
