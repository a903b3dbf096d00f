import json
from pathlib import Path

import pandas as pd
import pytest

from pipelines.context import StepContext
from pipelines.data.reference import save_reference
from pipelines.runner import run_step
from pipelines.steps.drift import run


def _accepted(settings, name, df) -> str:
    path = Path(settings.uri("accepted", f"{name}.parquet"))
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path, index=False)
    return str(path)


def _drift(settings, accepted_uri, reference_uri=None, run_id="r1"):
    inputs = {"accepted_uri": accepted_uri}
    if reference_uri:
        inputs["reference_uri"] = str(reference_uri)
    return run_step(StepContext(step="drift", run_id=run_id, settings=settings, inputs=inputs))


def _decide(settings, run_id):
    return run_step(StepContext(step="decide", run_id=run_id, settings=settings))


@pytest.fixture
def demo_reference(settings, demo_frames, tmp_path):
    return save_reference(settings, demo_frames["batch_000_reference"], tmp_path / "reference")


def test_drift_demo_batches_give_expected_severity_and_action(settings, demo_frames, demo_reference):
    # the drift -> action mapping alone: the young-history rule (every demo batch doubles the history) is off here
    settings = settings.with_overrides({"decision.min_data_growth": 0.0})
    expected = {
        "batch_000_reference": ("none", "skip"),
        "batch_001_in_domain": ("none", "skip"),
        "batch_002_moderate": ("moderate", "fine_tune"),
        "batch_003_severe": ("severe", "fine_tune"),  # decision.severe_action
    }
    for name, (severity, action) in expected.items():
        summary = _drift(settings, _accepted(settings, name, demo_frames[name]), demo_reference, run_id=name)
        assert summary["severity"] == severity, (name, summary["reasons"])
        assert summary["has_reference"] is True and summary["champion_version"] is None
        assert _decide(settings, name)["action"] == action, name
        assert set(summary["tests"]) == {"mmd", "ks_embedding", "label", "length", "quality"}
        for test in ("mmd", "ks_embedding", "label", "length"):
            assert {"statistic", "p_value", "threshold", "drifted"} <= set(summary["tests"][test]), test
        assert summary["tests"]["quality"]["skipped"] == "no champion"
        assert "severe if MMD p < 0.01 and MMD distance >= 0.05" in summary["rule"]
    severe = json.loads(Path(summary["report_uri"]).read_text())
    assert any(r.startswith("embedding MMD p=0 < 0.01") for r in severe["reasons"]), severe["reasons"]
    assert any(r.startswith("label drift p=") for r in severe["reasons"])
    for plot in severe["plots"].values():
        assert Path(plot).read_bytes()[:4] == b"\x89PNG"


def test_drift_logs_images_to_mlflow_and_is_reproducible(settings, demo_frames, demo_reference):
    from mlflow import MlflowClient

    uri = _accepted(settings, "batch_002_moderate", demo_frames["batch_002_moderate"])
    first = _drift(settings, uri, demo_reference, run_id="again")
    second = _drift(settings, uri, demo_reference, run_id="again")
    assert first["tests"] == second["tests"]
    client = MlflowClient(settings.mlflow.tracking_uri)
    runs = client.search_runs(
        [client.get_experiment_by_name(settings.mlflow.experiment_name).experiment_id],
        filter_string="tags.`mlops.step` = 'drift'",
    )
    assert len(runs) == 1
    names = {f.path for f in client.list_artifacts(runs[0].info.run_id, "drift")}
    assert {"drift/embedding_pca.png", "drift/label_histogram.png", "drift/drift_report.json"} <= names
    assert runs[0].data.tags["drift.severity"] == "moderate"
    assert runs[0].data.metrics["drift.mmd.statistic"] == pytest.approx(first["tests"]["mmd"]["statistic"])


def test_drift_threshold_in_config_changes_decision(make_settings, demo_frames, demo_reference):
    name = "batch_002_moderate"
    strict = make_settings(drift__mmd_severe_distance=0.001, decision__severe_action="retrain")
    summary = _drift(strict, _accepted(strict, name, demo_frames[name]), demo_reference, run_id="strict")
    assert summary["severity"] == "severe"
    assert any("distance >= 0.001" in r for r in summary["reasons"])
    assert _decide(strict, "strict")["action"] == "retrain"


def test_drift_without_champion_or_reference_reports_no_reference(settings, demo_frames):
    summary = _drift(settings, _accepted(settings, "b", demo_frames["batch_001_in_domain"]))
    assert summary["severity"] == "none" and summary["has_reference"] is False
    assert summary["champion_version"] is None and summary["tests"] == {}
    assert Path(summary["report_uri"]).is_file()
    assert _decide(settings, "r1")["action"] == "retrain"


def test_drift_missing_input_and_reference_fail_clearly(settings, tmp_path):
    with pytest.raises(ValueError, match="'accepted_uri'"):
        run(StepContext(step="drift", run_id="r", settings=settings))
    uri = _accepted(settings, "b", pd.DataFrame({"text": ["a text here"] * 3, "label": ["positive"] * 3}))
    with pytest.raises(FileNotFoundError, match="no drift reference at"):
        _drift(settings, uri, tmp_path / "nowhere")


def test_drift_embeddings_stay_within_caps(make_settings, demo_frames, demo_reference):
    settings = make_settings(drift__batch_max_rows=100, drift__mmd_max_rows=50, drift__reference_max_rows=200)
    summary = _drift(settings, _accepted(settings, "b", demo_frames["batch_003_severe"]), demo_reference)
    assert summary["rows"] == 400 and summary["rows_embedded"] == 100 and summary["reference_rows"] == 200
    assert summary["tests"]["mmd"]["reference_rows"] == 50 and summary["tests"]["mmd"]["batch_rows"] == 50
    assert sum(summary["tests"]["label"]["batch_counts"].values()) == 400  # labels use every row


# --- champion quality ----------------------------------------------------------------------------------
def _register_champion(settings, demo_frames, tmp_path, macro_f1):
    import mlflow
    import mlflow.pyfunc

    from pipelines.io.tracking import configure, experiment_id

    class AlwaysPositive(mlflow.pyfunc.PythonModel):
        """The served pyfunc's stand-in; drift must score the bundle, never unpickle this."""

        def predict(self, context, model_input, params=None):
            raise AssertionError("drift scored the pickled pyfunc instead of the bundle")

    from registry_doubles import onnx_bundle

    bundle = onnx_bundle(tmp_path / "bundle", [-1.0, 0.0, 1.0])  # every text is 'positive'
    save_reference(settings, demo_frames["batch_000_reference"], bundle / "reference")
    client = configure(settings)
    # an explicit experiment: the fluent API may still hold an active experiment of an earlier test's store
    with mlflow.start_run(experiment_id=experiment_id(settings)):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=AlwaysPositive(),
            artifacts={"bundle": str(bundle)},
            registered_model_name=settings.registry.model_name,
        )
    version = info.registered_model_version
    client.set_registered_model_alias(settings.registry.model_name, "champion", version)
    client.set_model_version_tag(settings.registry.model_name, version, "eval.macro_f1", str(macro_f1))
    client.set_model_version_tag(settings.registry.model_name, version, "fine_tunes_since_retrain", "2")
    return str(version)


@pytest.mark.parametrize(("macro_f1", "severity"), [(0.2, "none"), (0.9, "severe")])
def test_drift_champion_quality_on_batch(make_settings, demo_frames, tmp_path, macro_f1, severity):
    settings = make_settings(registry__model_name=f"drift-quality-{tmp_path.name}")
    version = _register_champion(settings, demo_frames, tmp_path, macro_f1)
    summary = _drift(settings, _accepted(settings, "b", demo_frames["batch_001_in_domain"]))
    assert summary["champion_version"] == version and summary["has_reference"] is True
    assert summary["fine_tunes_since_retrain"] == 2
    quality = summary["tests"]["quality"]
    # Always 'positive': F1 of the positive class only, averaged over the three classes present.
    share = (demo_frames["batch_001_in_domain"]["label"] == "positive").mean()
    assert quality["batch_macro_f1"] == pytest.approx(2 * share / (1 + share) / 3, abs=1e-6)
    assert quality["statistic"] == pytest.approx(macro_f1 - quality["batch_macro_f1"])
    assert summary["severity"] == severity, summary["reasons"]
    if severity == "severe":
        assert any(r.startswith("champion macro-F1 on the batch 0.2") and ">= 0.15" in r for r in summary["reasons"])


# --- the real encoder ----------------------------------------------------------------------------------
@pytest.mark.slow  # 25-60 s on two shared cores: the real MiniLM over 1,600 texts
def test_drift_minilm_defaults_on_demo_batches(make_settings, demo_frames, tmp_path):
    # Default thresholds and encoder; a smaller reference sample keeps it to seconds of embedding.
    settings = make_settings(
        drift__encoder="minilm",
        drift__mmd_permutations=100,
        drift__reference_max_rows=400,
        decision__min_data_growth=0.0,  # the drift -> action mapping alone
    )
    ref = save_reference(settings, demo_frames["batch_000_reference"], tmp_path / "ref")
    got = {}
    for name in ["batch_001_in_domain", "batch_002_moderate", "batch_003_severe"]:
        summary = _drift(settings, _accepted(settings, name, demo_frames[name]), ref, run_id=name)
        got[name] = (summary["severity"], _decide(settings, name)["action"])
    assert got == {
        "batch_001_in_domain": ("none", "skip"),
        "batch_002_moderate": ("moderate", "fine_tune"),
        "batch_003_severe": ("severe", "fine_tune"),  # decision.severe_action
    }


@pytest.mark.slow  # 30-60 s on two shared cores: MiniLM over long drug reviews
def test_drift_minilm_defaults_on_real_text(make_settings, drug_reviews, tweets, tmp_path):
    # Default thresholds; smaller row caps keep the long drug reviews within seconds on two cores.
    settings = make_settings(
        drift__encoder="minilm", drift__mmd_permutations=100, drift__reference_max_rows=200, drift__batch_max_rows=200
    )
    drugs = drug_reviews.sort_values("date")
    early, late = drugs[drugs["date"] < "2015"], drugs[drugs["date"] >= "2015"]
    ref = save_reference(settings, early, tmp_path / "ref")
    period = _drift(settings, _accepted(settings, "late", late), ref, run_id="period")
    assert period["severity"] in {"none", "moderate"}, period["reasons"]
    other = _drift(settings, _accepted(settings, "tweets", tweets.sample(200, random_state=0)), ref, run_id="tw")
    assert other["severity"] == "severe", other["reasons"]
    assert other["tests"]["mmd"]["statistic"] > 3 * settings.drift.mmd_severe_distance
    assert period["tests"]["mmd"]["statistic"] < settings.drift.mmd_severe_distance / 3
    print(
        {
            k: (v["severity"], round(v["tests"]["mmd"]["statistic"], 4), v["tests"]["ks_embedding"]["statistic"])
            for k, v in {"period": period, "tweets": other}.items()
        }
    )


def test_drift_fdr_correction_from_config(make_settings, demo_frames, demo_reference):
    settings = make_settings(drift__ks_correction="fdr")
    quiet = _drift(settings, _accepted(settings, "in", demo_frames["batch_001_in_domain"]), demo_reference, "in")
    shifted = _drift(settings, _accepted(settings, "mod", demo_frames["batch_002_moderate"]), demo_reference, "mod")
    assert quiet["tests"]["ks_embedding"]["correction"] == "fdr" and not quiet["tests"]["ks_embedding"]["drifted"]
    assert shifted["tests"]["ks_embedding"]["drifted"] and shifted["tests"]["ks_embedding"]["drifted_dims"] > 0
    assert quiet["severity"] == "none" and shifted["severity"] == "moderate"
