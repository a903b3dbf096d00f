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
import random
from dataclasses import dataclass

from pipelines.config import Settings
from pipelines.storage import get_storage, join

_DOMAINS: dict[str, dict[str, list[str]]] = {
    "electronics": {
        "items": [
            "laptop",
            "phone",
            "headset",
            "charger",
            "monitor",
            "keyboard",
            "router",
            "smartwatch",
            "tablet",
            "speaker",
            "camera",
            "power bank",
            "mouse",
            "graphics card",
            "earbuds",
        ],
        "aspects": [
            "battery life",
            "screen",
            "build quality",
            "sound",
            "setup",
            "firmware",
            "signal range",
            "charging speed",
            "display",
            "touchpad",
            "bluetooth pairing",
            "fan noise",
        ],
        "pos": [
            "works flawlessly",
            "is blazing fast",
            "lasts all day",
            "paired instantly",
            "is crisp and bright",
            "feels premium",
            "exceeded my expectations",
            "runs cool and quiet",
        ],
        "neg": [
            "died after a week",
            "keeps disconnecting",
            "overheats constantly",
            "stopped charging",
            "is painfully slow",
            "cracked on day one",
            "drains in two hours",
            "freezes every few minutes",
        ],
        "neu": [
            "does what the box says",
            "is about average",
            "is fine for the price",
            "works as described",
            "is neither great nor terrible",
            "is comparable to my old one",
        ],
    },
    "books": {
        "items": [
            "novel",
            "memoir",
            "cookbook",
            "thriller",
            "biography",
            "poetry collection",
            "textbook",
            "fantasy saga",
            "short story anthology",
            "graphic novel",
            "history book",
            "self-help guide",
        ],
        "aspects": [
            "plot",
            "characters",
            "pacing",
            "writing style",
            "ending",
            "dialogue",
            "world building",
            "translation",
            "illustrations",
            "research",
            "prose",
            "chapter structure",
        ],
        "pos": [
            "kept me up all night",
            "is beautifully written",
            "moved me to tears",
            "is a masterpiece",
            "grips you from page one",
            "is witty and warm",
            "stayed with me for weeks",
        ],
        "neg": [
            "is a slog to finish",
            "falls completely flat",
            "is riddled with clichés",
            "bored me to death",
            "is full of plot holes",
            "made no sense at all",
            "was a waste of time",
        ],
        "neu": [
            "is an ordinary read",
            "is decent but forgettable",
            "has its moments",
            "is what you would expect",
            "is okay for a long flight",
            "reads like many others",
        ],
    },
    "kitchen": {
        "items": [
            "blender",
            "air fryer",
            "coffee grinder",
            "stand mixer",
            "toaster",
            "rice cooker",
            "kettle",
            "chef knife",
            "frying pan",
            "pressure cooker",
            "dishwasher",
            "espresso machine",
        ],
        "aspects": [
            "heating",
            "blades",
            "non-stick coating",
            "temperature control",
            "lid",
            "cleanup",
            "capacity",
            "motor",
            "timer",
            "handle",
            "crust",
            "steam wand",
        ],
        "pos": [
            "cooks evenly every time",
            "cleans up in seconds",
            "is sturdy and sharp",
            "makes perfect crema",
            "heats up in no time",
            "is a joy to use",
        ],
        "neg": [
            "burns everything",
            "leaks all over the counter",
            "rusted within a month",
            "smells of plastic",
            "scratched after one use",
            "trips the breaker",
            "is dangerously flimsy",
        ],
        "neu": [
            "gets the job done",
            "is a standard appliance",
            "is adequate for small meals",
            "works like most",
            "is fine for occasional use",
        ],
    },
    "travel": {
        "items": [
            "flight",
            "hotel",
            "airline",
            "train ride",
            "layover",
            "cruise",
            "rental car",
            "hostel",
            "airport lounge",
            "shuttle",
            "check-in desk",
            "boarding gate",
        ],
        "aspects": [
            "crew",
            "legroom",
            "wifi",
            "breakfast",
            "room service",
            "baggage drop",
            "delay",
            "gate change",
            "upgrade",
            "loyalty points",
            "shuttle bus",
            "customer line",
        ],
        "pos": [
            "smoothest trip ever",
            "crew were angels",
            "upgraded for free",
            "landed early",
            "best stay in years",
            "totally worth it",
        ],
        "neg": [
            "lost my bag AGAIN",
            "delayed 6 hrs no info",
            "cancelled last minute",
            "rude staff smh",
            "charged twice wtf",
            "stuck on the tarmac forever",
            "never flying them again",
        ],
        "neu": [
            "boarding now",
            "on time so far",
            "gate moved to B12",
            "checking in",
            "waiting at the lounge",
            "terminal 2 is open",
        ],
    },
    "banking": {
        "items": [
            "bank app",
            "credit card",
            "mortgage",
            "savings account",
            "transfer",
            "atm",
            "loan",
            "support chat",
            "debit card",
            "overdraft",
            "statement",
            "wire",
        ],
        "aspects": [
            "fees",
            "interest rate",
            "login",
            "2fa code",
            "refund",
            "limit",
            "cashback",
            "branch hours",
            "payout",
            "hold on funds",
            "dispute",
            "chargeback",
        ],
        "pos": [
            "refund came thru fast",
            "zero fees finally",
            "support sorted it in 5 min",
            "rate is amazing",
            "app update is slick",
            "approved in a day",
        ],
        "neg": [
            "froze my account for no reason",
            "hidden fees everywhere",
            "app down again",
            "fraud alert spam",
            "on hold for an hour",
            "declined at the checkout lol",
            "lost my deposit",
        ],
        "neu": [
            "statement is out",
            "branch closes at 5",
            "rates update monday",
            "new card arrived",
            "moving my savings",
            "checking the balance",
        ],
    },
}

_REVIEW_TEMPLATES = {
    "pos": [
        "The {item} {phrase}.",
        "Honestly the {aspect} {phrase_short}, and the {item} {phrase}.",
        "I love this {item}: the {aspect} is {adj}.",
        "Five stars. This {item} {phrase}.",
        "After a month the {item} still {phrase}. {closer}",
        "{opener} the {aspect} is {adj} and it {phrase}.",
    ],
    "neg": [
        "The {item} {phrase}.",
        "Avoid this {item}; the {aspect} is {adj}.",
        "One star. The {item} {phrase}.",
        "I wanted to like this {item} but the {aspect} is {adj}. {closer}",
        "{opener} it {phrase} and the {aspect} is {adj}.",
        "Not {good_word} at all: the {item} {phrase}.",
    ],
    "neu": [
        "The {item} {phrase}.",
        "It is a {item}. The {aspect} is {adj}.",
        "Three stars: the {item} {phrase}.",
        "The {aspect} is {adj}; otherwise the {item} {phrase}.",
        "{opener} the {item} {phrase}, nothing more.",
    ],
}

_POST_TEMPLATES = {
    "pos": [
        "{item} today: {phrase} {tag}",
        "@{handle} {phrase}!! {tag}",
        "ok the {aspect} on this {item}? {phrase} {tag}",
    ],
    "neg": ["{item} today: {phrase} {tag}", "@{handle} {phrase} {tag}", "{aspect} on my {item}... {phrase} {tag}"],
    "neu": ["{item} update: {phrase} {tag}", "@{handle} {phrase} {tag}", "re the {aspect}: {phrase} {tag}"],
}

_ADJ = {
    "pos": ["excellent", "superb", "great", "wonderful", "solid", "outstanding", "impressive"],
    "neg": ["awful", "terrible", "broken", "disappointing", "poor", "useless", "dreadful"],
    "neu": ["okay", "average", "acceptable", "standard", "fine", "passable", "middling"],
}
_OPENERS = {
    "pos": ["Really happy:", "Pleasantly surprised,", "Would buy again:", "Great purchase,"],
    "neg": ["Very disappointed:", "Sadly,", "Returned it:", "What a letdown,"],
    "neu": ["For what it is,", "Overall,", "In short,", "To be fair,"],
}
_CLOSERS = {
    "pos": ["Highly recommended.", "Worth every penny.", "My family loves it too."],
    "neg": ["Do not buy.", "Asked for a refund.", "Customer service never replied."],
    "neu": ["It will do for now.", "No strong feelings either way.", "Time will tell."],
}
_TAGS = ["#travel", "#fail", "#banking", "#mondays", "#fintech", "#airport", "#help", "#blessed", ""]
_KEY = {"negative": "neg", "neutral": "neu", "positive": "pos"}


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
    vocab = _DOMAINS[domain]
    phrase = rng.choice(vocab[key])
    fields = {
        "item": rng.choice(vocab["items"]),
        "aspect": rng.choice(vocab["aspects"]),
        "phrase": phrase,
        "phrase_short": rng.choice(vocab[key]),
        "adj": rng.choice(_ADJ[key]),
        "opener": rng.choice(_OPENERS[key]),
        "closer": rng.choice(_CLOSERS[key]),
        "good_word": rng.choice(["good", "great", "worth it"]),
        "tag": rng.choice(_TAGS),
        "handle": rng.choice(["airline_help", "mybank", "travelguru", "support", "cs_team"]),
    }
    templates = _POST_TEMPLATES if style == "post" else _REVIEW_TEMPLATES
    return rng.choice(templates[key]).format(**fields).strip()


def _text(rng: random.Random, domain: str, label: str, style: str) -> str:
    key = _KEY[label]
    parts = [_sentence(rng, domain, key, style)]
    # Mixed reviews: positive and negative texts sometimes concede a point, so single words are not enough.
    if style == "review" and key != "neu" and rng.random() < 0.3:
        other = "neg" if key == "pos" else "pos"
        parts.append(
            f"{rng.choice(['Granted,', 'Although', 'Sure,'])} the {rng.choice(_DOMAINS[domain]['aspects'])} "
            f"is {rng.choice(_ADJ[other])}."
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
