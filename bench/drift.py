"""Benchmark the drift step: time and peak memory at 1k, 10k and 50k rows, against a bare embedding pass.

Rows are sampled with replacement, half from ``../shared/data/drug_reviews.csv`` and half from
``tweets_sentiment.csv``; the reference is a sample of drug reviews. Each size runs in a fresh worker process
that first warms up (imports, encoder load, MLflow store) on a small batch, then times the full drift step
(read, embed, MMD / KS / chi-square / length tests, plots, report, MLflow logging) and then a bare
``encoders.embed`` pass over exactly the rows the step embedded. The step embeds at most
``drift.batch_max_rows`` rows (a seeded sample), so above that cap both passes cover the capped sample; the
table also shows what a bare embedding of every row would cost, extrapolated from the measured rate.

Usage: ``python bench/drift.py [--rows 1000 10000 50000] [--encoder minilm]``. Prints a table, then one JSON
line: ``{"rows": [...], "seconds": [...], "peak_mb": [...], "ratio_to_embedding": [...]}``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))


def _settings(root: Path, encoder: str):
    from pipelines.config import get_settings

    return get_settings(
        paths__artifact_root=str(root / "var"),
        mlflow__tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        drift__encoder=encoder,
    )


def _pool():
    import pandas as pd

    drugs = pd.read_csv(SHARED / "drug_reviews.csv")[["text", "label"]]
    tweets = pd.read_csv(SHARED / "tweets_sentiment.csv")[["text", "label"]]
    return drugs, tweets


def _batch(rows: int, seed: int):
    import pandas as pd

    drugs, tweets = _pool()
    half = rows // 2
    return pd.concat(
        [
            drugs.sample(n=half, replace=True, random_state=seed),
            tweets.sample(n=rows - half, replace=True, random_state=seed),
        ],
        ignore_index=True,
    )


def _worker(rows: int, root: Path, encoder: str) -> dict:
    """Run in a fresh process: warm up, then time the drift step and a bare embedding of the same rows."""
    import resource

    from pipelines.context import StepContext
    from pipelines.model.encoders import embed
    from pipelines.runner import run_step

    settings = _settings(root, encoder)
    cfg = settings.drift

    def drift(name: str, df) -> dict:
        uri = settings.uri("accepted", f"{name}.parquet")
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        df.to_parquet(uri, index=False)
        ctx = StepContext(
            step="drift",
            run_id=name,
            settings=settings,
            inputs={"accepted_uri": uri, "reference_uri": str(root / "reference")},
        )
        return run_step(ctx)

    drift(f"warmup-{rows}", _batch(64, seed=99))
    df = _batch(rows, seed=rows)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # Peak memory from the OS (ru_maxrss), not tracemalloc: tracing slows the tokenizer loop and misses torch.
    started = time.perf_counter()
    summary = drift(f"bench-{rows}", df)
    seconds = time.perf_counter() - started
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    # The same rows the step embedded (its seeded sample), embedded bare.
    sample = df.sample(n=cfg.batch_max_rows, random_state=cfg.seed) if len(df) > cfg.batch_max_rows else df
    texts = sample[settings.data.text_column].astype(str).tolist()
    started = time.perf_counter()
    embed(texts, summary["encoder"], batch_size=cfg.embed_batch_size, max_length=cfg.max_length)
    embed_s = time.perf_counter() - started
    return {
        "rows": rows,
        "rows_embedded": summary["rows_embedded"],
        "seconds": round(seconds, 2),
        "embed_seconds": round(embed_s, 2),
        "ratio": round(seconds / embed_s, 3),
        "full_embed_seconds_est": round(embed_s * rows / len(texts), 1),
        "peak_mb": round(peak_rss, 1),
        "rss_growth_mb": round(max(peak_rss - base_rss, 0.0), 1),
        "severity": summary["severity"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 10000, 50000])
    parser.add_argument("--encoder", default="minilm", help="drift encoder: 'minilm' or a model folder")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args.worker, args.root, args.encoder)))
        return 0

    empty = {"rows": [], "seconds": [], "peak_mb": [], "ratio_to_embedding": []}
    missing = [n for n in ("drug_reviews.csv", "tweets_sentiment.csv") if not (SHARED / n).is_file()]
    if missing:
        print(f"skipped: {', '.join(missing)} not found under {SHARED} (../shared/data beside the checkout)")
        print(json.dumps({**empty, "skipped": f"missing {', '.join(missing)}"}))
        return 0

    from pipelines.data.reference import save_reference

    results = []
    with tempfile.TemporaryDirectory(prefix="bench-drift-") as tmp:
        root = Path(tmp)
        settings = _settings(root, args.encoder)
        drugs, _ = _pool()
        started = time.perf_counter()
        save_reference(
            settings,
            drugs.sample(n=settings.drift.reference_max_rows, replace=True, random_state=0),
            root / "reference",
        )
        print(
            f"reference: {settings.drift.reference_max_rows} drug reviews embedded with {args.encoder} in "
            f"{time.perf_counter() - started:.1f}s; batch cap drift.batch_max_rows={settings.drift.batch_max_rows}, "
            f"MMD cap drift.mmd_max_rows={settings.drift.mmd_max_rows}",
            flush=True,
        )
        for rows in args.rows:
            out = subprocess.run(
                [sys.executable, __file__, "--worker", str(rows), "--root", str(root), "--encoder", args.encoder],
                capture_output=True,
                text=True,
                check=False,
            )
            if out.returncode != 0:
                print(out.stderr[-3000:], file=sys.stderr)
                return out.returncode
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"  {rows} rows done in {results[-1]['seconds']}s", flush=True)

    header = (
        f"{'rows':>7} {'embedded':>8} {'drift s':>8} {'embed s':>8} {'ratio':>6} {'all-rows embed s':>16} "
        f"{'peak RSS MB':>11} {'RSS growth MB':>13} severity"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r['rows']:>7} {r['rows_embedded']:>8} {r['seconds']:>8.2f} {r['embed_seconds']:>8.2f} "
            f"{r['ratio']:>6.2f} {r['full_embed_seconds_est']:>16.1f} {r['peak_mb']:>11.1f} "
            f"{r['rss_growth_mb']:>13.1f} {r['severity']}"
        )
    print(
        "ratio = drift-step seconds / bare embedding of the same (capped) rows; goal <= 1.3. "
        "peak RSS = the worker process (encoder and libraries loaded); RSS growth = above its warm-up peak"
    )
    print(
        json.dumps(
            {
                "rows": [r["rows"] for r in results],
                "seconds": [r["seconds"] for r in results],
                "peak_mb": [r["peak_mb"] for r in results],
                "ratio_to_embedding": [r["ratio"] for r in results],
                "rows_embedded": [r["rows_embedded"] for r in results],
                "embed_seconds": [r["embed_seconds"] for r in results],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
