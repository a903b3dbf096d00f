"""A generator of labelled demo batches, so that a fresh clone has data to run the loop on.

Reviews are composed from domain vocabularies (products and aspects), sentiment phrases of graded strength,
negations, hedges, and a little label noise, so a model has to read the words to classify them. The batches:

| file | what | domains | label mix (neg/neu/pos) |
| --- | --- | --- | --- |
| ``batch_000_reference.csv`` | the bootstrap data | electronics, books | 35/20/45 |
| ``batch_001_in_domain.csv`` | same distribution, new rows | electronics, books | 35/20/45 |
| ``batch_002_moderate.csv`` | a new domain joins, negatives grow | + kitchen | 50/20/30 |
| ``batch_003_severe.csv`` | another register entirely: travel and banking posts | travel, banking | 60/20/20 |
| ``batch_004_malformed.csv`` | wrong delimiter, a missing column, labels outside the set | - | - |
"""

from __future__ import annotations

import csv
import io
import json
import random
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from pipelines.config import Settings
from pipelines.io.storage import get_storage, join

_KEY = {"negative": "neg", "neutral": "neu", "positive": "pos"}


@cache
def _texts() -> dict[str, Any]:
    """The vocabularies the texts are composed from (``domains`` with their items, aspects and graded phrases;
    ``review_templates``, ``post_templates``, ``adjectives``, ``openers``, ``closers``, ``tags``), shipped as
    ``pipelines/data/demo_texts.json``; read on first use, so importing this module reads no file."""
    return json.loads(resources.files("pipelines.data").joinpath("demo_texts.json").read_text("utf-8"))


@dataclass(frozen=True)
class BatchSpec:
    name: str
    rows: int
    domains: dict[str, float]
    labels: dict[str, float]
    seed: int
    style: str = "review"


BATCHES: tuple[BatchSpec, ...] = (
    BatchSpec(
        "batch_000_reference",
        800,
        {"electronics": 0.5, "books": 0.5},
        {"negative": 0.35, "neutral": 0.2, "positive": 0.45},
        seed=0,
    ),
    BatchSpec(
        "batch_001_in_domain",
        400,
        {"electronics": 0.5, "books": 0.5},
        {"negative": 0.35, "neutral": 0.2, "positive": 0.45},
        seed=1,
    ),
    BatchSpec(
        "batch_002_moderate",
        400,
        {"electronics": 0.4, "books": 0.3, "kitchen": 0.3},
        {"negative": 0.5, "neutral": 0.2, "positive": 0.3},
        seed=2,
    ),
    BatchSpec(
        "batch_003_severe",
        400,
        {"travel": 0.5, "banking": 0.5},
        {"negative": 0.6, "neutral": 0.2, "positive": 0.2},
        seed=3,
        style="post",
    ),
)


def _pick(rng: random.Random, weights: dict[str, float]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def _sentence(rng: random.Random, domain: str, key: str, style: str) -> str:
    texts = _texts()
    vocab = texts["domains"][domain]
    phrase = rng.choice(vocab[key])
    fields = {
        "item": rng.choice(vocab["items"]),
        "aspect": rng.choice(vocab["aspects"]),
        "phrase": phrase,
        "phrase_short": rng.choice(vocab[key]),
        "adj": rng.choice(texts["adjectives"][key]),
        "opener": rng.choice(texts["openers"][key]),
        "closer": rng.choice(texts["closers"][key]),
        "good_word": rng.choice(["good", "great", "worth it"]),
        "tag": rng.choice(texts["tags"]),
        "handle": rng.choice(["airline_help", "mybank", "travelguru", "support", "cs_team"]),
    }
    templates = texts["post_templates"] if style == "post" else texts["review_templates"]
    return rng.choice(templates[key]).format(**fields).strip()


def _text(rng: random.Random, domain: str, label: str, style: str) -> str:
    key = _KEY[label]
    parts = [_sentence(rng, domain, key, style)]
    # Mixed reviews: positive and negative texts sometimes concede a point, so single words are not enough.
    if style == "review" and key != "neu" and rng.random() < 0.3:
        other = "neg" if key == "pos" else "pos"
        parts.append(
            f"{rng.choice(['Granted,', 'Although', 'Sure,'])} the {rng.choice(_texts()['domains'][domain]['aspects'])} "
            f"is {rng.choice(_texts()['adjectives'][other])}."
        )
    if rng.random() < 0.4:
        parts.append(_sentence(rng, domain, key, style))
    text = " ".join(parts)
    if rng.random() < 0.1:
        text = text.lower()
    return text


def generate(spec: BatchSpec) -> list[dict[str, str]]:
    """The rows of one batch: ``id``, ``text``, ``label``, ``domain``. About 4 % of labels are flipped."""
    rng = random.Random(spec.seed)
    rows = []
    for i in range(spec.rows):
        domain = _pick(rng, spec.domains)
        label = _pick(rng, spec.labels)
        text = _text(rng, domain, label, spec.style)
        if rng.random() < 0.04:
            label = rng.choice([x for x in _KEY if x != label])
        rows.append({"id": f"{spec.name}-{i:05d}", "text": text, "label": label, "domain": domain})
    return rows


def _to_csv(rows: list[dict[str, str]], delimiter: str = ",") -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), delimiter=delimiter)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


def malformed_batch() -> bytes:
    """Semicolon-delimited, no ``label`` column under that name, and labels outside the set."""
    rows = [
        {"id": f"bad-{i}", "review_text": f"item {i} was {'ok' if i % 2 else 'bad'}", "rating": str(i % 11)}
        for i in range(60)
    ]
    return _to_csv(rows, delimiter=";")


def write_demo_batches(settings: Settings, only: list[str] | None = None) -> list[str]:
    """Write the demo batches into the landing folder and return their URIs (existing files are rewritten)."""
    storage = get_storage(settings)
    landing = settings.uri(settings.paths.landing)
    uris = []
    for spec in BATCHES:
        if only and spec.name not in only:
            continue
        uris.append(storage.write_bytes(join(landing, f"{spec.name}.csv"), _to_csv(generate(spec))))
    if not only or "batch_004_malformed" in only:
        uris.append(storage.write_bytes(join(landing, "batch_004_malformed.csv"), malformed_batch()))
    return uris
