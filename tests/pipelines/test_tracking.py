"""The MLflow parent run of a pipeline run spans its nested step runs (its duration in the UI is the run's)."""

import time

from registry_doubles import make_registry_settings

from pipelines.context import StepContext
from pipelines.steps import run_step
from pipelines.tracking import configure, parent_run_id, step_run


def test_the_parent_run_ends_after_its_last_step(tmp_path):
    settings = make_registry_settings(tmp_path)
    ctx = StepContext(step="drift", run_id="run-1", settings=settings)
    parent = parent_run_id(ctx)
    with step_run(ctx):
        time.sleep(0.3)
    client = configure(settings)
    child = client.search_runs(
        [client.get_run(parent).info.experiment_id], "tags.`mlops.step` = 'drift'", max_results=1
    )[0]
    # A step run through run_step moves the parent's end (here the promote step, which finds no challenger).
    run_step(StepContext(step="promote", run_id="run-1", settings=settings, params={"action": "auto"}))
    info = client.get_run(parent).info
    assert info.status == "FINISHED"
    assert info.start_time <= child.info.start_time and info.end_time >= child.info.end_time
    assert info.end_time - info.start_time >= 300


def _store(root, name="moved-model"):
    return make_registry_settings(root, registry__model_name=name)


def test_a_moved_or_copied_store_finds_its_artifacts(tmp_path):
    """MLflow records absolute artifact paths; a checkout moved (or copied) with its var/ keeps working."""
    import shutil

    import mlflow
    from registry_doubles import add_version

    from pipelines import tracking

    model = tmp_path / "served"
    model.mkdir()
    (model / "MLmodel").write_text("artifact_path: model\n")
    version = add_version(_store(tmp_path / "a"), model, alias="champion")

    shutil.move(tmp_path / "a", tmp_path / "b")  # a move: the old folder is gone
    tracking._rebased.clear()
    client = configure(_store(tmp_path / "b"))
    got = mlflow.artifacts.download_artifacts(f"models:/moved-model/{version}", dst_path=str(tmp_path / "dl1"))
    assert (tmp_path / "dl1" / "MLmodel").is_file(), got
    assert (
        str(tmp_path / "a")
        not in client.get_experiment_by_name(_store(tmp_path / "b").mlflow.experiment_name).artifact_location
    )

    shutil.copytree(tmp_path / "b", tmp_path / "c")  # a copy: both folders exist, the copy must use its own
    tracking._rebased.clear()
    client = configure(_store(tmp_path / "c"))
    mv = client.get_model_version("moved-model", version)
    run = client.get_run(mv.run_id)
    assert run.info.artifact_uri.startswith((tmp_path / "c").as_uri())
    assert configure(_store(tmp_path / "b")).get_run(mv.run_id).info.artifact_uri.startswith((tmp_path / "b").as_uri())


def test_a_store_pointed_at_an_unrelated_folder_is_left_alone(tmp_path):
    from registry_doubles import add_version

    from pipelines import tracking

    model = tmp_path / "served"
    model.mkdir()
    (model / "MLmodel").write_text("artifact_path: model\n")
    settings = _store(tmp_path / "a")
    add_version(settings, model)
    other = make_registry_settings(
        tmp_path / "a", paths__artifact_root=str(tmp_path / "elsewhere"), registry__model_name="moved-model"
    )
    (tmp_path / "elsewhere" / "mlruns").mkdir(parents=True)
    tracking._rebased.clear()
    from pathlib import Path

    assert tracking.rebase_moved_store(other, Path(other.mlflow.tracking_uri.removeprefix("sqlite:///"))) == 0
