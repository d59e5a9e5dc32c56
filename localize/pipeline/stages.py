"""The pipeline's stages in run order: shortlist -> verify -> match -> pose candidates -> DensePV -> choose.

Each stage reads what the stages before it produced, caches its results per query (or pair) in
``<export_dir>/<stage>-<hash>.h5`` keyed by its configuration and the caches it depends on, and
records failures in the queries' logs; a query that fails a stage is left out of the later ones.
Every entry also carries a fingerprint of the inputs it was computed from (query image content and
camera, the database records it used: image, depth files, pose, camera), so a changed input
recomputes exactly the entries that depend on it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from localize.core.cache import StageCache, content_fingerprint, file_fingerprint, fingerprint
from localize.core.config import to_dict
from localize.core.errors import PER_ITEM_ERRORS
from localize.core.formats import PoseEntry
from localize.core.records import Query, load_rgb
from localize.pipeline.context import RunContext
from localize.pipeline.workers import DensePVWorker, MatchWorker, PoseWorker
from pose.candidates import candidates_from_record, choose_pose
from pose.verify_shortlist import ShortlistVerifier, verify_shortlist
from retrieval import shortlist as shortlist_stage

logger = logging.getLogger("localize.run")

Shortlists = dict[str, list[tuple[str, float]]]


def _weights_key(weights: str | None) -> str | None:
    """Fingerprint of a weight file (None without one), so replaced weights never reuse a cache."""
    return file_fingerprint(weights) if weights else None


def query_fp(ctx: RunContext, q: Query) -> str:
    """Fingerprint of one query: its image content and its camera."""
    key = f"query:{q.name}"
    if key not in ctx.fps:
        ctx.fps[key] = fingerprint(content_fingerprint(q.path), q.camera.to_line() if q.camera else None)
    return ctx.fps[key]


def db_image_fp(ctx: RunContext, name: str) -> str:
    """Fingerprint of a database image's pixels only (what matching reads)."""
    rec = ctx.database.get(name)
    return content_fingerprint(rec.image_path) if rec is not None else "absent"


def db_fp(ctx: RunContext, name: str) -> str:
    """Fingerprint of one database record: image content, depth files, pose and camera."""
    key = f"db:{name}"
    if key not in ctx.fps:
        rec = ctx.database.get(name)
        if rec is None:
            ctx.fps[key] = "absent"
        else:
            pose = None if rec.pose is None else [*rec.pose.qvec.tolist(), *rec.pose.t.tolist()]
            ctx.fps[key] = fingerprint(name, db_image_fp(ctx, name), [content_fingerprint(p) for p in rec.depth_files],
                                       pose, rec.camera.to_line())
    return ctx.fps[key]


def database_fp(ctx: RunContext) -> str:
    """Fingerprint of the whole database (what retrieval ranks): every record's fingerprint."""
    if "database" not in ctx.fps:
        ctx.fps["database"] = fingerprint(sorted((n, db_fp(ctx, n)) for n in ctx.database))
    return ctx.fps["database"]


def _ranked_fp(ctx: RunContext, q: Query, names: Sequence[str]) -> str:
    """Fingerprint of work on one query and a list of database records (verification, pose candidates)."""
    return fingerprint(query_fp(ctx, q), [(n, db_fp(ctx, n)) for n in names])


def _pair_fp(ctx: RunContext, q: Query, db: str) -> str:
    """Fingerprint of one matched pair: the two images' contents (and the scales when the query is searched across scales)."""
    fp = fingerprint(content_fingerprint(q.path), db_image_fp(ctx, db))
    return fingerprint(fp, list(ctx.conf.scale_search.scales)) if q.name in ctx.scale_searched else fp


def _pose_fp(ctx: RunContext, shortlists: Shortlists, q: Query) -> str:
    """Fingerprint of a query's pose candidates (and DensePV scores): query and matched records.

    Remembered in ``ctx.fps`` for the stages after (``_known_pose_fp``)."""
    ctx.fps[f"pose:{q.name}"] = fingerprint(_ranked_fp(ctx, q, _matched_names(ctx, shortlists, q)),
                                            q.name in ctx.scale_searched)
    return ctx.fps[f"pose:{q.name}"]


def _known_pose_fp(ctx: RunContext, q: Query) -> str | None:
    """The pose-stage fingerprint of a query this run (None when it never reached that stage)."""
    return ctx.fps.get(f"pose:{q.name}")


def _put_ranked(cache: StageCache, name: str, ranked: Sequence[tuple[str, float]], value_key: str,
                seconds: float, fp: str) -> None:
    """Store a ranked list [(db name, value)] of one query (names as JSON, values as an array)."""
    cache.put(name, {"db_names": json.dumps([n for n, _ in ranked]),
                     value_key: np.array([v for _, v in ranked], dtype=np.float64), "time_s": np.float64(seconds)}, fp)


def _get_ranked(cache: StageCache, name: str, value_key: str) -> tuple[list[tuple[str, float]], float]:
    """A ranked list stored by ``_put_ranked`` and its seconds."""
    e = cache.get(name)
    return list(zip(json.loads(e["db_names"]), e[value_key].tolist())), float(e["time_s"])


def shortlist(ctx: RunContext) -> tuple[StageCache, Shortlists]:
    """1. Global-descriptor retrieval: the top_k database images per query (the first top_k of ``ctx.pairs`` when given)."""
    conf = ctx.conf.retrieval
    if ctx.pairs is not None:
        key = {"pairs": ctx.pairs_id, "top_k": conf.top_k, "dataset": ctx.dataset_id}
    else:
        key = {**to_dict(conf), "weights_sha1": _weights_key(conf.weights), "dataset": ctx.dataset_id}
    cache = StageCache(ctx.export_dir, "shortlist", key)
    fps = {q.name: fingerprint(query_fp(ctx, q), database_fp(ctx)) for q in ctx.queries}
    todo = [q for q in ctx.queries if not cache.has(q.name, fps[q.name])]
    if todo and ctx.pairs is not None:
        for q in todo:
            if not ctx.pairs.get(q.name):
                ctx.logs[q.name].fail("retrieval", "no pairs for this query in the pairs file")
                continue
            _put_ranked(cache, q.name, ctx.pairs[q.name][:conf.top_k], "scores", 0.0, fps[q.name])
        cache.finalize()
    elif todo:
        t0 = time.time()
        results = shortlist_stage.main(conf.method, list(ctx.database.values()), [(q.name, q.path) for q in todo],
                                       ctx.export_dir, conf.top_k, weights=conf.weights, device=ctx.device)
        dt = (time.time() - t0) / max(len(todo), 1)
        for q in todo:
            if q.name not in results:
                ctx.logs[q.name].fail("retrieval", f"cannot read or describe query image {q.path}")
                continue
            _put_ranked(cache, q.name, results[q.name], "scores", dt, fps[q.name])
        cache.finalize()
    out = {}
    for q in ctx.queries:
        if cache.has(q.name, fps[q.name]):
            out[q.name], ctx.logs[q.name].times["retrieval"] = _get_ranked(cache, q.name, "scores")
            ctx.logs[q.name].shortlist = out[q.name]
    return cache, out


def verify(ctx: RunContext, scache: StageCache, shortlists: Shortlists) -> tuple[StageCache, Shortlists]:
    """2. Spatial verification: each shortlist re-sorted by PnP inliers (skipped when ``verify`` is None).

    Queries without a camera keep the retrieval order.
    """
    conf = ctx.conf.verify
    if conf is None:
        return scache, shortlists
    cache = StageCache(ctx.export_dir, "verify", to_dict(conf), depends=[scache])
    fps = {q.name: _ranked_fp(ctx, q, [n for n, _ in shortlists[q.name]]) for q in ctx.queries if q.name in shortlists}
    todo = [q for q in ctx.queries if q.name in fps and not cache.has(q.name, fps[q.name]) and q.camera is not None]
    if todo:
        verifier = ShortlistVerifier(conf, ctx.database, ctx.device)
        for q in tqdm(todo, desc="verification", unit="query"):
            t0 = time.time()
            try:
                inliers = verifier.inliers(load_rgb(q.path), q.camera, [n for n, _ in shortlists[q.name]])
            except PER_ITEM_ERRORS as e:
                ctx.logs[q.name].fail("verify", f"{q.path}: {e}")
                continue
            _put_ranked(cache, q.name, verify_shortlist(shortlists[q.name], inliers), "inliers", time.time() - t0,
                        fps[q.name])
        cache.finalize()
    out = {}
    for q in ctx.queries:
        if q.name in fps and cache.has(q.name, fps[q.name]):
            out[q.name], ctx.logs[q.name].times["verify"] = _get_ranked(cache, q.name, "inliers")
            ctx.logs[q.name].verified = [(n, int(v)) for n, v in out[q.name]]
        elif q.name in shortlists:
            out[q.name] = shortlists[q.name]
    return cache, out


def _matched_names(ctx: RunContext, shortlists: Shortlists, q: Query) -> list[str]:
    """The database images matched with one query: the first ``pairs_per_query`` of its shortlist."""
    return [n for n, _ in shortlists.get(q.name, [])[:ctx.conf.pairs_per_query]]


def scale_searched_queries(ctx: RunContext, shortlists: Shortlists) -> set[str]:
    """Queries matched across scales: verified, with fewer than ``scale_search.below_inliers`` inliers at best."""
    gate = ctx.conf.scale_search
    if gate is None or ctx.conf.verify is None:
        return set()
    return {q.name for q in ctx.queries if ctx.logs[q.name].verified and q.name in shortlists
            and ctx.logs[q.name].verified[0][1] < gate.below_inliers}


def match(ctx: RunContext, shortlists: Shortlists) -> StageCache:
    """3. NCNet matches between each query and its first shortlisted images, cached per pair.

    Tasks go to the workers grouped per query, so each keeps the query's features across its shortlist;
    the pairs of scale-searched queries (``scale_searched_queries``) go to a matcher with ``scale_search.scales``."""
    conf = ctx.conf.matching
    key = {**to_dict(conf), "weights_sha1": _weights_key(conf.weights), "dataset": ctx.dataset_id}
    del key["feature_cache_mb"]  # memory reuse only: the matches do not depend on it
    cache = StageCache(ctx.export_dir, "matches", key)
    ctx.scale_searched = scale_searched_queries(ctx, shortlists)
    if ctx.scale_searched:
        logger.info("matching: %d of %d queries searched across scales %s (best verified inliers < %d)",
                    len(ctx.scale_searched), len(ctx.queries), list(ctx.conf.scale_search.scales),
                    ctx.conf.scale_search.below_inliers)
    tasks = []
    for q in ctx.queries:
        for db in _matched_names(ctx, shortlists, q):
            if cache.has(f"{q.name}/{db}", _pair_fp(ctx, q, db)):
                continue
            if db not in ctx.database:
                ctx.logs[q.name].fail("matching", f"shortlisted database image {db} is not in the database")
                continue
            tasks.append((q, db))
    resources = {"num_gpus": 1} if ctx.device.startswith("cuda") else {}
    searched = dataclasses.replace(conf, scales=ctx.conf.scale_search.scales) if ctx.scale_searched else conf
    for mconf, across_scales in ((conf, False), (searched, True)):
        group = [(q, db) for q, db in tasks if (q.name in ctx.scale_searched) == across_scales]
        paths = [(str(q.path), str(ctx.database[db].image_path)) for q, db in group]
        store = str(ctx.export_dir) if mconf.store_db_features else None
        for i, res in ctx.executor.run(MatchWorker, (mconf, ctx.device, store), paths, "matching", resources):
            q, db = group[i]
            if isinstance(res, Exception):
                ctx.logs[q.name].fail("matching", f"{q.name} vs {db}: {res}")
                continue
            cache.put(f"{q.name}/{db}", res, _pair_fp(ctx, q, db))
    cache.finalize()
    for q in ctx.queries:
        if q.name in shortlists:
            ctx.logs[q.name].times["matching"] = _pair_matches(ctx, cache, q, _matched_names(ctx, shortlists, q))[1]
    return cache


def _pair_matches(ctx: RunContext, cache: StageCache, q: Query, names: Sequence[str]) -> tuple[list, float]:
    """[(db, kp_query, kp_db, scores)] of the cached pairs of one query, and their total matching time."""
    out, total_t = [], 0.0
    for db in names:
        key = f"{q.name}/{db}"
        if cache.has(key, _pair_fp(ctx, q, db)):
            e = cache.get(key)
            total_t += float(e["time_s"])
            out.append((db, e["keypoints0"], e["keypoints1"], e["scores"]))
    return out, total_t


def pose_candidates(ctx: RunContext, shortlists: Shortlists, mcache: StageCache, scache: StageCache) -> StageCache:
    """4. PnP-RANSAC candidates per query (one per matched image, plus a pooled one), cached per query."""
    key = {**to_dict(ctx.conf.pose), "pairs_per_query": ctx.conf.pairs_per_query}
    cache = StageCache(ctx.export_dir, "pose", key, depends=[mcache, scache])
    tasks, names = [], []
    for q in ctx.queries:
        if q.name not in shortlists or cache.has(q.name, _pose_fp(ctx, shortlists, q)):
            continue
        matched = _matched_names(ctx, shortlists, q)
        pairs, _ = _pair_matches(ctx, mcache, q, matched)
        if len(pairs) < len(matched):
            continue  # matching failed for this query: already logged
        tasks.append((q.camera, pairs))
        names.append(q)
    for i, res in ctx.executor.run(PoseWorker, (ctx.conf.pose, *ctx.db_spec), tasks, "pose"):
        if isinstance(res, Exception):
            ctx.logs[names[i].name].fail("pose", str(res))
            continue
        cache.put(names[i].name, res, _pose_fp(ctx, shortlists, names[i]))
    cache.finalize()
    return cache


def densepv(ctx: RunContext, pcache: StageCache, save_renders: Path | None = None) -> StageCache | None:
    """5. DensePV scores of each query's successful candidates, cached per query (None when switched off)."""
    conf = ctx.conf.densepv
    if conf is None:
        return None
    cache = StageCache(ctx.export_dir, "densepv", to_dict(conf), depends=[pcache])
    fps = {q.name: _known_pose_fp(ctx, q) for q in ctx.queries}
    todo = [q for q in ctx.queries if fps[q.name] and pcache.has(q.name, fps[q.name])
            and not cache.has(q.name, fps[q.name])]
    tasks = [(q.name, str(q.path), q.camera, pcache.get(q.name)) for q in todo]
    args = (conf, *ctx.db_spec, str(save_renders) if save_renders else None)
    for i, res in ctx.executor.run(DensePVWorker, args, tasks, "densepv"):
        if isinstance(res, Exception):
            ctx.logs[todo[i].name].fail("densepv", str(res))
            continue
        cache.put(todo[i].name, res, fps[todo[i].name])
    cache.finalize()
    return cache


def choose(ctx: RunContext, pcache: StageCache, dcache: StageCache | None) -> dict[str, PoseEntry]:
    """6. Each query's pose and top-1 database image (``pose.candidates.choose_pose``)."""
    out = {}
    for q in ctx.queries:
        fp = _known_pose_fp(ctx, q)
        if fp is None or not pcache.has(q.name, fp):
            continue
        log = ctx.logs[q.name]
        e = pcache.get(q.name)
        cands = candidates_from_record(e)
        log.times["pose"] = float(e["time_s"])
        scores = None
        if dcache is not None and dcache.has(q.name, fp):
            d = dcache.get(q.name)
            scores = d["scores"]
            log.times["densepv"] = float(d["time_s"])
        best, reason = choose_pose(cands, scores, use_densepv=dcache is not None)
        log.candidates = [c.to_log() for c in cands]
        if best is None:
            log.fail("pose", reason)
            continue
        log.pose, log.chosen_db = best.result.pose, best.top1_db
        out[q.name] = PoseEntry(best.result.pose, best.top1_db)
    return out


STAGES = ("retrieval", "verify", "matching", "pose", "densepv")  # keys of QueryLog.times, in run order
