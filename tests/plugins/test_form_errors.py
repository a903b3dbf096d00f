"""The trigger form's refused value comes back as one readable line (the middleware the plugin registers)."""

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from mlops_airflow.form_errors import ReadableParamErrors

DUMP = (
    "Invalid input for param min_macro_f1: 5 is greater than the maximum of 1\n\nFailed validating 'maximum' in "
    "schema:\n    {'type': ['null', 'number'], 'minimum': 0, 'maximum': 1}\n\nOn instance:\n    5"
)


def _client():
    app = FastAPI()

    @app.post("/api/v2/dags/{dag_id}/dagRuns")
    def trigger(dag_id: str):
        return JSONResponse({"detail": DUMP}, status_code=400)

    @app.post("/other")
    def other():
        return JSONResponse({"detail": "plain"}, status_code=400)

    @app.get("/api/v2/dags/{dag_id}/dagRuns")
    def listing(dag_id: str):
        return JSONResponse({"detail": DUMP}, status_code=400)

    app.add_middleware(ReadableParamErrors)
    return TestClient(app)


def test_a_param_validation_error_keeps_its_first_paragraph():
    client = _client()
    got = client.post("/api/v2/dags/continuous_training/dagRuns", json={})
    assert got.status_code == 400
    assert got.json() == {"detail": "Invalid input for param min_macro_f1: 5 is greater than the maximum of 1"}
    assert int(got.headers["content-length"]) == len(got.content)


def test_other_answers_pass_unchanged():
    client = _client()
    assert client.post("/other").json() == {"detail": "plain"}
    assert client.get("/api/v2/dags/x/dagRuns").json() == {"detail": DUMP}  # GET is never rewritten


def test_the_plugin_registers_the_middleware():
    from mlops_plugin import MlopsPlugin

    assert [m["middleware"] for m in MlopsPlugin.fastapi_root_middlewares] == [ReadableParamErrors]
