"""Domain errors carry their evidence, and every failure gets its exit code by its type (2 permanent, 3 transient,
1 unexpected), never by its text. Library errors are the real ones: raised by a real client where that is cheap
(a refused connection, an MLflow store asked for a missing model), built from a response dict where the failure
needs a misbehaving service (an S3 503)."""

from __future__ import annotations

import socket

import pytest

from pipelines.errors import (
    EXIT_PERMANENT,
    EXIT_TRANSIENT,
    EXIT_UNEXPECTED,
    BadInput,
    ConfigError,
    CorruptArtifact,
    DataValidationFailed,
    ModelRejected,
    ServiceUnavailable,
    exit_code,
    one_line,
)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_data_validation_failed_shows_ten_failures_and_counts_the_rest():
    failures = [f"column text: check {i} failed" for i in range(13)]
    err = DataValidationFailed("b1", failures, "var/quarantine/b1/report.html", "var/quarantine/b1/b1.csv")
    text = str(err)
    assert text.startswith(
        "batch 'b1' failed validation (13 check(s)); moved to var/quarantine/b1/b1.csv; "
        "report: var/quarantine/b1/report.html"
    )
    assert "check 9 failed" in text and "check 10 failed" not in text
    assert text.endswith("... and 3 more")
    assert err.failures == failures and err.batch_id == "b1"
    assert exit_code(err) == EXIT_PERMANENT


def test_model_rejected_lists_its_failures_and_report():
    err = ModelRejected("candidate rejected", ["macro_f1 0.31 < floor 0.45"], "var/runs/r/evaluate/report.md")
    assert str(err) == ("candidate rejected\n  - macro_f1 0.31 < floor 0.45\n  report: var/runs/r/evaluate/report.md")
    assert str(ModelRejected("no report")) == "no report"
    assert exit_code(err) == EXIT_PERMANENT


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (BadInput("param batch='x' is outside landing"), EXIT_PERMANENT),
        (ConfigError("drift.p_threshold=2 must be in (0, 1)"), EXIT_PERMANENT),
        (CorruptArtifact("bundle does not load"), EXIT_PERMANENT),
        (ServiceUnavailable("MLflow at http://x is down"), EXIT_TRANSIENT),
        (ValueError("bad value"), EXIT_PERMANENT),
        (FileNotFoundError("no such batch"), EXIT_PERMANENT),
        (ConnectionRefusedError("refused"), EXIT_TRANSIENT),
        (TimeoutError("slow"), EXIT_TRANSIENT),
        (KeyError("a bug"), EXIT_UNEXPECTED),
        (ZeroDivisionError(), EXIT_UNEXPECTED),
    ],
)
def test_exit_code_by_type(exc, code):
    assert exit_code(exc) == code


def test_bad_input_and_config_error_are_value_errors():
    with pytest.raises(ValueError):
        raise BadInput("x")
    with pytest.raises(ValueError):
        raise ConfigError("x")


def test_a_refused_connection_anywhere_in_the_chain_is_transient():
    import requests

    with pytest.raises(requests.exceptions.ConnectionError) as refused:
        requests.get(f"http://127.0.0.1:{_closed_port()}/", timeout=2)
    assert exit_code(refused.value) == EXIT_TRANSIENT
    try:
        try:
            raise refused.value
        except requests.exceptions.ConnectionError as exc:
            raise RuntimeError("could not log the metrics") from exc
    except RuntimeError as wrapped:
        assert exit_code(wrapped) == EXIT_TRANSIENT  # a library that wraps the error keeps it retriable


def test_an_exception_chain_with_a_cycle_is_classified():
    a, b = RuntimeError("a"), RuntimeError("b")
    a.__context__, b.__context__ = b, a
    assert exit_code(a) == EXIT_UNEXPECTED


def test_an_s3_endpoint_that_does_not_answer_is_transient():
    import boto3
    from botocore.config import Config
    from botocore.exceptions import EndpointConnectionError

    client = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{_closed_port()}",
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(retries={"max_attempts": 1}, connect_timeout=2),
    )
    with pytest.raises(EndpointConnectionError) as err:
        client.head_bucket(Bucket="b")
    assert exit_code(err.value) == EXIT_TRANSIENT


@pytest.mark.parametrize(
    ("status", "error", "code"),
    [
        (404, "NoSuchKey", EXIT_PERMANENT),
        (403, "AccessDenied", EXIT_PERMANENT),
        (503, "SlowDown", EXIT_TRANSIENT),
        (500, "InternalError", EXIT_TRANSIENT),
        (400, "RequestTimeout", EXIT_TRANSIENT),
    ],
)
def test_s3_client_errors_by_status_and_code(status, error, code):
    from botocore.exceptions import ClientError

    response = {"Error": {"Code": error, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}
    assert exit_code(ClientError(response, "GetObject")) == code


def test_a_bad_s3_parameter_is_permanent():
    import boto3
    from botocore.exceptions import ParamValidationError

    client = boto3.client(
        "s3", region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test", endpoint_url="http://x"
    )
    with pytest.raises(ParamValidationError) as err:
        client.get_object(Bucket="b")  # no Key: refused before any request
    assert exit_code(err.value) == EXIT_PERMANENT


def test_mlflow_errors_by_http_status(tmp_path):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    with pytest.raises(MlflowException) as missing:
        client.get_registered_model("no-such-model")
    assert exit_code(missing.value) == EXIT_PERMANENT
    # What MLflow's REST client raises for a server's JSON error answer.
    from mlflow.exceptions import RestException

    for code in ("TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"):
        assert exit_code(RestException({"error_code": code, "message": "later"})) == EXIT_TRANSIENT
    assert exit_code(RestException({"error_code": "PERMISSION_DENIED", "message": "no"})) == EXIT_PERMANENT
    assert exit_code(RestException({"error_code": "INTERNAL_ERROR", "message": "bug"})) == EXIT_UNEXPECTED


def test_one_line_joins_lines_and_cuts_long_messages():
    assert one_line(ValueError("first\n\n  second  \nthird")) == "first; second; third"
    assert one_line(KeyboardInterrupt()) == "KeyboardInterrupt"
    long = one_line(ValueError("x" * 50), limit=20)
    assert long == "x" * 17 + "..." and len(long) == 20
