"""Domain errors that carry their evidence (counts, failing checks, a report URI), and the exit-code contract.

Every failure is classified by its type (:func:`exit_code`), never by its text:

- ``EXIT_PERMANENT`` (2): retrying cannot help: bad config, a bad param or URI, bad data, a rejected model, a
  corrupt artifact. The CLI prints one line; Airflow fails the task without retrying.
- ``EXIT_TRANSIENT`` (3): a service (MLflow, S3) was unreachable or timed out. One line; Airflow retries.
- ``EXIT_UNEXPECTED`` (1): anything else, i.e. a bug: the traceback is printed; Airflow retries as configured.

This module imports nothing heavy: the library exception types are only looked at when already imported.
"""

from __future__ import annotations

import sys

EXIT_UNEXPECTED = 1
EXIT_PERMANENT = 2
EXIT_TRANSIENT = 3


class PipelineError(RuntimeError):
    """Base of the product's own failures. ``permanent``: a retry cannot help (exit 2), else exit 3."""

    permanent = True


class DataValidationFailed(PipelineError):
    """A batch failed validation; it was quarantined with its report.

    Args:
        batch_id: the batch's name.
        failures: up to 10 human-readable failed checks (column, observed value, expectation).
        report_uri: where the validation report lies.
        quarantine_uri: where the batch was moved.
    """

    def __init__(self, batch_id: str, failures: list[str], report_uri: str | None, quarantine_uri: str | None):
        self.batch_id = batch_id
        self.failures = list(failures)
        self.report_uri = report_uri
        self.quarantine_uri = quarantine_uri
        shown = "\n  - ".join(self.failures[:10])
        more = f"\n  ... and {len(self.failures) - 10} more" if len(self.failures) > 10 else ""
        super().__init__(
            f"batch {batch_id!r} failed validation ({len(self.failures)} check(s)); moved to {quarantine_uri}; "
            f"report: {report_uri}\n  - {shown}{more}"
        )


class ModelRejected(PipelineError):
    """A candidate failed a gate or a parity check; the champion is untouched."""

    def __init__(self, message: str, failures: list[str] | None = None, report_uri: str | None = None):
        self.failures = list(failures or [])
        self.report_uri = report_uri
        details = "".join(f"\n  - {f}" for f in self.failures[:10])
        suffix = f"\n  report: {report_uri}" if report_uri else ""
        super().__init__(f"{message}{details}{suffix}")


class BadInput(PipelineError, ValueError):
    """A user-supplied input (a param, a batch reference) is refused before it touches storage.

    The message is one line naming the parameter and what was expected; it never echoes file contents.
    Also a ``ValueError``, so callers that catch bad values catch it too.
    """


class PromotionRefused(BadInput):
    """A promotion request is refused (policy ceiling, missing reviewer, conflicting request); one line that names
    the param or tag and the config key. Permanent: the CLI exits 2 and Airflow does not retry."""


class ConfigError(PipelineError, ValueError):
    """A setting has a bad value; the message names the key, the value and what was expected."""


class ServiceUnavailable(PipelineError):
    """MLflow or S3 could not be reached; a later retry may succeed."""

    permanent = False


class CorruptArtifact(PipelineError):
    """A stored artifact (a registered model, a cached copy of one) fails its hash check or does not load."""


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    node: BaseException | None = exc
    while node is not None and not any(node is s for s in seen) and len(seen) < 20:
        seen.append(node)
        node = node.__cause__ or node.__context__
    return seen


def _types(module: str, *names: str) -> tuple[type, ...]:
    mod = sys.modules.get(module)
    return tuple(t for t in (getattr(mod, n, None) for n in names) if isinstance(t, type)) if mod else ()


def _transient(exc: BaseException) -> bool:
    """A connection failure or timeout anywhere in the exception's chain (MLflow wraps requests' errors)."""
    kinds = (
        ConnectionError,
        TimeoutError,
        *_types("requests.exceptions", "ConnectionError", "Timeout", "RetryError"),
        *_types("urllib3.exceptions", "MaxRetryError", "NewConnectionError", "ProtocolError", "TimeoutError"),
        *_types("botocore.exceptions", "ConnectionError", "HTTPClientError"),
    )
    for node in _chain(exc):
        if isinstance(node, kinds):
            return True
        code = getattr(node, "error_code", None)  # MlflowException
        if code in {"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"}:
            return True
        response = getattr(node, "response", None)  # botocore ClientError
        if isinstance(response, dict):
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            if status >= 500 or response.get("Error", {}).get("Code") in {"SlowDown", "RequestTimeout"}:
                return True
    return False


def _permanent_library_error(exc: BaseException) -> bool:
    """A library's way of saying the request itself is wrong: a 4xx from MLflow or S3, a bad S3 parameter."""
    mlflow_errors = _types("mlflow.exceptions", "MlflowException")
    if mlflow_errors and isinstance(exc, mlflow_errors):
        try:
            return 400 <= int(exc.get_http_status_code()) < 500  # type: ignore[attr-defined]
        except (TypeError, ValueError):
            return False
    if isinstance(exc, _types("botocore.exceptions", "ParamValidationError", "NoCredentialsError")):
        return True
    client_errors = _types("botocore.exceptions", "ClientError")
    if client_errors and isinstance(exc, client_errors):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0  # type: ignore[attr-defined]
        return 400 <= int(status) < 500
    return False


def exit_code(exc: BaseException) -> int:
    """The exit code of a failure by its type: 2 permanent, 3 transient, 1 unexpected (see the module doc)."""
    if isinstance(exc, PipelineError):
        return EXIT_PERMANENT if exc.permanent else EXIT_TRANSIENT
    if _transient(exc):
        return EXIT_TRANSIENT
    # Steps signal a wrong input with ValueError / FileNotFoundError (their messages name the input).
    if isinstance(exc, ValueError | FileNotFoundError | NotADirectoryError) or _permanent_library_error(exc):
        return EXIT_PERMANENT
    return EXIT_UNEXPECTED


def one_line(exc: BaseException, limit: int = 2000) -> str:
    """The exception's message on one line (lines joined with '; '), cut at ``limit`` characters."""
    text = "; ".join(part.strip() for part in str(exc).splitlines() if part.strip()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
