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
