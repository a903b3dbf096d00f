import pytest

from pipelines.data import demo


def test_demo_batches_are_deterministic_and_labelled(demo_frames):
    again = demo.generate(demo.BATCHES[0])
    assert again[:5] == demo_frames["batch_000_reference"].head(5).to_dict("records")
    for name, df in demo_frames.items():
        assert set(df.columns) >= {"text", "label", "domain"}, name
        assert set(df["label"]) == {"negative", "neutral", "positive"}, name
        assert df["text"].nunique() / len(df) > 0.7, f"{name}: texts are too repetitive"


def test_demo_shifts_are_real(demo_frames):
    ref = demo_frames["batch_000_reference"]
    moderate = demo_frames["batch_002_moderate"]
    severe = demo_frames["batch_003_severe"]
    assert set(severe["domain"]).isdisjoint(ref["domain"])
    assert "kitchen" in set(moderate["domain"]) - set(ref["domain"])
    ref_neg = (ref["label"] == "negative").mean()
    assert (moderate["label"] == "negative").mean() > ref_neg + 0.08
    assert (severe["label"] == "negative").mean() > ref_neg + 0.15
    ref_vocab = set(" ".join(ref["text"]).lower().split())
    sev_vocab = set(" ".join(severe["text"]).lower().split())
    assert len(sev_vocab - ref_vocab) / len(sev_vocab) > 0.4


def test_demo_words_carry_the_label(demo_frames):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    train, test = demo_frames["batch_000_reference"], demo_frames["batch_001_in_domain"]
    vec = TfidfVectorizer(ngram_range=(1, 2))
    clf = LogisticRegression(max_iter=1000, class_weight="balanced").fit(
        vec.fit_transform(train["text"]), train["label"]
    )
    f1 = f1_score(test["label"], clf.predict(vec.transform(test["text"])), average="macro")
    assert 0.6 < f1 < 0.99, f"demo text should be learnable but not trivial, macro-F1={f1:.3f}"


@pytest.mark.parametrize("sep", [",", ";"])
def test_demo_malformed_batch_is_malformed(sep):
    import io

    import pandas as pd

    df = pd.read_csv(io.BytesIO(demo.malformed_batch()), sep=sep)
    assert "label" not in df.columns
