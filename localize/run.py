"""End-to-end localization: retrieval -> verification -> NCNet matching -> PnP candidates -> DensePV.

``python -m localize.run --query-dir DIR --db DB [--db-format auto|rgbd|tum|inloc] ...`` or
``python -m localize.run --demo``. The stages live in ``localize.pipeline.stages`` (run order), the
presets in ``localize.pipeline.presets``. Each stage's results go to ``<export-dir>/<stage>-<hash>.h5``
(``localize.core.cache``): a rerun with the same configuration recomputes nothing, a changed stage
configuration recomputes that stage and the ones after it. Writes ``poses.txt`` (world-to-camera,
8 columns), ``top1.txt`` (``query db`` per localized query: the chosen pose's database image) and
``log.jsonl`` (one JSON object per query). ``--pairs FILE`` takes the shortlists from a pairs file
(hloc's ``q r`` lines, or with scores) instead of retrieval; ``--export-hloc DIR`` writes the run's
pairs, matches and global descriptors in hloc's layout (``localize.hloc``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from datasets.database import DB_FORMATS, load_database_checked
from datasets.queries import list_query_images
from datasets.synthetic import ensure_dataset
from localize.core.cache import export_lock, file_fingerprint
from localize.core.config import positive_float, positive_int
from localize.core.errors import ConfigError, DatabaseError, InputError, OutputError
from localize.core.formats import atomic_write, read_pairs, write_poses, write_top1
from localize.core.hloc import NAME_STYLES, resolve_pairs
from localize.core.records import MAX_MEGAPIXELS_ENV
from localize.core.threads import apply_thread_budget, available_cores
from localize.evaluate_inloc import main as evaluate
from localize.hloc import export_run
from localize.pipeline import stages
from localize.pipeline.context import QueryLog, RunContext
from localize.pipeline.executors import Executor, LocalExecutor, make_executor
from localize.pipeline.presets import CONFS, PipelineConfig, build_config, resolve_conf
from localize.pipeline.visualize import plot_query_matches, write_cameras_ply
from matching.checkpoint import load_checkpoint_file

logger = logging.getLogger("localize.run")


@dataclass
class RunSummary:
    """Counts and output paths of a run."""

    num_queries: int
    num_localized: int
    failures: dict[str, str]
    poses_path: Path
    log_path: Path
    top1_path: Path
    db_skipped: dict[str, str] = field(default_factory=dict)  # database images left out, with the reason


def main(conf: str | dict[str, Any] | PipelineConfig, query_dir: str | Path, db: str | Path, export_dir: str | Path,
         db_format: str = "rgbd", queries_list: str | Path | None = None, device: str = "cpu", plot: bool = False,
         save_renders: bool = False, executor: Executor | None = None, pairs: str | Path | None = None,
         name_style: str = "inloc", export_hloc: str | Path | None = None) -> RunSummary:
    """Run all stages for the queries of ``query_dir`` against ``db``; write poses.txt, top1.txt and log.jsonl.

    ``pairs``: a pairs file whose names (in ``name_style``) replace retrieval; PairsError (an InputError)
    naming the first unresolved name when nothing resolves. ``export_hloc``: folder for ``localize.hloc.export_run``.
    """
    conf = build_config(conf)
    export_dir = Path(export_dir)
    check_export_dir(export_dir, [Path(db), Path(query_dir)], [Path(f) for f in (queries_list, pairs) if f])
    if conf.matching.weights:
        load_checkpoint_file(conf.matching.weights)  # a refused or unreadable weight file stops the run before work
    with export_lock(export_dir):
        return _run(conf, query_dir, db, export_dir, db_format, queries_list, device, plot, save_renders, executor,
                    pairs, name_style, export_hloc)


OUTPUT_NAMES = ("poses.txt", "top1.txt", "log.jsonl", "scene.ply", "plots", "renders", ".lock")


def check_export_dir(export_dir: Path, input_dirs: Sequence[Path], input_files: Sequence[Path] = ()) -> None:
    """OutputError when the export folder is, or lies inside, an input folder, or when an output it writes
    (poses.txt, log.jsonl, plots/, ...) would be an input folder or file: outputs never overwrite inputs."""
    out = export_dir.resolve()
    for d in input_dirs:
        d = d.resolve()
        if out == d or d in out.parents:
            raise OutputError(f"--export-dir {export_dir} is {'the' if out == d else 'inside the'} input folder {d}: "
                              f"its outputs would overwrite or mix with the inputs; choose another folder")
        if out in d.parents and d.relative_to(out).parts[0] in OUTPUT_NAMES:
            raise OutputError(f"--export-dir {export_dir} would overwrite the input folder {d}; choose another folder")
    for f in input_files:
        if f.resolve().parent == out and (f.name in OUTPUT_NAMES or f.suffix == ".h5"):
            raise OutputError(f"--export-dir {export_dir} would overwrite the input file {f}; choose another folder")


def _run(conf: PipelineConfig, query_dir: str | Path, db: str | Path, export_dir: Path, db_format: str,
         queries_list: str | Path | None, device: str, plot: bool, save_renders: bool,
         executor: Executor | None, pairs: str | Path | None, name_style: str,
         export_hloc: str | Path | None) -> RunSummary:
    """``main`` once the export folder is checked and locked."""
    t_start = time.time()
    database, db_skipped = load_database_checked(db, db_format)
    queries = list_query_images(query_dir, queries_list, db_format)
    logger.info("%d database images (%d skipped), %d queries", len(database), len(db_skipped), len(queries))
    logs = {q.name: QueryLog(q.name) for q in queries}
    for q in queries:
        if q.error:
            logs[q.name].fail("input", q.error)
    external, pairs_id = None, None
    if pairs is not None:
        try:
            raw = read_pairs(pairs)
        except ValueError as e:
            raise InputError(str(e)) from e
        external = resolve_pairs(raw, [q.name for q in queries], database, pairs, name_style)
        pairs_id = f"{file_fingerprint(pairs)}:{name_style}"
    ctx = RunContext(conf=conf, database=database, queries=[q for q in queries if not q.error],
                     export_dir=export_dir, db_spec=(str(Path(db).resolve()), db_format),
                     dataset_id={"db": str(Path(db).resolve()), "db_format": db_format,
                                 "queries": str(Path(query_dir).resolve())},
                     device=device, executor=executor or LocalExecutor(), logs=logs, pairs=external,
                     pairs_id=pairs_id)
    scache, shortlists = stages.shortlist(ctx)
    vcache, shortlists = stages.verify(ctx, scache, shortlists)
    mcache = stages.match(ctx, shortlists)
    pcache = stages.pose_candidates(ctx, shortlists, mcache, vcache)
    dcache = stages.densepv(ctx, pcache, export_dir / "renders" if save_renders else None)
    poses = stages.choose(ctx, pcache, dcache)
    poses_path, log_path, top1_path = export_dir / "poses.txt", export_dir / "log.jsonl", export_dir / "top1.txt"
    write_poses(poses_path, poses)
    write_top1(top1_path, poses)
    with atomic_write(log_path) as f:
        for q in queries:
            f.write(json.dumps(logs[q.name].to_json()) + "\n")
        for name, why in sorted(db_skipped.items()):
            f.write(json.dumps({"database_image": name, "status": "skipped", "errors": [why]}) + "\n")
    if plot:
        for q in tqdm([q for q in ctx.queries if q.name in poses], desc="plots", unit="query"):
            plot_query_matches(export_dir / "plots" / (q.name.replace("/", "_") + ".png"), q, database, mcache,
                               logs[q.name])
        write_cameras_ply(export_dir / "scene.ply", database, {n: e.pose for n, e in poses.items()})
    if export_hloc is not None:
        export_run(ctx, shortlists, mcache, export_hloc, name_style)
    failures = {q.name: "; ".join(logs[q.name].errors) or "no pose" for q in queries if q.name not in poses}
    summary = RunSummary(len(queries), len(poses), failures, poses_path, log_path, top1_path, db_skipped)
    print_summary(summary, logs, time.time() - t_start)
    return summary


def print_summary(s: RunSummary, logs: dict[str, QueryLog], seconds: float) -> None:
    """Summary table: counts, mean time per stage, failed queries with reasons."""
    mean = {st: np.mean([L.times[st] for L in logs.values() if st in L.times] or [0.0]) for st in stages.STAGES}
    print(f"\nlocalized {s.num_localized}/{s.num_queries} queries in {seconds:.1f} s "
          f"(mean s/query: " + ", ".join(f"{st} {mean[st]:.3f}" for st in stages.STAGES) + ")")
    if s.failures:
        print(f"{len(s.failures)} failed:")
        for n, why in sorted(s.failures.items()):
            print(f"  {n}: {why}")
    if s.db_skipped:
        print(f"{len(s.db_skipped)} database images skipped:")
        for n, why in sorted(s.db_skipped.items()):
            print(f"  {n}: {why}")
    print(f"poses: {s.poses_path}\ntop-1: {s.top1_path}\nlog:   {s.log_path}")


def run_demo(out: Path, conf_name: str = "default", device: str = "cpu", size: str = "small",
             plot: bool = False) -> float:
    """Generate (once) the synthetic building, localize its queries, print the evaluation table."""
    data = ensure_dataset(out / "data", seed=0, size=size)
    conf = resolve_conf(conf_name)
    print("configuration:", json.dumps(conf.to_dict(), indent=1))
    s = main(conf, data / "queries" / "images", data / "db", out / "export", "rgbd",
             data / "queries" / "queries_with_intrinsics.txt", device, plot)
    res = evaluate(data / "queries" / "poses_gt.txt", s.poses_path, gt_format="poses", top1_path=s.top1_path,
                   json_path=out / "export" / "evaluation.json", plot_path=out / "export" / "error_curves.png")
    return res["all"].recall[0]


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m localize.run``."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo", action="store_true", help="generate the synthetic 'small' building and localize it")
    p.add_argument("--query-dir", help="folder of query images")
    p.add_argument("--db", help="database (plain RGB-D folder, TUM sequence or InLoc database)")
    p.add_argument("--db-format", choices=DB_FORMATS, default="rgbd")
    p.add_argument("--queries-list", help="query list with intrinsics: 'name MODEL W H params...'")
    p.add_argument("--export-dir", default=None, help="outputs and cache (default outputs/run or outputs/demo)")
    p.add_argument("--conf", default="default", choices=sorted(CONFS))
    p.add_argument("--top-k", type=positive_int, default=None, help="shortlist size (overrides the preset)")
    p.add_argument("--pairs", default=None,
                   help="shortlists from this pairs file ('q r' lines as hloc writes them, or 'q r score'): "
                        "no retrieval; the first --top-k per query are verified and matched as usual")
    p.add_argument("--name-style", choices=NAME_STYLES, default="inloc",
                   help="names in --pairs / --export-hloc: 'inloc' = the project's (database relative to cutouts/ "
                        "or the database's images, queries relative to --query-dir), 'hloc' = relative to the InLoc "
                        "root ('database/cutouts/...', 'query/iphone7/...')")
    p.add_argument("--export-hloc", default=None, metavar="DIR",
                   help="also write pairs.txt, features.h5, matches.h5 (and global-feats.h5) in hloc's layout")
    p.add_argument("--ncnet-weights", help="NCNet checkpoint (official .pth.tar layout)")
    p.add_argument("--netvlad-weights", help="NetVLAD .mat (Pitts30K_struct.mat layout)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--store-db-features", action="store_true",
                   help="keep database images' matching features in the export folder (float16, db-features-*.parts/): "
                        "later runs and queries read them instead of recomputing them")
    p.add_argument("--plot", action="store_true", help="PNG per query and scene.ply with camera centres")
    p.add_argument("--save-renders", action="store_true", help="keep DensePV renderings (export-dir/renders)")
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="where per-item work runs: in this process, or Ray tasks/actors (optional extra [ray])")
    p.add_argument("--ray-address", default=None, help="join this Ray cluster (default: start a local instance)")
    p.add_argument("--max-megapixels", type=positive_float, default=None,
                   help=f"refuse images larger than this many megapixels (default 40; env {MAX_MEGAPIXELS_ENV})")
    p.add_argument("--threads", type=positive_int, default=None,
                   help=f"one thread budget for torch, OpenCV, BLAS and the native pool (default: the available "
                        f"cores, here {available_cores()}, less those other processes keep busy at the start)")
    p.add_argument("--verbose", "-v", action="store_true")
    return p


def cli(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (exit 0 when the run completed, 2 for unusable arguments/database)."""
    p = build_parser()
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    apply_thread_budget(a.threads)
    if a.device.startswith("cuda"):
        import torch  # only to check the device: the stages import torch through their modules

        if not torch.cuda.is_available():
            p.error("--device cuda requested but CUDA is not available")
    if a.max_megapixels is not None:
        os.environ[MAX_MEGAPIXELS_ENV] = repr(a.max_megapixels)  # read by the image loader, workers included
    if a.demo:
        r = run_demo(Path(a.export_dir or "outputs/demo"), a.conf, a.device, plot=a.plot)
        print(f"\ndemo: {r:.1f}% of queries within (0.25 m, 10 deg)")
        return 0
    if not a.query_dir or not a.db:
        p.error("--query-dir and --db are required (or --demo)")
    try:
        conf = resolve_conf(a.conf, a.top_k, a.ncnet_weights, a.netvlad_weights, a.store_db_features)
    except ConfigError as e:
        p.error(str(e))
    print("configuration:", json.dumps(conf.to_dict(), indent=1))
    executor = make_executor(a.executor, **({"address": a.ray_address} if a.executor == "ray" else {}))
    try:
        main(conf, a.query_dir, a.db, a.export_dir or "outputs/run", a.db_format, a.queries_list, a.device, a.plot,
             a.save_renders, executor, a.pairs, a.name_style, a.export_hloc)
    except DatabaseError as e:
        print(f"error: unusable database {a.db}: {e}", file=sys.stderr)
        return 2
    except (InputError, OSError) as e:  # a refused weight file, a busy or unsafe export folder, an unreadable list
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
