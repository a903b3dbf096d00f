"""The continuous-training loop's logic: config, storage, and one module per step. No Airflow import here.

Names are imported lazily so that ``import pipelines.config`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["STEPS", "Settings", "StepContext", "get_settings", "run_step"]

_WHERE = {
    "Settings": "pipelines.config",
    "get_settings": "pipelines.config",
    "StepContext": "pipelines.context",
    "STEPS": "pipelines.runner",
    "run_step": "pipelines.runner",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'pipelines' has no attribute {name!r}")
