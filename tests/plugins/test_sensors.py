"""``ReviewSensor.poke`` against a real MLflow registry (SQLite): auto returns at once unless the version needs a
review, in which case it waits for the reviewer's tag exactly as under manual."""

from __future__ import annotations

import logging

import pytest
from airflow.sdk import PokeReturnValue

from mlops_airflow.sensors import ReviewSensor, needs_review
from pipelines.config import get_settings, settings_env
from pipelines.tracking import configure, experiment_id


@pytest.fixture
def version(tmp_path, monkeypatch):
    """Version 1 of a registered model (any artifact: the sensor reads only tags), with settings in the env."""
    settings = get_settings(
        paths__artifact_root=str(tmp_path / "var"),
        mlflow__tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        registry__model_name="sensed",
    )
    for key, value in settings_env(settings).items():
        monkeypatch.setenv(key, value)
    client = configure(settings)
    run = client.create_run(experiment_id(settings))
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "MLmodel").write_text("flavors: {}\n")
    client.log_artifacts(run.info.run_id, str(tmp_path / "model"), "model")
    client.create_registered_model("sensed")
    mv = client.create_model_version("sensed", source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    return settings, client, str(mv.version)


def _poke(version: str, promotion: str) -> PokeReturnValue | bool:
    sensor = ReviewSensor(task_id="wait_for_review", version=version)
    return sensor.poke({"params": {"promotion": promotion}})


def test_auto_returns_at_once_when_no_review_is_needed(version, monkeypatch):
    settings, client, v = version
    monkeypatch.setenv("MLOPS_REGISTRY__PROMOTION", "auto")
    client.set_model_version_tag("sensed", v, "eval.needs_review", "false")

    out = _poke(v, "auto")

    assert isinstance(out, PokeReturnValue) and out.is_done
    assert out.xcom_value == {"decision": "auto", "version": v}
    assert needs_review(settings, v) == (False, "")


def test_auto_waits_for_the_reviewer_when_the_version_needs_review(version, caplog, capsys, monkeypatch):
    settings, client, v = version
    monkeypatch.setenv("MLOPS_REGISTRY__PROMOTION", "auto")
    client.set_model_version_tag("sensed", v, "eval.needs_review", "true")
    client.set_model_version_tag("sensed", v, "eval.review_reasons", "candidate below the TF-IDF baseline")

    with caplog.at_level(logging.INFO):
        assert _poke(v, "auto") is False  # held like under manual
    logged = caplog.text + capsys.readouterr().out
    assert "eval.needs_review=true (candidate below the TF-IDF baseline)" in logged, logged

    client.set_model_version_tag("sensed", v, settings.registry.review_tag, "approved")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert _poke(v, "auto") is False  # an approval that names no reviewer does not count
    logged = caplog.text + capsys.readouterr().out
    assert "names no reviewer: add the tag review_by=<your name> (registry.require_reviewer is true)" in logged

    client.set_model_version_tag("sensed", v, settings.registry.review_by_tag, "frank")
    out = _poke(v, "auto")
    assert isinstance(out, PokeReturnValue) and out.xcom_value == {"decision": "approve", "version": v}


def test_manual_waits_even_without_the_needs_review_tag(version):
    _, client, v = version
    assert _poke(v, "manual") is False
    client.set_model_version_tag("sensed", v, "review", "rejected")
    out = _poke(v, "manual")
    assert isinstance(out, PokeReturnValue) and out.xcom_value == {"decision": "reject", "version": v}


def test_form_auto_under_a_manual_ceiling_is_refused(version):
    from pipelines.promote import PromotionRefused

    _, _, v = version
    with pytest.raises(PromotionRefused, match="param promotion='auto' is refused: registry.promotion is 'manual'"):
        _poke(v, "auto")


def test_config_auto_lowered_to_manual_by_the_form_waits(version, monkeypatch):
    _, client, v = version
    monkeypatch.setenv("MLOPS_REGISTRY__PROMOTION", "auto")
    client.set_model_version_tag("sensed", v, "eval.needs_review", "false")
    assert _poke(v, "manual") is False
