"""The Airflow and MLflow pages as a reviewer and an operator meet them, driven in a real browser (Playwright and
the system Chromium).

The stack is the one ``make ui`` starts (:func:`scripts.ui.start`: ``mlflow server`` and ``airflow standalone``) on
loopback ports, over a temporary store, with the tiny BERT and small training. In order:

1. the trigger form of ``continuous_training``: optional fields are not marked required, each field names its
   configured default, an out-of-range number is refused by the form (clamped to the bound) and an out-of-range
   value in the run's JSON conf comes back as one readable line;
2. a run triggered from the form (bootstrap: no champion yet) runs to success in its graph; under the manual
   policy its candidate is staged as the challenger and the review_challenger DAG waits for a reviewer;
3. the challenger's MLflow version page: status line at the top, "how to decide" above the report, the gate table,
   the evaluation images;
4. the reviewer approves in Airflow's Required Actions: the champion moves to that version, and the registered
   model's page names the champion and the reviewer in the audit trail.

Screenshots go to the test's temporary folder. Skips without Playwright or without a Chromium on PATH.
Measured: 6 min 43 s for the four tests on 2 cores shared with other work (load ~9); the triggered run itself is
about 3.5 min of it (train 1 min 45 s), the stack's start about 1 min.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("no chromium on PATH (apt-get install chromium)", allow_module_level=True)

RUN_TIMEOUT_S = 420
STATE: dict[str, object] = {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=3)
        return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


class Api:
    """The Airflow REST API with the admin's token (for waiting on runs; the user's actions go through pages)."""

    def __init__(self, base: str, user: str, password: str) -> None:
        self.base = base
        req = urllib.request.Request(
            f"{base}/auth/token",
            data=json.dumps({"username": user, "password": password}).encode(),
            headers={"Content-Type": "application/json"},
        )
        self.token = json.loads(urllib.request.urlopen(req, timeout=30).read())["access_token"]

    def get(self, path: str) -> dict:
        req = urllib.request.Request(f"{self.base}/api/v2{path}", headers={"Authorization": f"Bearer {self.token}"})
        return json.loads(urllib.request.urlopen(req, timeout=30).read())

    def runs(self, dag_id: str) -> list[dict]:
        return self.get(f"/dags/{dag_id}/dagRuns?order_by=-run_after&limit=20")["dag_runs"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, demo_frames):
    from conftest import build_tiny_bert, tiny_settings

    from pipelines.config import settings_env

    root = tmp_path_factory.mktemp("ui")
    tiny = build_tiny_bert(root / "tiny", [t for df in demo_frames.values() for t in df["text"]])
    mlflow_port, airflow_port = _free_port(), _free_port()
    settings = tiny_settings(
        root,
        tiny,
        train__epochs=4,
        gates__baseline_tolerance=1.0,  # the tiny BERT trails TF-IDF by design (see the e2e test)
        gates__min_gain_over_majority=0.0,
        registry__promotion="manual",
        registry__review_poke_seconds=2,
        mlflow__ui_url=f"http://127.0.0.1:{mlflow_port}",
        dag__retries=0,
    )
    env = settings_env(settings)
    env.update(
        {
            "MLOPS_DAG__SCHEDULE": "",  # nothing scheduled: only the run the test triggers
            "MLOPS_MONITORING__SCHEDULE": "",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",  # review_challenger must start by itself
            "AIRFLOW__SCHEDULER__DAG_DIR_LIST_INTERVAL": "10",
        }
    )
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        from scripts.dag_runner import prepare_airflow
        from scripts.ui import airflow_login, start

        home = prepare_airflow(root / "airflow")
        from pipelines.config import get_settings
        from pipelines.data.demo import write_demo_batches

        write_demo_batches(get_settings())
        server_env = dict(os.environ)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    stack = start(
        settings.mlflow.tracking_uri,
        home,
        mlflow_port=mlflow_port,
        airflow_port=airflow_port,
        env=server_env,
        log_dir=root / "server-logs",
    )
    try:
        _wait(lambda: not stack.alive() or _answers(f"{stack.mlflow_url}/health"), 120, "the MLflow server")
        _wait(lambda: not stack.alive() or _answers(f"{stack.airflow_url}/api/v2/monitor/health"), 180, "Airflow")
        assert stack.alive(), f"a server exited; see {root / 'server-logs'}"
        login = _wait(lambda: airflow_login(home), 60, "the admin password file")
        yield {
            "settings": settings,
            "mlflow": stack.mlflow_url,
            "airflow": stack.airflow_url,
            "login": login,
            "api": Api(stack.airflow_url, *login),
            "root": root,
        }
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


@pytest.fixture
def page(browser, stack, tmp_path):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(stack["airflow"] + "/")
    page.fill("input[name=username]", stack["login"][0])
    page.fill("input[name=password]", stack["login"][1])
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/auth/login" not in url)
    page.shots = tmp_path  # screenshots of this test
    yield page
    context.close()


def _shot(page, name: str) -> None:
    page.screenshot(path=str(Path(page.shots) / f"{name}.png"), full_page=True)


def _open_trigger_form(page, stack):
    page.goto(f"{stack['airflow']}/dags/continuous_training")
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.get_by_role("dialog")
    dialog.locator("input[name=element_batch_uri]").wait_for()
    return dialog


# --- 1. the trigger form -----------------------------------------------------------------------------------
def test_trigger_form_fields_defaults_and_bounds(page, stack):
    settings = stack["settings"]
    dialog = _open_trigger_form(page, stack)
    text = dialog.inner_text()
    assert "Batch URI (optional)" in text and "Empty: the oldest batch waiting in landing" in text
    assert f"configured {settings.drift.p_threshold:g}" in text and "configured manual" in text
    # Optional fields carry no required mark; the two choices with defaults do.
    labels = {t.split("\n")[0].strip(): t for t in dialog.locator("label").all_inner_texts()}
    assert "*" not in labels["Batch URI (optional)"] and "*" not in labels["Macro-F1 floor (optional)"]
    assert "*" in labels["Action"] and "*" in labels["Promotion"]

    # An out-of-range number: the form's own input refuses it (clamped to the schema's maximum on leaving it).
    floor = dialog.locator("input[name=element_min_macro_f1]")
    floor.fill("5")
    dialog.locator("input[name=element_batch_uri]").click()
    assert floor.input_value() == "1"

    # An out-of-range value in the run's JSON conf: refused before a run exists, with one readable line.
    floor.fill("")
    dialog.get_by_text("Advanced Options").click()
    editor = dialog.locator(".monaco-editor").first
    editor.click()
    page.keyboard.press("Control+A")
    page.keyboard.press("Delete")
    page.keyboard.insert_text('{"min_macro_f1": 5}')
    with page.expect_response(lambda r: r.url.endswith("/dagRuns") and r.request.method == "POST") as answer:
        dialog.get_by_role("button", name="Trigger").click()
    assert answer.value.status == 400
    message = dialog.get_by_text("Invalid input for param min_macro_f1: 5 is greater than the maximum of 1")
    message.wait_for()
    assert "Failed validating" not in dialog.inner_text()  # no jsonschema dump
    _shot(page, "1-trigger-form-refused")
    assert stack["api"].runs("continuous_training") == []


# --- 2. a tiny run from the form -----------------------------------------------------------------------------
def test_a_run_triggered_from_the_form_finishes_in_its_graph(page, stack):
    dialog = _open_trigger_form(page, stack)
    dialog.locator("input[name=element_batch_uri]").fill("batch_000_reference.csv")
    with page.expect_response(lambda r: r.url.endswith("/dagRuns") and r.request.method == "POST") as answer:
        dialog.get_by_role("button", name="Trigger").click()
    assert answer.value.status == 200, answer.value.text()
    run_id = answer.value.json()["dag_run_id"]
    api = stack["api"]

    def finished():
        state = api.get(f"/dags/continuous_training/dagRuns/{run_id}")["state"]
        return state if state in {"success", "failed"} else None

    state = _wait(finished, RUN_TIMEOUT_S, f"run {run_id}", every=3)
    page.goto(f"{stack['airflow']}/dags/continuous_training/runs/{run_id}")
    page.get_by_text("register", exact=True).first.wait_for()
    _shot(page, "2-run-graph")
    tis = api.get(f"/dags/continuous_training/dagRuns/{run_id}/taskInstances")["task_instances"]
    states = {t["task_id"]: t["state"] for t in tis}
    assert state == "success", states
    assert states["register"] == "success" and states["request_review"] == "success", states
    STATE["run_id"] = run_id
    assert _challenger(stack) is not None, _task_logs(stack, ("evaluate", "register"))


def _challenger(stack) -> str | None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    settings = stack["settings"]
    uri = settings.mlflow.tracking_uri
    # The registry URI too: MlflowClient otherwise takes the process-wide one an earlier test may have set.
    client = MlflowClient(tracking_uri=uri, registry_uri=settings.mlflow.registry_uri or uri)
    try:
        return str(client.get_model_version_by_alias(settings.registry.model_name, "challenger").version)
    except MlflowException:
        return None


def _task_logs(stack, tasks: tuple[str, ...]) -> str:
    """The end of these tasks' logs, for a failure message."""
    logs = Path(stack["root"]) / "airflow" / "logs"
    parts = []
    for task in tasks:
        for f in sorted(logs.rglob(f"task_id={task}/*.log")):
            parts.append(f"--- {f.relative_to(logs)}\n{f.read_text(errors='replace')[-2500:]}")
    return "\n".join(parts) or f"no task logs under {logs}"


def _version(stack) -> str:
    version = _challenger(stack) if "run_id" in STATE else None
    if version is None:
        pytest.skip("the run triggered in test 2 staged no challenger")
    return version


# --- 3. the challenger's MLflow version page -----------------------------------------------------------------
def test_the_version_page_shows_status_gates_and_images(page, stack):
    version = _version(stack)
    name = stack["settings"].registry.model_name
    page.goto(f"{stack['mlflow']}/#/models/{name}/versions/{version}")
    page.get_by_text("Status: awaiting review").first.wait_for()
    text = page.locator("body").inner_text()
    assert text.index("Status: awaiting review") < text.index("How to decide") < text.index("Evaluation report")
    # The gate table is a real table (header row and cells), not pipes in a paragraph.
    gate_table = page.locator("table", has=page.locator("td", has_text="non_inferiority")).first
    gate_table.wait_for()
    assert gate_table.locator("th").all_inner_texts()[:3] == ["gate", "result", "value"]
    # The evaluation figures, served by the MLflow server from the evaluate run, load on the page.
    for figure in ("confusion_matrix", "per_class"):
        image = page.locator(f"img[src*='{figure}.png']").first
        image.scroll_into_view_if_needed()
        _wait(lambda image=image: image.evaluate("e => e.complete && e.naturalWidth > 0"), 30, f"the {figure} image")
    _shot(page, "3-version-page")
    STATE["version"] = version


# --- 4. a reviewer approves in Airflow -----------------------------------------------------------------------
def test_a_reviewer_approves_in_required_actions_and_the_champion_moves(page, stack):
    version = STATE.get("version") or _version(stack)
    api = stack["api"]
    _wait(lambda: api.runs("review_challenger"), 120, "the review_challenger run started by the asset event")
    name = stack["settings"].registry.model_name
    subject = f"Review {name} version {version}"

    def listed():
        page.goto(f"{stack['airflow']}/required_actions")
        try:
            page.get_by_text(subject).first.wait_for(timeout=5_000)
            return True
        except playwright_api.TimeoutError:
            return False

    _wait(listed, 120, "the review request in Required Actions", every=2)
    page.get_by_text(subject).first.click()
    page.locator("input[name=element_comment]").fill("good on the slices")
    _shot(page, "4-required-action")
    page.get_by_role("button", name="Approve").first.click()

    def reviewed():
        runs = api.runs("review_challenger")
        return runs[0]["state"] if runs and runs[0]["state"] in {"success", "failed"} else None

    assert _wait(reviewed, 180, "the review_challenger run to finish", every=3) == "success"
    page.goto(f"{stack['mlflow']}/#/models/{name}")
    page.get_by_text("Champion history").first.wait_for()
    text = page.locator("body").inner_text()
    assert f"version {version}" in text.split("Champion (alias champion")[1][:200]
    history = text.split("Champion history")[1]
    assert "promote" in history and stack["login"][0] in history and "good on the slices" in history
    _shot(page, "4-registered-model")
    page.goto(f"{stack['mlflow']}/#/models/{name}/versions/{version}")
    page.get_by_text("Status: champion").first.wait_for()
    assert "How to decide" not in page.locator("body").inner_text()
    _shot(page, "4-version-champion")
