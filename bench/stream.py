"""Stream benchmark: does the loop keep a model good on real drifting data, and at what compute?

A prequential replay. Batches land one at a time. Before a policy sees batch t+1, the model it has in service is
scored on that batch (macro-F1 and per-class recall), so every score is on data the model has never seen. Policies,
side by side in the same run, with the product's own trainer and settings:

- ``loop``: the product itself. The real ``continuous_training`` DAG (``dag.test()`` on SQLite, a fresh ``var/``,
  the default configuration, ``registry.promotion=auto``) runs on each batch; the model in service is
  ``models:/<name>@champion`` (its served, compressed artifact).
- ``never``: trained once on the first batch.
- ``always_fine_tune``: every batch, the previous model fine-tuned on the new batch plus replay.
- ``always_retrain``: every batch, retrained from the base model on all data so far.
- ``tfidf``: TF-IDF + class-balanced logistic regression, retrained on all data so far.

The three transformer baselines share the first model (one retrain on the first batch) and train through
:func:`pipelines.steps.train.train_model` with the same hold-out and replay rules as the train step; they are scored in
fp32 PyTorch. Compute is counted as training sample passes (rows x epochs actually run, head warm-up included).

The public stream (needs ``../shared/data``; skipped without it): the drug reviews sorted by date in 4 batches, then
600-row samples of the tweet topics deflategate, driverless, coachella and apple (seed 0). Another stream plugs in
with ``--stream CSV --split-column COL``: a date or number column is sorted and cut into ``--batches`` batches;
any other column gives one batch per value (``--values`` picks and orders them), sampled to ``--rows-per-batch``.

The loop has no reviewer here. A challenger that the gates hold for review (inconclusive, below the TF-IDF
baseline) stays the challenger and counts as not promoted; the run ends at once (the review would happen in the
``review_challenger`` DAG, which the benchmark does not run), and the next batch's challenger supersedes it. Each
held challenger is also scored on the next batch beside the champion that stayed (``held_challengers``): what an
approving reviewer would have changed there; the loop's own figures never count it.

    .venv/bin/python bench/stream.py            # the public stream, MiniLM: an hour or more on 2 CPU cores
    .venv/bin/python bench/stream.py --quick    # the synthetic demo stream, a tiny BERT: about a minute

Last line: one JSON object with ``loop_f1``, ``never_f1``, ``fine_tune_f1``, ``retrain_f1``, ``tfidf_f1`` (mean
next-batch macro-F1 over the scored batches, in points), ``loop_compute_share`` (the loop's sample passes over
always-retrain's), ``champions`` (promotions), ``promoted_regressions`` (promotions whose new champion scored below
the one it replaced on the next batch, paired bootstrap 95 % interval entirely below 0), ``loop_s``, and details.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))

TWEET_TOPICS = ("deflategate", "driverless", "coachella", "apple")
POLICIES = ("loop", "never", "always_fine_tune", "always_retrain", "tfidf")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- streams ---------------------------------------------------------------------------------------------------
Stream = list[tuple[str, Any]]  # (batch name, DataFrame with text, label, domain)


def public_stream(data_dir: Path, tweet_rows: int = 600, seed: int = 0) -> Stream:
    """Drug reviews by date in 4 batches, then ``tweet_rows``-row samples of four tweet topics."""
    import numpy as np
    import pandas as pd

    drugs = pd.read_csv(data_dir / "drug_reviews.csv").sort_values(["date", "id"], kind="stable")
    drugs = drugs.assign(domain="drug_reviews")[["text", "label", "domain"]].reset_index(drop=True)
    stream: Stream = [
        (f"drugs_{i + 1}", drugs.iloc[idx].reset_index(drop=True))
        for i, idx in enumerate(np.array_split(np.arange(len(drugs)), 4))
    ]
    tweets = pd.read_csv(data_dir / "tweets_sentiment.csv")
    for topic in TWEET_TOPICS:
        rows = tweets[tweets["topic"] == topic]
        rows = rows.sample(n=min(tweet_rows, len(rows)), random_state=seed)
        stream.append((topic, rows.assign(domain=topic)[["text", "label", "domain"]].reset_index(drop=True)))
    return stream


def csv_stream(
    path: Path,
    split_column: str,
    text_column: str = "text",
    label_column: str = "label",
    batches: int = 4,
    rows_per_batch: int = 600,
    values: list[str] | None = None,
    seed: int = 0,
) -> Stream:
    """A stream from any labelled CSV, split on ``split_column`` (see the module docstring)."""
    import numpy as np
    import pandas as pd

    df = pd.read_csv(path)
    missing = [c for c in (split_column, text_column, label_column) if c not in df.columns]
    if missing:
        raise SystemExit(f"--stream {path}: no column(s) {missing}; it has {list(df.columns)}")
    df = df.rename(columns={text_column: "text", label_column: "label"})
    key = df[split_column]
    ordered = pd.api.types.is_numeric_dtype(key) or pd.to_datetime(key, errors="coerce").notna().mean() > 0.95
    if ordered and not values:
        df = df.sort_values(split_column, kind="stable").reset_index(drop=True)
        df["domain"] = path.stem
        parts = np.array_split(np.arange(len(df)), batches)
        return [
            (f"{split_column}_{i + 1}", df.iloc[p][["text", "label", "domain"]].reset_index(drop=True))
            for i, p in enumerate(parts)
        ]
    order = values or list(dict.fromkeys(key.astype(str)))
    stream: Stream = []
    for value in order:
        rows = df[key.astype(str) == value]
        if rows.empty:
            raise SystemExit(f"--stream {path}: no row has {split_column}={value!r}")
        rows = rows.sample(n=min(rows_per_batch, len(rows)), random_state=seed)
        stream.append((value, rows.assign(domain=value)[["text", "label", "domain"]].reset_index(drop=True)))
    return stream


def demo_stream(rows: dict[str, int] | None = None) -> Stream:
    """The product's synthetic demo batches (no shared data needed), optionally cut to ``rows`` per batch name."""
    import pandas as pd

    from pipelines.data import demo

    stream = []
    for spec in demo.BATCHES:
        if rows is not None and spec.name not in rows:
            continue
        frame = pd.DataFrame(demo.generate(spec))[["text", "label", "domain"]]
        stream.append((spec.name, frame.head(rows[spec.name]) if rows else frame))
    return stream


#: --quick: three demo batches, small enough for the tiny BERT to run the whole loop in about a minute.
QUICK_ROWS = {"batch_000_reference": 300, "batch_002_moderate": 150, "batch_003_severe": 150}


# --- policies --------------------------------------------------------------------------------------------------
@dataclass
class Step:
    """What one policy did with one batch."""

    action: str = "-"
    passes: float = 0.0
    train_s: float = 0.0
    wall_s: float = 0.0
    promoted: bool = False
    gates: str = ""
    state: str = ""


@dataclass
class Policy:
    name: str
    steps: list[Step] = field(default_factory=list)
    scores: list[dict[str, Any] | None] = field(default_factory=list)  # score on batch t (t >= 1), None if no model

    @property
    def passes(self) -> float:
        return sum(s.passes for s in self.steps)

    def mean_f1(self) -> float:
        """Mean next-batch macro-F1 in points; a batch with no model in service counts 0."""
        values = [s["macro_f1"] if s else 0.0 for s in self.scores]
        return round(100 * sum(values) / len(values), 2) if values else 0.0


def score(y: Any, pred: Any, labels: list[str]) -> dict[str, Any]:
    import numpy as np

    from pipelines.stats import macro_f1

    y, pred = np.asarray(y).astype(str), np.asarray(pred).astype(str)
    recall = {lab: round(float(np.mean(pred[y == lab] == lab)), 4) for lab in labels if (y == lab).any()}
    return {"macro_f1": macro_f1(y, pred, labels), "recall": recall}


class Baselines:
    """The transformer baselines and TF-IDF, trained in this process with the product's recipe."""

    def __init__(self, settings: Any, work: Path) -> None:
        self.settings = settings
        self.work = work
        self.history: list[Any] = []
        self.models: dict[str, Path | None] = {"never": None, "always_fine_tune": None, "always_retrain": None}
        self.tfidf: Any = None

    def _train(self, action: str, new: Any, earlier: Any, start: Path | None, out: Path) -> Step:
        from pipelines.model import modeling
        from pipelines.steps import train

        s = self.settings
        data = train.select_rows(s, action, new, earlier)
        if start is None:
            model, tokenizer = modeling.load_base(s)
        else:
            model, tokenizer = modeling.load_classifier(start, s)
            train.freeze_lower_layers(model, s.train.freeze_layers)
        scratch = Path(tempfile.mkdtemp(dir=self.work))
        unseen = data["holdout"]["text"].astype(str).tolist()
        result = train.train_model(s, action, model, tokenizer, data["rows"], scratch, unseen)
        result.model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        shutil.rmtree(scratch, ignore_errors=True)
        return Step(action=action, passes=result.metrics["sample_passes"], train_s=result.metrics["train_seconds"])

    def learn(self, t: int, batch: Any, policies: dict[str, Policy], wanted: list[str]) -> None:
        import pandas as pd

        earlier = pd.concat(self.history, ignore_index=True) if self.history else batch[:0]
        if t == 0 and set(wanted) & set(self.models):
            first = self.work / "model_first"
            started = time.perf_counter()
            step = self._train("retrain", batch, earlier, None, first)
            step.wall_s = time.perf_counter() - started
            for name in self.models:
                self.models[name] = first
                policies[name].steps.append(replace(step))
            log(f"  baselines: first model, {step.passes:.0f} sample passes, {step.train_s:.0f} s")
        elif t > 0:
            policies["never"].steps.append(Step(action="keep"))
            for name, action, start in (
                ("always_fine_tune", "fine_tune", self.models["always_fine_tune"]),
                ("always_retrain", "retrain", None),
            ):
                if name not in wanted:
                    continue
                out = self.work / f"model_{name}_{t}"
                started = time.perf_counter()
                step = self._train(action, batch, earlier, start, out)
                step.wall_s = time.perf_counter() - started
                policies[name].steps.append(step)
                self.models[name] = out
                log(f"  {name}: {step.passes:.0f} sample passes, {step.train_s:.0f} s")
        self.history.append(batch)
        self._fit_tfidf(pd.concat(self.history, ignore_index=True))
        policies["tfidf"].steps.append(Step(action="retrain"))

    def _fit_tfidf(self, rows: Any) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        from pipelines.data.datasets import split_holdout

        trainable = split_holdout(rows, self.settings)[0]
        self.tfidf = make_pipeline(
            TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
            LogisticRegression(class_weight="balanced", max_iter=2000),
        ).fit(trainable["text"].astype(str), trainable["label"].astype(str))

    def predict(self, name: str, texts: list[str]) -> Any:
        from pipelines.model.modeling import load_classifier, torch_logits

        if name == "tfidf":
            return self.tfidf.predict(texts)
        model, tokenizer = load_classifier(self.models[name], self.settings)
        logits = torch_logits(model, tokenizer, texts, self.settings.train.max_length, 32)
        labels = self.settings.data.labels
        return [labels[i] for i in logits.argmax(1)]


class Loop:
    """The product: the real continuous_training DAG on a fresh var/ per benchmark run."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.champions: list[str] = []  # version after each batch ('' for none)
        self.promotions: list[tuple[int, str | None, str]] = []  # (batch, old version, new version)
        self.held: list[tuple[int, str]] = []  # (batch, version staged for a review nobody gives)

    def land(self, name: str, batch: Any) -> str:
        from pipelines.io.storage import get_storage, join

        s = self.settings
        uri = join(s.uri(s.paths.landing), f"{name}.csv")
        get_storage(s).write_bytes(uri, batch.to_csv(index=False).encode("utf-8"))
        return uri

    def champion_version(self) -> str:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        client = MlflowClient(self.settings.mlflow.tracking_uri)
        try:
            return str(client.get_model_version_by_alias(self.settings.registry.model_name, "champion").version)
        except MlflowException:
            return ""

    def predict(self, version: str, texts: list[str]) -> Any:
        """Labels of the served model of ``version``, scored from its bundle as the pipeline does (no pickle)."""
        import mlflow

        from pipelines.champion import load_predictor
        from pipelines.steps.evaluate import predict

        mlflow.set_tracking_uri(self.settings.mlflow.tracking_uri)
        uri = f"models:/{self.settings.registry.model_name}/{version}"
        with tempfile.TemporaryDirectory(prefix="stream-model-") as tmp:
            mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
            model = load_predictor(tmp, uri)
            return predict(model, texts, list(self.settings.data.labels))[0]

    def learn(self, t: int, name: str, batch: Any) -> Step:
        from scripts.dag_runner import run_dag

        before = self.champion_version()
        uri = self.land(name, batch)
        out = run_dag("continuous_training", {"batch_uri": uri})
        after = self.champion_version()
        self.champions.append(after)
        results = out.results
        train = results.get("train", {})
        evaluation = results.get("evaluate", {})
        step = Step(
            action=results.get("decide", {}).get("action", "?"),
            # compress.distill trains a student in the compress step: its passes and seconds count too.
            passes=float(train.get("sample_passes", 0)) + float(results.get("compress", {}).get("sample_passes", 0)),
            train_s=float(train.get("train_seconds", 0)) + float(results.get("compress", {}).get("train_seconds", 0)),
            wall_s=out.wall_s,
            promoted=after != before and after != "",
            state=out.state,
        )
        if results.get("register", {}).get("held_for_review"):
            step.state = "held"  # staged for a human; nobody reviews in a benchmark
            self.held.append((t, str(results["register"]["version"])))
        elif evaluation and not evaluation.get("passed"):
            step.state = "rejected"
        elif out.state == "success":
            step.state = "ok"
        if evaluation:
            step.gates = _gate_summary(evaluation)
        elif train and "evaluate" not in results:
            step.gates = (
                "no evaluation (" + ", ".join(f"{k}={v}" for k, v in out.task_states.items() if v == "failed") + ")"
            )
        if step.promoted:
            self.promotions.append((t, before or None, after))
        return step


def _gate_summary(evaluation: dict[str, Any]) -> str:
    """``n=<rows>`` and the gates that did not pass (``name:outcome``), else ``all pass``."""
    outcomes = {
        name: g.get("outcome") or ("pass" if g.get("passed") else "fail")
        for name, g in evaluation.get("gates", {}).items()
        if not g.get("skipped")
    }
    bad = [f"{name}:{outcome}" for name, outcome in outcomes.items() if outcome != "pass"]
    return f"n={evaluation.get('eval_rows')} " + (" ".join(bad) if bad else "all pass")


# --- the run ---------------------------------------------------------------------------------------------------
def configure(work: Path, quick: bool, review_wait_s: float) -> dict[str, str]:
    """Environment for a fresh loop: its own var/, MLflow store and Airflow home; auto promotion."""
    env = {
        "MLOPS_PATHS__ARTIFACT_ROOT": str(work / "var"),
        "MLOPS_MLFLOW__TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
        "MLOPS_REGISTRY__PROMOTION": "auto",
        # No reviewer in a benchmark: a held challenger stays the challenger (continuous_training never waits for a
        # review); this bounds the review_challenger DAG, were it run.
        "MLOPS_REGISTRY__REVIEW_TIMEOUT_MINUTES": str(review_wait_s / 60),
        "MLOPS_REGISTRY__REVIEW_POKE_SECONDS": "1",
        "MLOPS_DAG__RETRIES": "0",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    if quick:
        sys.path.insert(0, str(REPO / "tests"))
        from conftest import build_tiny_bert

        texts = [t for _, frame in demo_stream() for t in frame["text"]]
        tiny = build_tiny_bert(work / "tiny", texts)
        env.update(
            {
                "MLOPS_TRAIN__BASE_MODEL": str(tiny),
                "MLOPS_DRIFT__ENCODER": str(tiny),
                "MLOPS_DRIFT__MMD_PERMUTATIONS": "50",
                "MLOPS_TRAIN__MAX_LENGTH": "64",
                "MLOPS_COMPRESS__MAX_LENGTH": "64",
                "MLOPS_TRAIN__LEARNING_RATE": "0.001",
                "MLOPS_TRAIN__FINE_TUNE_LEARNING_RATE": "0.0005",
                "MLOPS_TRAIN__EPOCHS": "12",
                "MLOPS_TRAIN__FINE_TUNE_EPOCHS": "4",
                "MLOPS_TRAIN__HEAD_WARMUP_EPOCHS": "0",
                # The tiny BERT is a test double of the encoder, not the product's model: on the demo text it
                # trails TF-IDF by a few points, which would hold every candidate for review.
                "MLOPS_GATES__BASELINE_TOLERANCE": "0.1",
            }
        )
    os.environ.update(env)
    return env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the synthetic demo stream and a tiny BERT (about a minute)")
    ap.add_argument("--stream", type=Path, help="a labelled CSV to stream instead of the public one")
    ap.add_argument("--split-column", help="the column of --stream to split on")
    ap.add_argument("--text-column", default="text")
    ap.add_argument("--label-column", default="label")
    ap.add_argument("--batches", type=int, default=4, help="batches when the split column is a date or number")
    ap.add_argument("--rows-per-batch", type=int, default=600, help="sample size per value of the split column")
    ap.add_argument("--values", help="comma-separated values of the split column, in stream order")
    ap.add_argument("--max-batches", type=int, default=None, help="stop after this many batches")
    ap.add_argument("--policies", default=",".join(POLICIES), help=f"subset of {','.join(POLICIES)}")
    ap.add_argument(
        "--review-wait-s",
        type=float,
        default=3.0,
        help="review timeout of review_challenger (unused: the training run never waits for a review)",
    )
    ap.add_argument(
        "--reuse-baselines",
        type=Path,
        help="baselines.json of an earlier run: reused when the stream, training settings and code are the same",
    )
    ap.add_argument("--work", type=Path, help="folder for this run's state (default: a new temporary folder)")
    args = ap.parse_args(argv)

    if args.stream:
        if not args.split_column:
            ap.error("--stream needs --split-column")
        stream = csv_stream(
            args.stream,
            args.split_column,
            args.text_column,
            args.label_column,
            args.batches,
            args.rows_per_batch,
            args.values.split(",") if args.values else None,
        )
    elif args.quick:
        stream = demo_stream(QUICK_ROWS)
    else:
        if not (SHARED_DATA / "drug_reviews.csv").is_file():
            print(f"skipped: the public stream needs {SHARED_DATA} (or pass --stream / --quick)")
            print(json.dumps({"skipped": f"no {SHARED_DATA}"}))
            return 0
        stream = public_stream(SHARED_DATA)
    stream = stream[: args.max_batches] if args.max_batches else stream
    chosen = [p.strip() for p in args.policies.split(",") if p.strip()]
    unknown = sorted(set(chosen) - set(POLICIES))
    if unknown:
        ap.error(f"--policies: unknown {unknown}; choose from {POLICIES}")

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-stream-"))
    work.mkdir(parents=True, exist_ok=True)
    configure(work, args.quick, args.review_wait_s)
    from scripts.dag_runner import prepare_airflow

    prepare_airflow(work / "airflow")
    from pipelines.config import get_settings

    settings = get_settings()
    labels = list(settings.data.labels)
    log(
        f"stream of {len(stream)} batches ({', '.join(f'{n}:{len(f)}' for n, f in stream)}); policies {chosen}; "
        f"state in {work}"
    )
    policies = {name: Policy(name) for name in POLICIES}
    started = time.perf_counter()
    loop = Loop(settings)
    regressions: list[dict[str, Any]] = []
    held: list[dict[str, Any]] = []
    loop_s = run_loop(stream, loop, policies["loop"], regressions, labels, held) if "loop" in chosen else 0.0
    wanted = [p for p in chosen if p != "loop"]
    if wanted:  # after the loop, so that a baselines.json written meanwhile by another run can be reused
        fingerprint = _fingerprint(stream, settings)
        cached = _cached_baselines(args.reuse_baselines, fingerprint, wanted)
        if cached:
            log(f"baselines: reusing {args.reuse_baselines} (same stream, training settings and training code)")
            for p in wanted:
                policies[p] = cached[p]
        else:
            run_baselines(stream, Baselines(settings, work / "baselines"), policies, wanted, labels)
        _save_baselines(work / "baselines.json", fingerprint, policies, wanted)
    total_s = time.perf_counter() - started
    return report(stream, chosen, policies, loop, regressions, loop_s, total_s, labels, held)


def run_baselines(stream: Stream, baselines: Baselines, policies: dict[str, Policy], wanted: list[str], labels) -> None:
    """Each baseline policy over the whole stream: score what is in service on batch t, then learn from it."""
    baselines.work.mkdir(parents=True, exist_ok=True)
    for t, (name, batch) in enumerate(stream):
        if t > 0:
            y, texts = batch["label"].astype(str).to_numpy(), batch["text"].astype(str).tolist()
            for p in wanted:
                policies[p].scores.append(score(y, baselines.predict(p, texts), labels))
            line = "  ".join(f"{p} {100 * policies[p].scores[-1]['macro_f1']:.1f}" for p in wanted)
            log(f"baselines, batch {t + 1}/{len(stream)} {name}: next-batch macro-F1  {line}")
        log(f"baselines, batch {t + 1}/{len(stream)} {name}: training")
        # batch_uri groups the history by batch, as the train step's accepted files do (hold-out share per batch)
        baselines.learn(t, batch.assign(batch_uri=name), policies, wanted)


def run_loop(
    stream: Stream,
    loop: Loop,
    policy: Policy,
    regressions: list[dict[str, Any]],
    labels,
    held: list[dict[str, Any]],
) -> float:
    """The product's DAG over the whole stream; returns the seconds spent in DAG runs.

    ``regressions`` receives each promotion's paired comparison on the next batch; ``held``, each challenger staged
    for a review (which nobody gives here) scored on the next batch against the champion that stayed: what an
    approving reviewer would have changed there (the loop's own figures do not count it).
    """
    loop_s = 0.0
    for t, (name, batch) in enumerate(stream):
        if t > 0:  # score the champion in service on data it has not seen
            y, texts = batch["label"].astype(str).to_numpy(), batch["text"].astype(str).tolist()
            version = loop.champions[-1]
            pred = loop.predict(version, texts) if version else None
            policy.scores.append(score(y, pred, labels) if version else None)
            for when, old, new in loop.promotions:
                if when == t - 1 and old:
                    regressions.append(_regression(y, pred, loop.predict(old, texts), old, new, labels, name))
            for when, staged in loop.held:
                if when == t - 1 and version:
                    staged_pred = loop.predict(staged, texts)
                    entry = _regression(y, staged_pred, pred, version, staged, labels, name)
                    entry.update(new_f1=score(y, staged_pred, labels)["macro_f1"], old_f1=policy.scores[-1]["macro_f1"])
                    held.append(entry)
                    log(
                        f"loop, batch {t + 1}/{len(stream)} {name}: held challenger v{staged} (not reviewed) would "
                        f"have scored {100 * entry['new_f1']:.1f}"
                    )
            shown = f"{100 * policy.scores[-1]['macro_f1']:.1f}" if version else "- (no champion)"
            log(f"loop, batch {t + 1}/{len(stream)} {name}: champion v{version or '-'} next-batch macro-F1 {shown}")
        log(f"loop, batch {t + 1}/{len(stream)} {name}: DAG run")
        t0 = time.perf_counter()
        step = loop.learn(t, name, batch)
        loop_s += time.perf_counter() - t0
        policy.steps.append(step)
        log(
            f"  loop: {step.state}, action {step.action}, {step.passes:.0f} sample passes, gates {step.gates or '-'}, "
            f"champion v{loop.champions[-1] or '-'}{' (promoted)' if step.promoted else ''}, {step.wall_s:.0f} s"
        )
    return loop_s


def _fingerprint(stream: Stream, settings: Any) -> str:
    """What the baselines' results depend on: the stream, the training and data settings, the training code."""
    import hashlib

    h = hashlib.sha256()
    for name, frame in stream:
        h.update(name.encode())
        h.update(frame.to_csv(index=False).encode())
    h.update(
        json.dumps({"train": settings.train.model_dump(), "data": settings.data.model_dump()}, sort_keys=True).encode()
    )
    for module in ("steps/train.py", "data/datasets.py", "model/modeling.py", "model/decision.py"):
        h.update(_code(REPO / "pipelines" / module).encode())
    return h.hexdigest()


def _code(path: Path) -> str:
    """A module's code without its comments, docstrings and layout (its syntax tree): rewording or reformatting
    the training code does not make the baselines (an hour of training) stale; any change to what it does does."""
    import ast

    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def _save_baselines(path: Path, fingerprint: str, policies: dict[str, Policy], wanted: list[str]) -> None:
    data = {p: {"steps": [s.__dict__ for s in policies[p].steps], "scores": policies[p].scores} for p in wanted}
    path.write_text(json.dumps({"fingerprint": fingerprint, "policies": data}))


def _cached_baselines(path: Path | None, fingerprint: str, wanted: list[str]) -> dict[str, Policy] | None:
    """Baseline results of an earlier run (JSON, never pickles), only when everything they depend on is the same."""
    if path is None:
        return None
    if not path.is_file():
        log(f"baselines: {path} does not exist (yet); training them")
        return None
    data = json.loads(path.read_text())
    if data.get("fingerprint") != fingerprint or not set(wanted) <= set(data.get("policies", {})):
        log(f"baselines: {path} was made from another stream, settings or training code; training them again")
        return None
    return {
        p: Policy(p, steps=[Step(**s) for s in data["policies"][p]["steps"]], scores=data["policies"][p]["scores"])
        for p in wanted
    }


#: Resamples of the paired bootstrap that calls a promotion a regression: as many as the gates' default. The verdict
#: hangs on an end of the interval, and 1,000 resamples moved the lower end of a 228-row one by 1.2 points by seed.
REGRESSION_BOOTSTRAP_SAMPLES = 10_000


def _regression(y: Any, new_pred: Any, old_pred: Any, old: str, new: str, labels: list[str], batch: str) -> dict:
    """Paired bootstrap of the new champion against the one it replaced, on the next batch."""
    from pipelines.stats import paired_bootstrap

    boot = paired_bootstrap(y, new_pred, old_pred, labels, samples=REGRESSION_BOOTSTRAP_SAMPLES, seed=0)
    return {
        "batch": batch,
        "old": old,
        "new": new,
        "diff": round(boot.diff, 4),
        "ci": [round(boot.ci_low, 4), round(boot.ci_high, 4)],
        "regression": boot.ci_high < 0,
    }


def report(
    stream: Stream,
    chosen: list[str],
    policies: dict[str, Policy],
    loop: Loop,
    regressions: list[dict[str, Any]],
    loop_s: float,
    total_s: float,
    labels: list[str],
    held: list[dict[str, Any]],
) -> int:
    """Print the per-batch table and the summary; the last line is the JSON object."""
    names = [n for n, _ in stream]
    width = max(len(n) for n in names) + 2
    print()
    print("Next-batch macro-F1 (points) of the model in service before each batch; '-' = no model in service")
    print(f"{'batch':<{width}}" + "".join(f"{p:>18}" for p in chosen))
    for i, name in enumerate(names[1:]):
        row = ""
        for p in chosen:
            sc = policies[p].scores[i] if i < len(policies[p].scores) else None
            row += f"{100 * sc['macro_f1']:>18.1f}" if sc else f"{'-':>18}"
        print(f"{name:<{width}}{row}")
    print(f"{'mean':<{width}}" + "".join(f"{policies[p].mean_f1():>18.2f}" for p in chosen))
    if "loop" in chosen:
        print()
        print("The loop, batch by batch (sample passes = training rows x epochs actually run)")
        print(f"{'batch':<{width}}{'state':<9}{'action':<11}{'passes':>8}{'train s':>9}{'run s':>8}  champion  gates")
        for name, step, champ in zip(names, policies["loop"].steps, loop.champions, strict=False):
            print(
                f"{name:<{width}}{step.state:<9}{step.action:<11}{step.passes:>8.0f}{step.train_s:>9.0f}"
                f"{step.wall_s:>8.0f}  {('v' + champ) if champ else '-':<4}{'*' if step.promoted else ' ':<5} {step.gates}"
            )
        print("(* promoted)")
        if regressions:
            print()
            for r in regressions:
                flag = "REGRESSION" if r["regression"] else "ok"
                print(
                    f"promotion v{r['old']} -> v{r['new']}, on {r['batch']}: macro-F1 diff {100 * r['diff']:+.1f} "
                    f"points, 95 % CI [{100 * r['ci'][0]:+.1f}, {100 * r['ci'][1]:+.1f}]: {flag}"
                )
        for h in held:
            print(
                f"held challenger v{h['new']} (staged for a review nobody gave), on {h['batch']}: "
                f"{100 * h['new_f1']:.1f} against champion v{h['old']}'s {100 * h['old_f1']:.1f}, diff "
                f"{100 * h['diff']:+.1f} points, 95 % CI [{100 * h['ci'][0]:+.1f}, {100 * h['ci'][1]:+.1f}]"
            )
    passes = {p: policies[p].passes for p in chosen}
    print()
    print("Training compute (sample passes): " + ", ".join(f"{p} {v:.0f}" for p, v in passes.items() if p != "tfidf"))
    summary: dict[str, Any] = {
        "batches": names,
        "loop_f1": policies["loop"].mean_f1() if "loop" in chosen else None,
        "never_f1": policies["never"].mean_f1() if "never" in chosen else None,
        "fine_tune_f1": policies["always_fine_tune"].mean_f1() if "always_fine_tune" in chosen else None,
        "retrain_f1": policies["always_retrain"].mean_f1() if "always_retrain" in chosen else None,
        "tfidf_f1": policies["tfidf"].mean_f1() if "tfidf" in chosen else None,
        "loop_compute_share": (
            round(passes["loop"] / passes["always_retrain"], 4)
            if "loop" in passes and passes.get("always_retrain")
            else None
        ),
        "champions": len(loop.promotions),
        "promoted_regressions": sum(r["regression"] for r in regressions),
        "loop_s": round(loop_s, 1),
        "total_s": round(total_s, 1),
        "sample_passes": {p: round(v) for p, v in passes.items()},
        "loop_actions": [s.action for s in policies["loop"].steps] if "loop" in chosen else [],
        "loop_champion_after": loop.champions,
        # challengers held for a review: what approving each would have changed on the next batch (not in loop_f1)
        "held_challengers": [
            {
                "batch": h["batch"],
                "version": h["new"],
                "champion": h["old"],
                "f1": round(100 * h["new_f1"], 2),
                "champion_f1": round(100 * h["old_f1"], 2),
                "diff_ci": [round(100 * c, 1) for c in h["ci"]],
            }
            for h in held
        ],
        "per_batch_f1": {p: [round(100 * s["macro_f1"], 2) if s else None for s in policies[p].scores] for p in chosen},
        "loop_champion_recall": [s["recall"] if s else None for s in policies["loop"].scores]
        if "loop" in chosen
        else [],
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
