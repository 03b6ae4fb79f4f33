"""Benchmark: selection speed.

(a) **Embed + query** of a CT-sized volume (default 512 x 512 x 300 voxels, 0.8 x 0.8 x 1.5 mm) on
    ``--threads`` CPU threads: the encoder's view extraction + forward pass + the index query and the per-model
    aggregation of :mod:`ModelSelectorLib.selection.selector` (no verification), against plain baselines measured in the
    same run: the encoder's forward pass alone on the same views, the naive view extraction (resample the whole
    volume to the 2 mm grid, then slice), and a brute-force numpy query.
(b) **Queries per second** of a ``--n`` (default 1,000,000) prototype hnswlib index of unit vectors of the
    encoder's dimension (``--dim``, default the bundled encoder's 64; clustered like real prototypes: a
    mixture of ``--clusters`` directions), on one thread: throughput of a batch of ``--queries`` queries and
    p50 / p95 latency of single-vector queries (k = 10), with recall@10 against brute force (exact cosine
    over all vectors, also timed) for each ``--ef``. The build of a 1M index takes minutes; its time is
    printed.
(c) **The whole ``select``** of the same volume against the bundled zoo, as ``modelselector select`` runs it
    after its start-up: with the verification of the best candidates by their own networks (the default), beside
    the same call without it (``verify=False``, the figure (a) times).

Usage::

    python benchmarks/bench_select.py [--threads 2] [--n 1000000] [--size 512 512 300] [--skip-a] [--skip-b] [--skip-c]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def ct_volume(size: tuple[int, int, int]) -> object:
    """A CT-like volume (x, y, z voxels): air, an elliptic body of soft tissue, organs, a spine, noise."""
    import numpy as np

    from ModelSelectorLib.io import Image

    x, y, z = size
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:y, 0:x].astype(np.float32)
    cy, cx = y / 2, x / 2
    body = ((xx - cx) / (0.42 * x)) ** 2 + ((yy - cy) / (0.32 * y)) ** 2 <= 1
    organ = ((xx - cx * 0.7) / (0.12 * x)) ** 2 + ((yy - cy) / (0.1 * y)) ** 2 <= 1
    spine = ((xx - cx) / (0.04 * x)) ** 2 + ((yy - cy * 1.45) / (0.04 * y)) ** 2 <= 1
    sl = np.full((y, x), -1000.0, np.float32)
    sl[body] = 40.0
    sl[organ] = 120.0
    sl[spine] = 700.0
    arr = np.repeat(sl[None], z, axis=0)
    arr += rng.normal(0, 20, (1, y, x)).astype(np.float32)  # one noise field, broadcast (fast to make)
    return Image(
        arr,
        (0.8, 0.8, 1.5),
        (-200.0, -200.0, -400.0),
        (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0),
        {"path": "synthetic"},
    )


def timed(fn: object, repeats: int, stats: dict | None = None) -> tuple[float, object]:
    """Median wall time of ``repeats`` calls and the last result; ``stats`` (when given) also receives the
    minimum wall time and the median process CPU time (all threads), as this shared machine's other jobs
    stretch the wall clock."""
    times, cpu, out = [], [], None
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    if stats is not None:
        stats.update(min=min(times), cpu=statistics.median(cpu))
    return statistics.median(times), out


def bench_embed_query(args: argparse.Namespace) -> None:
    import numpy as np
    import SimpleITK as sitk

    from ModelSelectorLib.selection.encoder import Encoder
    from ModelSelectorLib.selection.index import ZooIndex
    from ModelSelectorLib.selection.prototypes import PrototypeSet
    from ModelSelectorLib.selection.scoring import clear_cache, evidence, similarities
    from ModelSelectorLib.selection.views import resize_pad, view_channels

    enc = Encoder.load()
    image = ct_volume(tuple(args.size))
    if args.dtype == "int16":  # a CT as stored (DICOM, NIfTI): 16-bit integers
        image.array = image.array.astype(np.int16)
    print(f"(a) embed + query, volume {tuple(args.size)} voxels ({image.array.nbytes / 1e6:.0f} MB {args.dtype}), "
          f"{args.threads} thread(s); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")  # fmt: skip
    # a zoo-sized index: 20 models x 120 prototypes
    rng = np.random.default_rng(1)
    dim = int(enc.config.get("embed_dim", 64))
    idx = ZooIndex(dim=dim)
    for m in range(20):
        v = rng.normal(size=(120, dim)).astype(np.float32) + rng.normal(size=(1, dim)).astype(np.float32) * 3
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        rows = [
            {"origin": "exemplar" if i < 60 else "data-free", "source": f"s{i // 24}", "view": i}
            for i in range(120)
        ]
        idx.add_prototypes(PrototypeSet(v, rows, f"model{m}", "1"))
    enc.embed(image)  # warm-up
    t_views, views = timed(lambda: enc.views(image), args.repeats)
    t_fwd, emb = timed(lambda: enc.embed_views(views), args.repeats)
    st: dict = {}
    t_total, ev = timed(lambda: (clear_cache(), evidence(enc, image))[1], args.repeats, st)  # no cache
    t_query, _ = timed(
        lambda: (idx.query(ev.emb, k=10), similarities(idx, ev, ("exemplar", "data-free"))), args.repeats
    )
    all_v = np.concatenate([idx.model_vectors(n)[0] for n in idx.model_names()])
    t_brute, _ = timed(lambda: np.argsort(-(ev.emb @ all_v.T), axis=1)[:, :10], args.repeats)

    def naive_views() -> object:  # resample the whole volume to 2 mm, then take 8 slices per plane
        s = image.to_sitk()
        f = sitk.ResampleImageFilter()
        sp = np.asarray(s.GetSpacing())
        size = [int(round(a * b / 2.0)) for a, b in zip(s.GetSize(), sp)]
        f.SetOutputSpacing([2.0] * 3)
        f.SetSize(size)
        f.SetOutputOrigin(s.GetOrigin())
        f.SetOutputDirection(s.GetDirection())
        f.SetInterpolator(sitk.sitkLinear)
        a = sitk.GetArrayFromImage(f.Execute(s))
        out = []
        for axis in range(3):
            for frac in np.linspace(0.2, 0.8, 8):
                sl = np.take(a, int(frac * (a.shape[axis] - 1)), axis=axis)
                out.append(view_channels(resize_pad(sl, enc.image_size)))
        return np.stack(out)

    t_naive, _ = timed(naive_views, max(1, args.repeats // 2))
    ours = t_total + t_query
    print(f"  views: {len(views)}; ours: view extraction {t_views * 1e3:.0f} ms + encoder {t_fwd * 1e3:.0f} ms; "
          f"embed (views + encoder + class probabilities) {t_total * 1e3:.0f} ms; query + per-model aggregation "
          f"{t_query * 1e3:.1f} ms")  # fmt: skip
    print(f"  EMBED + QUERY TOTAL: {ours * 1e3:.0f} ms median, {(st['min'] + t_query) * 1e3:.0f} ms best of "
          f"{args.repeats} (goal <= 500 ms); embedding CPU time {st['cpu'] * 1e3:.0f} ms over all threads")  # fmt: skip
    print(f"  baselines: encoder forward alone {t_fwd * 1e3:.0f} ms (ours / forward = {ours / t_fwd:.2f}x); naive "
          f"full-volume resample + slicing {t_naive * 1e3:.0f} ms (ours' views / naive = {t_views / t_naive:.2f}x); "
          f"brute-force numpy query over {len(all_v)} prototypes {t_brute * 1e3:.2f} ms")  # fmt: skip


def bench_large_index(args: argparse.Namespace) -> None:
    import hnswlib
    import numpy as np

    n, dim = int(args.n), int(args.dim)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(args.clusters, dim)).astype(np.float32)
    spread = 0.6  # noise / centre norm ratio 0.6 in any dimension: the same angular spread
    print(f"(b) hnswlib index of {n:,} prototypes ({dim}-d, {args.clusters} clusters), M={args.M}, "
          f"ef_construction={args.ef_construction}, build on {args.threads} thread(s), queries on 1 thread")  # fmt: skip
    data = np.empty((n, dim), np.float32)
    for i in range(0, n, 100_000):
        m = min(100_000, n - i)
        data[i : i + m] = (
            centres[rng.integers(0, args.clusters, m)] + rng.normal(size=(m, dim)).astype(np.float32) * spread
        )
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    index = hnswlib.Index(space="cosine", dim=dim)
    index.init_index(max_elements=n, ef_construction=args.ef_construction, M=args.M)
    t = time.perf_counter()
    index.add_items(data, np.arange(n), num_threads=args.threads)
    t_build = time.perf_counter() - t
    print(f"  build: {t_build:.1f} s ({n / t_build:,.0f} vectors/s)")
    queries = (
        centres[rng.integers(0, args.clusters, args.queries)]
        + rng.normal(size=(args.queries, dim)).astype(np.float32) * spread
    )
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    nq = min(args.recall_queries, len(queries))
    t = time.perf_counter()
    truth = [np.argpartition(-(data @ queries[i]), 10)[:10] for i in range(nq)]
    t_brute = (time.perf_counter() - t) / nq
    print(f"  brute force (exact cosine over {n:,} vectors, numpy): {t_brute * 1e3:.1f} ms/query "
          f"({1.0 / t_brute:,.0f} queries/s)")  # fmt: skip
    for ef in args.ef:
        index.set_ef(ef)
        t, c = time.perf_counter(), time.process_time()
        labels, _ = index.knn_query(queries, k=10, num_threads=1)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        lat = []
        for q in queries[: args.latency_queries]:
            t = time.perf_counter()
            index.knn_query(q[None], k=10, num_threads=1)
            lat.append(time.perf_counter() - t)
        p50, p95 = np.percentile(np.asarray(lat) * 1e3, (50, 95))
        recall = np.mean([len(set(truth[i].tolist()) & set(labels[i].tolist())) / 10.0 for i in range(nq)])
        print(
            f"  ef={ef}: {len(queries) / cpu:,.0f} queries per CPU-second on 1 thread ({len(queries) / wall:,.0f}/s "
            f"wall clock on this shared machine; batch of {len(queries)}; goal >= 10,000), single query p50 "
            f"{p50:.3f} ms / p95 {p95:.3f} ms; recall@10 {recall:.4f} on {nq} queries (goal >= 0.95); "
            f"{t_brute * len(queries) / wall:,.0f}x brute force"
        )


def bench_select_bundled(args: argparse.Namespace) -> None:
    import numpy as np

    from ModelSelectorLib.selection.scoring import clear_cache
    from ModelSelectorLib.selection.selector import select

    image = ct_volume(tuple(args.size))
    if args.dtype == "int16":
        image.array = image.array.astype(np.int16)
    print(f"(c) select on the bundled zoo, volume {tuple(args.size)} ({args.dtype}), {args.threads} thread(s); "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    select(image)  # warm-up: loads the encoder, the index and the candidates' networks
    times = {}
    for verify in (False, True):
        st: dict = {}
        times[verify], answer = timed(
            lambda v=verify: (clear_cache(), select(image, verify=v))[1], args.repeats, st
        )
        times[verify, "min"] = st["min"]
    print(f"  verified (default) {times[True] * 1e3:.0f} ms median, {times[True, 'min'] * 1e3:.0f} ms best; without "
          f"verification {times[False] * 1e3:.0f} ms median, {times[False, 'min'] * 1e3:.0f} ms best "
          f"(verified / unverified = {times[True] / times[False]:.1f}x); top model {answer.models[0].name} "
          f"{answer.models[0].score:.3f}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, nargs=3, default=(512, 512, 300), metavar=("X", "Y", "Z"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--dtype", choices=("int16", "float32"), default="int16", help="voxel type of the CT volume"
    )
    parser.add_argument(
        "--n", type=int, default=1_000_000, help="prototypes in the large index (default 1,000,000)"
    )
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument(
        "--dim", type=int, default=64, help="vector dimension (default 64, the bundled encoder's)"
    )
    parser.add_argument("--M", type=int, default=16)
    parser.add_argument("--ef-construction", dest="ef_construction", type=int, default=200)
    parser.add_argument("--ef", type=int, nargs="+", default=[16, 24, 32, 48, 64])
    parser.add_argument("--queries", type=int, default=10000, help="queries of the throughput batch")
    parser.add_argument("--latency-queries", type=int, default=1000, help="single-vector queries timed")
    parser.add_argument("--recall-queries", dest="recall_queries", type=int, default=200)
    parser.add_argument("--skip-a", action="store_true", help="skip the embed + query benchmark")
    parser.add_argument("--skip-b", action="store_true", help="skip the large-index benchmark")
    parser.add_argument("--skip-c", action="store_true", help="skip the whole select on the bundled zoo")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if not args.skip_a:
        bench_embed_query(args)
    if not args.skip_c:
        bench_select_bundled(args)
    if not args.skip_b:
        bench_large_index(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
