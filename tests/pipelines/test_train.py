import json
from pathlib import Path

import pytest
from conftest import tiny_settings

from pipelines.context import StepContext
from pipelines.data.datasets import write_parquet
from pipelines.runner import run_step


def _accept(settings, frame, name):
    uri = settings.uri(settings.paths.accepted, name + ".parquet")
    write_parquet(frame, uri, settings)
    return uri


def _ctx(settings, run_id, accepted_uri, **kw):
    return StepContext(
        step="train",
        run_id=run_id,
        settings=settings,
        inputs={"accepted_uri": accepted_uri, **kw.pop("inputs", {})},
        **kw,
    )


def _tensors(model_dir):
    from safetensors.torch import load_file

    return load_file(str(Path(model_dir) / "model.safetensors"))


@pytest.fixture(scope="module")
def retrained(tmp_path_factory, tiny_model_dir, demo_frames):
    """One retrain on the reference batch (action from the decide result), shared by the tests below."""
    settings = tiny_settings(
        tmp_path_factory.mktemp("train"),
        tiny_model_dir,
        train__fine_tune_epochs=3,
        train__fine_tune_learning_rate=5e-5,
    )
    uri = _accept(settings, demo_frames["batch_000_reference"], "batch_000")
    ctx = _ctx(settings, "run-1", uri)
    ctx.storage.write_text(ctx.output("../decide/result.json"), json.dumps({"action": "retrain"}))
    return settings, run_step(ctx)


def test_train_retrain_learns_and_writes_outputs(retrained, demo_frames):
    import pandas as pd
    from mlflow import MlflowClient

    settings, result = retrained

    assert result["action"] == "retrain" and result["base"] == settings.train.base_model
    m = result["metrics"]
    assert m["val_accuracy"] > m["val_accuracy_initial"] + 0.1, m
    assert m["val_macro_f1"] > m["val_macro_f1_initial"], m
    assert m["samples_per_s"] > 0 and m["train_rows"] > 400
    assert (result["device"], result["precision"]) == ("cpu", "fp32")
    model_dir = Path(result["model_uri"])
    for name in ["model.safetensors", "config.json", "labels.json", "tokenizer_config.json", "vocab.txt"]:
        assert (model_dir / name).is_file(), name
    config = json.loads((model_dir / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
    assert (Path(result["reference_uri"]) / "reference.npz").is_file()
    eval_df = pd.read_parquet(result["eval_uri"])
    assert len(eval_df) == result["eval_rows"] > 50 and eval_df["text"].is_unique
    train_texts = set(demo_frames["batch_000_reference"]["text"]) - set(eval_df["text"])
    assert len(train_texts) >= m["train_rows"]

    client = MlflowClient(settings.mlflow.tracking_uri)
    runs = client.search_runs(
        [client.get_experiment_by_name(settings.mlflow.experiment_name).experiment_id],
        filter_string="tags.`mlops.step` = 'train' and tags.`mlops.pipeline_run_id` = 'run-1'",
    )
    assert len(runs) == 1
    assert runs[0].data.params["action"] == "retrain" and "final_val_macro_f1" in runs[0].data.metrics
    assert "training_curve.png" in [a.path for a in client.list_artifacts(runs[0].info.run_id)]


def test_train_fine_tune_freezes_lower_layers(retrained, demo_frames):
    from pipelines.data.datasets import split_holdout

    champion_settings, champion = retrained
    settings = champion_settings.with_overrides(
        {
            "train.freeze_layers": 1,
            "train.fine_tune_learning_rate": 2e-3,
            "train.fine_tune_epochs": 5,
            "train.fine_tune_sample_passes": 100_000,
        }
    )
    new = _accept(settings, demo_frames["batch_003_severe"], "batch_003")

    result = run_step(
        _ctx(
            settings, "run-2", new, params={"action": "fine_tune"}, inputs={"champion_model_uri": champion["model_uri"]}
        )
    )

    assert result["action"] == "fine_tune" and result["base"] == champion["model_uri"]
    trainable = split_holdout(demo_frames["batch_003_severe"], settings)[0]  # the share follows the stored batch
    new_trainable = len(trainable.drop_duplicates(subset=["text", "label"]))
    assert result["replay_rows"] == round(new_trainable * settings.train.replay_ratio)
    m = result["metrics"]
    assert m["val_loss"] < m["val_loss_initial"] - 0.1, m
    assert m["val_macro_f1"] > m["val_macro_f1_initial"] + 0.05, m
    before, after = _tensors(champion["model_uri"]), _tensors(result["model_uri"])
    frozen = [k for k in before if ".embeddings." in k or ".encoder.layer.0." in k]
    trained = [k for k in before if ".encoder.layer.1." in k or k.startswith("classifier.")]
    assert frozen and trained
    for key in frozen:
        assert before[key].equal(after[key]), key
    assert all(not before[k].equal(after[k]) for k in trained)


def test_train_fine_tune_without_champion_says_so(settings, demo_frames):
    uri = _accept(settings, demo_frames["batch_001_in_domain"], "batch_001")
    with pytest.raises(ValueError, match="fine_tune needs a champion"):
        run_step(_ctx(settings, "run-1", uri, params={"action": "fine_tune"}))


def test_train_skip_action_has_nothing_to_train(settings, demo_frames):
    uri = _accept(settings, demo_frames["batch_001_in_domain"], "batch_001")
    with pytest.raises(ValueError, match="nothing to train"):
        run_step(_ctx(settings, "run-1", uri, params={"action": "skip"}))


def test_train_without_action_names_the_fix(settings, demo_frames):
    uri = _accept(settings, demo_frames["batch_001_in_domain"], "batch_001")
    with pytest.raises(ValueError, match="run decide first"):
        run_step(_ctx(settings, "run-1", uri))


def test_label_ids_unknown_label_names_it(settings):
    import pandas as pd

    from pipelines.data.datasets import label_ids

    with pytest.raises(ValueError, match=r"\['mixed'\].*data.labels"):
        label_ids(pd.DataFrame({"text": ["a", "b"], "label": ["positive", "mixed"]}), settings)


def test_class_weights_balance_counts():
    from pipelines.data.datasets import class_weights

    assert class_weights([0, 0, 0, 1], 3) == [4 / 6, 2.0, 1.0]


def _fit_on_contradicting_validation(tmp_path, tiny_model_dir, demo_frames, min_rows: int, epochs: int):
    """``fit`` with validation labels that contradict the training labels: validation macro-F1 is best after the
    first epoch and falls as the model learns. Returns (settings, train_df, val_df, result)."""
    from pipelines.data.datasets import validation_split
    from pipelines.model.modeling import load_base
    from pipelines.steps.train import fit

    settings = tiny_settings(
        tmp_path, tiny_model_dir, train__early_stopping_patience=2, train__early_stopping_min_rows=min_rows
    )
    rows = demo_frames["batch_000_reference"].drop_duplicates(subset=["text"]).head(400)
    train_df, val_df = validation_split(rows, settings)
    flip = {"negative": "positive", "positive": "negative", "neutral": "neutral"}
    val_df = val_df.assign(label=val_df["label"].map(flip))
    model, tokenizer = load_base(settings)
    result = fit(
        settings, model, tokenizer, train_df, val_df, learning_rate=1e-3, epochs=epochs, work_dir=tmp_path / "ck"
    )
    return settings, train_df, val_df, result


def test_fit_stops_early_on_validation_macro_f1_and_restores_the_best_epoch(tmp_path, tiny_model_dir, demo_frames):
    """Early stopping ends the run and the first epoch's weights come back."""
    settings, train_df, val_df, result = _fit_on_contradicting_validation(
        tmp_path, tiny_model_dir, demo_frames, min_rows=50, epochs=8
    )
    evals = [h for h in result.history if "eval_macro_f1" in h and h["epoch"] > 0]
    best = max(evals, key=lambda h: (h["eval_macro_f1"], -h["epoch"]))
    m = result.metrics
    assert m["epochs_run"] < 8, evals  # stopped early
    assert m["epochs_run"] == best["epoch"] + settings.train.early_stopping_patience
    assert m["best_epoch"] == best["epoch"]
    # The returned model is the best epoch's: evaluating it again gives that epoch's validation macro-F1.
    assert abs(m["val_macro_f1"] - best["eval_macro_f1"]) < 1e-6, (m, evals)
    assert m["sample_passes"] == len(train_df) * m["epochs_run"]
    assert m["early_stopping"] == 1.0 and len(val_df) >= 50


def test_fit_runs_every_epoch_and_keeps_the_last_when_the_validation_split_is_too_small(
    tmp_path, tiny_model_dir, demo_frames
):
    """Fewer validation rows than train.early_stopping_min_rows: no epoch is picked by the split, all planned epochs
    run, the last epoch's weights are returned and no checkpoint is kept."""
    _, train_df, val_df, result = _fit_on_contradicting_validation(
        tmp_path, tiny_model_dir, demo_frames, min_rows=500, epochs=5
    )
    evals = [h for h in result.history if "eval_macro_f1" in h and h["epoch"] > 0]
    m = result.metrics
    assert m["early_stopping"] == 0.0 and len(val_df) < 500
    assert m["epochs_run"] == 5 and sorted({h["epoch"] for h in evals}) == [1, 2, 3, 4, 5]
    assert m["best_epoch"] < 5, evals  # a better epoch existed on the split, and was not restored
    assert abs(m["val_macro_f1"] - evals[-1]["eval_macro_f1"]) < 1e-6, (m, evals)
    assert m["sample_passes"] == len(train_df) * 5
    assert not list((tmp_path / "ck").glob("checkpoint-*"))


def test_epochs_follow_the_data_size(tmp_path, tiny_model_dir):
    from pipelines.steps.train import epochs_for

    settings = tiny_settings(
        tmp_path,
        tiny_model_dir,
        train__epochs=10,
        train__fine_tune_epochs=4,
        train__min_epochs=2,
        train__target_sample_passes=2400,
        train__fine_tune_sample_passes=1200,
    )
    assert epochs_for(100, settings, "retrain") == 10  # capped
    assert epochs_for(600, settings, "retrain") == 4
    assert epochs_for(5000, settings, "retrain") == 2  # floor
    assert epochs_for(100, settings, "fine_tune") == 4
    assert epochs_for(600, settings, "fine_tune") == 2


def test_head_warm_up_trains_only_the_head_and_restores_trainable_flags(tmp_path, tiny_model_dir, demo_frames):
    import torch

    from pipelines.data.datasets import validation_split
    from pipelines.model.modeling import load_base
    from pipelines.steps.train import warm_up_head

    settings = tiny_settings(tmp_path, tiny_model_dir, train__head_warmup_epochs=1)
    rows = demo_frames["batch_000_reference"].drop_duplicates(subset=["text"]).head(200)
    train_df, val_df = validation_split(rows, settings)
    model, tokenizer = load_base(settings)
    model.bert.embeddings.word_embeddings.weight.requires_grad = False  # frozen before: stays frozen
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}

    result = warm_up_head(settings, model, tokenizer, train_df, val_df, tmp_path / "warm")

    after = result.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("classifier.") for k in changed), changed
    assert result.metrics["sample_passes"] == len(train_df)
    flags = {n: p.requires_grad for n, p in result.model.named_parameters()}
    assert flags["bert.embeddings.word_embeddings.weight"] is False
    assert all(v for n, v in flags.items() if n != "bert.embeddings.word_embeddings.weight")


def _register_champion(settings, accepted_batches):
    """A registry with a champion whose data.accepted_batches tag lists ``accepted_batches`` (None: no tag)."""
    from mlflow import MlflowClient

    from pipelines.io.tracking import configure

    configure(settings)
    uri = settings.mlflow.tracking_uri
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name = settings.registry.model_name
    client.create_registered_model(name)
    tags = {} if accepted_batches is None else {"data.accepted_batches": json.dumps(accepted_batches)}
    version = client.create_model_version(name, source=str(settings.uri("models", "v1")), tags=tags)
    client.set_registered_model_alias(name, "champion", version.version)


def test_fine_tune_catches_up_on_batches_the_champion_has_not_learned(settings, demo_frames):
    from pipelines.steps.train import _training_data, unlearned_batches

    frames = list(demo_frames.values())
    first, held, current = (_accept(settings, frames[i], f"batch_00{i}") for i in range(3))
    _register_champion(settings, ["batch_000.parquet"])
    # batch_001 arrived after the champion (its challenger was held): the fine-tune on batch_002 learns it too.
    assert unlearned_batches(settings, current) == [held]
    data = _training_data(_ctx(settings, "run-3", current), "fine_tune", current)
    assert data["catch_up"] == ["batch_001.parquet"]
    assert data["new_rows"] == len(frames[1]) + len(frames[2])
    held_texts = set(frames[1]["text"])
    assert held_texts & set(data["rows"]["text"]), "the held batch's trainable rows are new rows"
    assert held_texts & set(data["new_holdout"]["text"]), "its hold-out rows join the evaluation set"
    # A retrain learns everything anyway; it reports no catch-up.
    assert _training_data(_ctx(settings, "run-3", current), "retrain", current)["catch_up"] == []
    assert first not in unlearned_batches(settings, current)


def test_fine_tune_without_the_batches_tag_learns_the_new_batch_only(settings, demo_frames, caplog):
    from pipelines.steps.train import unlearned_batches

    frames = list(demo_frames.values())
    uris = [_accept(settings, frames[i], f"batch_00{i}") for i in range(3)]
    _register_champion(settings, None)
    with caplog.at_level("WARNING", logger="pipelines.steps.train"):
        assert unlearned_batches(settings, uris[2]) == []
    assert "no readable data.accepted_batches tag" in caplog.text
