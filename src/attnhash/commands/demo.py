"""attnhash demo: the main job on the embedded default, end to end.

Train a 64-bit DPSH model on the `fmnist` protocol (real Fashion-MNIST, pretrained EfficientNet-Lite0),
encode the 64,000-image database, print mAP@ALL, index the codes in a local FAISS index file, and show
the top-10 results of a query image (a table, and a PNG of the query beside its results, each with its class
name and a green or red frame for relevant or not).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from attnhash.commands.common import DefaultsHelpFormatter, add_run_flags, config_from_args

# Chosen so the whole job takes minutes on 2 CPU cores (see README "The main job").
DEMO_DEFAULTS = [
    "data.image_size=32",
    "model.freeze=block3",
    "train.epochs=10",
]


def register(sub) -> None:
    p = sub.add_parser("demo", help="the main job: train, evaluate, index and search on Fashion-MNIST",
                       description="The main job: train, evaluate, index and search on Fashion-MNIST. Unless "
                                   "overridden: " + ", ".join(DEMO_DEFAULTS) + ".",
                       formatter_class=DefaultsHelpFormatter)
    add_run_flags(p)
    p.add_argument("--query", help="query image file (default: the first image of the protocol's query set)")
    p.add_argument("--index-out", help="index file to write (default: <run>/database.idx)")
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(func=run, method="dpsh", dataset="fmnist", bits=64, backbone="efficientnet_lite0", name="demo")


def run(args) -> int:
    from attnhash.codes import as_packed, hamming_distances
    from attnhash.data import open_item_ref, prepare_data
    from attnhash.evaluation.run import encode_split, evaluate_run
    from attnhash.inference import Encoder
    from attnhash.retrieval import Retriever, source_metadata
    from attnhash.training import train

    args.overrides = DEMO_DEFAULTS + list(args.overrides)
    cfg = config_from_args(args)
    progress = not args.quiet
    t0 = time.time()
    print(f"== train {cfg.method.name}, {cfg.model.bits} bits, {cfg.model.backbone} on {cfg.data.dataset} "
          f"({cfg.data.protocol} protocol), {cfg.train.epochs} epochs at {cfg.data.image_size}px")
    data = prepare_data(cfg.data)
    print(f"   split {data.split_path}: {len(data.query)} query / {len(data.train)} train / "
          f"{len(data.database)} database")
    result = train(cfg, progress=progress, data=data, force=True)  # the demo's run is made anew each time

    print("== encode query + database and evaluate")
    encoder = Encoder(result.run_dir)
    codes = encode_split(result.run_dir, encoder, data=data, progress=progress)
    metrics, summary = evaluate_run(result.run_dir, progress=progress)
    top = "ALL" if summary["topk"] is None else summary["topk"]
    print(f"   mAP@{top} = {metrics.mAP:.4f}   (tie-aware {metrics.mAP_tie_aware:.4f}, "
          f"P@H<=2 {metrics.precision_hamming2:.4f}, P@1000 {metrics.precision_at_n.get(1000, float('nan')):.4f})")

    print("== index the database")
    retriever = Retriever.create(encoder, source=cfg.data.dataset, class_names=encoder.class_names)
    index = retriever.index
    index.add(codes.db_codes, ids=codes.db_index, metadata=source_metadata(data.source, codes.db_index))
    index_path = Path(args.index_out or Path(result.run_dir) / "database.idx")
    retriever.save(str(index_path))
    print(f"   {len(index)} codes x {index.code_size} bytes -> {index_path}")

    print("== top-10 of a query image")
    if args.query:
        query_image = open_item_ref(args.query)
        query_code = encoder.encode_images([query_image])
        query_label = None
        query_name = args.query
    else:
        qi = int(data.query[0])
        query_image = data.source.image(qi)
        query_code = codes.query_codes[:1]
        query_label = data.labels[qi]
        query_name = f"{data.source.describe(qi)} (a protocol query, never trained on)"
    hits = retriever.search_codes(query_code, k=10)[0]
    names = encoder.class_names or []
    qlabel = ", ".join(names[c] for c in np.flatnonzero(query_label)) if query_label is not None else "?"
    print(f"   query: {query_name}, label: {qlabel}")
    print(f"   {'rank':>4}  {'id':>6}  {'dist':>4}  {'label':<14} {'match' if query_label is not None else ''}")
    matches = 0
    for rank, hit in enumerate(hits, 1):
        item_labels = data.labels[int(hit["id"])]
        label = ", ".join(names[c] for c in np.flatnonzero(item_labels)) if names else str(hit.get("labels"))
        match = ""
        if query_label is not None:
            relevant = bool((item_labels & query_label).any())
            matches += relevant
            match = "yes" if relevant else "no"
        print(f"   {rank:>4}  {int(hit['id']):>6}  {int(hit['distance']):>4}  {label:<14} {match}")
    # one query is one draw: put it next to the average over all queries, and say how many items tie
    farthest = max(int(h["distance"]) for h in hits)
    within = int((hamming_distances(as_packed(query_code, encoder.bits), codes.db_codes)[0] <= farthest).sum())
    print(f"   {within} database items lie within distance {farthest} of this query (equal distances in "
          f"database order)")
    if query_label is not None:
        print(f"   this query: {matches}/{len(hits)} relevant; over all {len(data.query)} queries P@10 = "
              f"{metrics.precision_at_n.get(10, float('nan')):.4f}")
    png = Path(result.run_dir) / "demo_top10.png"
    _save_grid(query_image, qlabel, hits, [data.source.image(int(h["id"])) for h in hits],
               [data.labels[int(h["id"])] for h in hits], names, query_label, png,
               f"{cfg.method.name}, {cfg.model.bits} bits: top {len(hits)} (mAP@{top} {metrics.mAP:.4f})")
    print(f"   picture: {png}")
    print(f"== done in {time.time() - t0:.0f}s; run folder {result.run_dir}")
    return 0


def _save_grid(query: np.ndarray, query_name: str, hits: list[dict], images: list[np.ndarray],
               labels: list[np.ndarray], names: list[str], query_label: np.ndarray | None, path: Path,
               title: str) -> None:
    """The query beside its results, each with its class name and distance, framed green (relevant) or red
    (not), or grey when the query has no label."""
    from attnhash.evaluation.plots import retrieval_grid_figure, save

    tiles = []
    for hit, image, item_labels in zip(hits, images, labels):
        label = ", ".join(names[c] for c in np.flatnonzero(item_labels)) if names else str(hit.get("labels"))
        relevant = None if query_label is None else bool((item_labels & query_label).any())
        tiles.append({"image": image, "label": label, "distance": int(hit["distance"]), "relevant": relevant})
    save(retrieval_grid_figure([{"image": query, "label": query_name, "hits": tiles}], title), path, dpi=100)
