"""SIGTERM and Ctrl-C still stop the process that runs DAGs in line (``make run``, the stream bench, the tests).

``dag.test()`` runs each task under Airflow's own SIGTERM handler, which only calls the task's ``on_kill()`` and
returns, and leaves it installed after the run (checked against the real DAG in tests/dags/test_review_dag.py);
its task runner catches a Ctrl-C's KeyboardInterrupt and retries the task.
"""

from __future__ import annotations

import signal

import pytest


class Stopped(BaseException):
    pass


def _stop(signum, frame):
    raise Stopped(signum)


def test_an_in_process_step_fails_at_once_on_sigterm_and_says_why():
    """In an in-line run (make run) the step is not retried; under a worker it may be (its shutdown is no bug)."""
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    from mlops_airflow.operators import IN_LINE, TERMINATED, RunStepOperator

    op = RunStepOperator(task_id="train", step="train")
    TERMINATED.clear()
    try:
        with pytest.raises(AirflowException, match="'train' stopped by SIGTERM") as raised:
            op.on_kill()
        assert TERMINATED.is_set() and not isinstance(raised.value, AirflowFailException)
        IN_LINE.set()
        with pytest.raises(AirflowFailException, match="'train' stopped by SIGTERM"):
            op.on_kill()
    finally:
        TERMINATED.clear()
        IN_LINE.clear()


def test_a_step_that_took_sigterm_stops_the_runner_with_the_callers_handler(monkeypatch):
    """A step stopped by SIGTERM (here between two tasks, where on_kill raises out of dag.test itself): the caller's
    handler is back in place and receives the signal, so the process stops instead of starting the next run."""
    from mlops_airflow.operators import IN_LINE, TERMINATED
    from scripts import dag_runner

    def airflow_handler(signum, frame):  # what dag.test() leaves behind
        pass

    in_line = []

    class FakeDag:
        def test(self, **kwargs):
            in_line.append(IN_LINE.is_set())  # on_kill then stops the step without a retry
            signal.signal(signal.SIGTERM, airflow_handler)
            TERMINATED.set()
            raise RuntimeError("raised by on_kill")

    monkeypatch.setattr(dag_runner, "load_dag", lambda dag_id: FakeDag())
    before = signal.signal(signal.SIGTERM, _stop)
    try:
        with pytest.raises(Stopped):
            dag_runner.run_dag("continuous_training")
        assert signal.getsignal(signal.SIGTERM) is _stop
        assert in_line == [True] and not IN_LINE.is_set()
    finally:
        signal.signal(signal.SIGTERM, before)
        TERMINATED.clear()


def test_an_unrelated_dag_failure_is_not_taken_for_a_sigterm(monkeypatch):
    from mlops_airflow.operators import TERMINATED
    from scripts import dag_runner

    class FakeDag:
        def test(self, **kwargs):
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            raise ValueError("a bug")

    monkeypatch.setattr(dag_runner, "load_dag", lambda dag_id: FakeDag())
    before = signal.signal(signal.SIGTERM, _stop)
    try:
        with pytest.raises(ValueError, match="a bug"):
            dag_runner.run_dag("continuous_training")
        assert signal.getsignal(signal.SIGTERM) is _stop
        assert not TERMINATED.is_set()
    finally:
        signal.signal(signal.SIGTERM, before)


def test_ctrl_c_fails_the_running_step_without_a_retry_and_then_interrupts_the_caller(monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    from scripts import dag_runner

    seen = []

    class FakeDag:
        def test(self, **kwargs):
            try:  # a task: the runner catches what the step raised and records the task's failure
                signal.raise_signal(signal.SIGINT)
            except BaseException as exc:
                seen.append(exc)
            return object()

    monkeypatch.setattr(dag_runner, "load_dag", lambda dag_id: FakeDag())
    withdrawn = []
    monkeypatch.setattr(dag_runner, "_withdraw_attempt", lambda dag_id, when: withdrawn.append(dag_id))
    # Python's own Ctrl-C handler, as in a terminal (a background job, e.g. `make test &`, ignores SIGINT).
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt, match="stopped by Ctrl-C"):
            dag_runner.run_dag("continuous_training")
        assert len(seen) == 1 and isinstance(seen[0], AirflowFailException)  # AirflowFailException: never retried
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert withdrawn == ["continuous_training"]  # the stopped run's batch pick is not a failed attempt
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.mark.slow
def test_ctrl_c_in_a_real_dag_run_leaves_the_batch_waiting_with_no_attempt_counted(
    tmp_path, tiny_model_dir, monkeypatch
):
    """The real continuous_training DAG, stopped by Ctrl-C in its validate step: the run stops the caller, the batch
    stays in landing, and its attempts record does not count the stopped run (dag.batch_max_attempts)."""
    from conftest import dag_environment, tiny_settings

    from pipelines.config import settings_env
    from pipelines.steps import validate
    from scripts import dag_runner

    env = settings_env(tiny_settings(tmp_path, tiny_model_dir, dag__retries=0, dag__batch_max_attempts=1))
    with dag_environment(env):
        from pipelines.config import get_settings
        from pipelines.data.demo import write_demo_batches
        from pipelines.io.storage import batch_attempts

        settings = get_settings()
        [batch] = write_demo_batches(settings, only=["batch_000_reference"])[:1]
        reached = []

        def stopped_by_the_user(ctx):
            reached.append(ctx.run_id)
            signal.raise_signal(signal.SIGINT)
            raise AssertionError("the Ctrl-C did not stop the step")

        monkeypatch.setattr(validate, "run", stopped_by_the_user)
        before = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            with pytest.raises(KeyboardInterrupt, match="stopped by Ctrl-C"):
                dag_runner.run_dag("continuous_training")
        finally:
            signal.signal(signal.SIGINT, before)
        assert len(reached) == 1  # picked, then stopped in validate (not retried)
        assert batch_attempts(settings, batch)["runs"] == []
        monkeypatch.undo()
        from mlops_airflow import tasks

        assert tasks.pick_batch({}, "next-run") == batch  # with batch_max_attempts=1 a counted stop set it aside
