"""Domain errors that carry their evidence (counts, failing checks, a report URI)."""

from __future__ import annotations


class PipelineError(RuntimeError):
    """Base of the product's own failures."""


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


class ReviewTimedOut(PipelineError):
    """No reviewer decided on the challenger within the configured time."""
