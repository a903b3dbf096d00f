"""Read access to the current champion in the MLflow Model Registry.

The registered model version's artifact is the served pyfunc model. Its ``bundle`` folder carries everything
that must travel together, so that a rollback restores all of it:

    bundle/model.onnx      the served (compressed) ONNX graph
    bundle/tokenizer/      the tokenizer
    bundle/labels.json     class names in logit order
    bundle/fp32/           the fp32 transformers weights the next fine-tune starts from
    bundle/reference/      the drift reference (see pipelines.reference)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipelines.config import Settings

CHAMPION = "champion"
CHALLENGER = "challenger"
BUNDLE = "bundle"


@dataclass
class Champion:
    name: str
    version: str
    run_id: str | None
    model_dir: Path  # the downloaded pyfunc model folder (loadable with mlflow.pyfunc.load_model)
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def bundle(self) -> Path:
        return find_bundle(self.model_dir)

    @property
    def fp32_dir(self) -> Path:
        return self.bundle / "fp32"

    @property
    def reference_dir(self) -> Path:
        return self.bundle / "reference"

    @property
    def model_uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def metric(self, key: str) -> float | None:
        value = self.tags.get(key)
        return float(value) if value not in (None, "") else None


def find_bundle(model_dir: str | Path) -> Path:
    """The ``bundle`` folder inside a served pyfunc model folder.

    Raises:
        FileNotFoundError: the folder holds no bundle with a ``model.onnx``.
    """
    model_dir = Path(model_dir)
    for candidate in [model_dir / BUNDLE, model_dir / "artifacts" / BUNDLE, *model_dir.rglob(BUNDLE)]:
        if (candidate / "model.onnx").is_file():
            return candidate
    raise FileNotFoundError(f"no {BUNDLE}/model.onnx under {str(model_dir)!r}; is it a served model folder?")


def champion_version(settings: Settings, alias: str = CHAMPION) -> Any | None:
    """The ``ModelVersion`` holding ``alias``, or None when there is none (or no registered model)."""
    from mlflow.exceptions import MlflowException

    from pipelines.tracking import configure

    client = configure(settings)
    try:
        return client.get_model_version_by_alias(settings.registry.model_name, alias)
    except MlflowException as exc:
        if exc.error_code in {"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"}:
            return None
        raise


def _cache_root() -> Path:
    """A private model cache in the user's cache folder (``$XDG_CACHE_HOME`` or ``~/.cache``), mode 0700: not the
    shared, world-writable temp folder, where another user could plant a model folder."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mlops-models"
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    root.chmod(0o700)
    return root


def get_champion(settings: Settings, alias: str = CHAMPION, dst: str | Path | None = None) -> Champion | None:
    """Download the model version holding ``alias`` (default: the champion); None when there is none."""
    import mlflow

    mv = champion_version(settings, alias)
    if mv is None:
        return None
    name = settings.registry.model_name
    # The cache is keyed by the store too: two stores can both hold "version 3" of a model of the same name.
    store = hashlib.sha1((settings.mlflow.registry_uri or settings.mlflow.tracking_uri).encode()).hexdigest()[:12]
    target = Path(dst) if dst else _cache_root() / store / name / str(mv.version)
    if not (target / "MLmodel").is_file():
        # Download beside the target, then rename: a crash mid-download never leaves a folder that looks complete.
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{mv.version}", dst_path=str(partial))
        if target.exists():
            shutil.rmtree(target)
        partial.rename(target)
    return Champion(name=name, version=str(mv.version), run_id=mv.run_id, model_dir=target, tags=dict(mv.tags))
