"""The MLflow parent run of a pipeline run spans its nested step runs (its duration in the UI is the run's)."""

import time

from registry_doubles import make_registry_settings

from pipelines.context import StepContext
from pipelines.io.tracking import configure, parent_run_id, step_run
from pipelines.runner import run_step


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

    from pipelines.io import tracking

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

    from pipelines.io import tracking

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


def test_a_retried_step_reopens_its_run_and_another_pipeline_run_gets_its_own(tmp_path):
    import mlflow

    from pipelines.io.tracking import TAG_PIPELINE_RUN, TAG_STEP, experiment_id

    settings = make_registry_settings(tmp_path)
    ctx = StepContext(step="train", run_id="run-1", settings=settings, dag_id="continuous_training")
    with step_run(ctx) as first:
        mlflow.log_metric("attempt", 1)
    with step_run(ctx) as retry:
        mlflow.log_metric("attempt", 2)
    with step_run(StepContext(step="train", run_id="run-2", settings=settings)) as other:
        pass
    assert retry.info.run_id == first.info.run_id != other.info.run_id
    client = configure(settings)
    runs = client.search_runs([experiment_id(settings)], f"tags.`{TAG_STEP}` = 'train'")
    assert len(runs) == 2
    run = client.get_run(first.info.run_id)
    assert run.data.metrics["attempt"] == 2 and run.data.tags[TAG_PIPELINE_RUN] == "run-1"
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.data.tags[TAG_STEP] == "pipeline" and parent.data.tags["mlops.dag_id"] == "continuous_training"
    assert mlflow.active_run() is None


def test_find_step_run_prefers_the_steps_run_then_the_parent_and_run_url_links_to_it(tmp_path):
    from pipelines.io.tracking import experiment_id, find_step_run, run_url

    settings = make_registry_settings(tmp_path)
    ctx = StepContext(step="evaluate", run_id="run-1", settings=settings)
    assert find_step_run(ctx) is None  # no experiment yet
    parent = parent_run_id(ctx)
    exp = experiment_id(settings)
    assert find_step_run(ctx) == (exp, parent)
    with step_run(ctx) as run:
        pass
    assert find_step_run(ctx) == (exp, run.info.run_id)
    assert find_step_run(ctx.with_step("register")) == (exp, parent)
    assert find_step_run(StepContext(step="evaluate", run_id="run-2", settings=settings)) is None
    ui = settings.with_overrides({"mlflow.ui_url": "http://mlflow.example:5000/"})
    assert run_url(ui, run.info.run_id) == f"http://mlflow.example:5000/#/experiments/{exp}/runs/{run.info.run_id}"


def test_configure_uses_the_separate_registry_store_and_creates_the_sqlite_folder(tmp_path):
    from mlflow import MlflowClient

    registry_db = tmp_path / "registry" / "reg.db"
    settings = make_registry_settings(
        tmp_path,
        mlflow__tracking_uri=f"sqlite:///{tmp_path / 'new' / 'folder' / 'mlflow.db'}",
        mlflow__registry_uri=f"sqlite:///{registry_db}",
    )
    registry_db.parent.mkdir()
    client = configure(settings)
    assert (tmp_path / "new" / "folder").is_dir()
    client.create_registered_model("kept-apart")
    uri = f"sqlite:///{registry_db}"
    assert MlflowClient(tracking_uri=uri, registry_uri=uri).get_registered_model("kept-apart").name == "kept-apart"
