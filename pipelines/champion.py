"""Read access to the current champion in the MLflow Model Registry.

The registered model version's artifact is the served pyfunc model. Its ``bundle`` folder carries everything
that must travel together, so that a rollback restores all of it:

    bundle/model.onnx      the served (compressed) ONNX graph
    bundle/tokenizer/      the tokenizer
    bundle/labels.json     class names in logit order
    bundle/fp32/           the fp32 transformers weights the next fine-tune starts from
    bundle/reference/      the drift reference (see pipelines.data.reference)

The pipeline itself never unpickles a model: it scores the champion from ``bundle/`` (:meth:`Champion.predictor`,
onnxruntime + the tokenizer + ``labels.json``). ``python_model.pkl`` beside it is only for ``mlflow models serve``.

The download cache (:func:`get_champion`) lives in a private 0700 folder in the user's cache folder, one entry per
store, model and version, each downloaded beside its place and renamed into it. Every entry holds a manifest
(``.mlops-manifest.json``) with the SHA-256 and size of each file, written right after the download, and is checked
against it before every use: a changed, missing or extra file (a planted ``python_model.pkl``, say) or a symlink
makes it corrupt, and it is deleted and downloaded again. MLflow's registry keeps no content hash of an artifact,
so the manifest hashes what was downloaded; when the version carries the tag ``mlops.bundle_sha256`` (the
:func:`tree_digest` of the bundle, which whoever registers the version may set), the bundle must also match it,
at download and at every use, and a fresh download that does not is a :class:`CorruptArtifact`: no retry helps.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow

from pipelines.errors import CorruptArtifact
from pipelines.io.tracking import configure
from pipelines.registry import CHAMPION, TAG_BUNDLE_DIGEST, version_by_alias
from pipelines.serving import OnnxPredictor

if TYPE_CHECKING:
    from pipelines.config import Settings
    from pipelines.serving import OnnxPredictor

log = logging.getLogger(__name__)

BUNDLE = "bundle"
#: The manifest of a downloaded entry: {"files": {relative path: {"sha256", "size"}}, "bundle_sha256", ...}.
MANIFEST = ".mlops-manifest.json"


@dataclass
class Champion:
    name: str
    version: str
    run_id: str | None
    model_dir: Path  # the downloaded served model folder; the pipeline reads only its bundle (never unpickles)
    tags: dict[str, str] = field(default_factory=dict)

    def predictor(self) -> OnnxPredictor:
        """The champion's served ONNX graph, tokenizer and labels, loaded from the bundle (no pickle).

        Raises:
            CorruptArtifact: the bundle is incomplete or does not load (its cached copy is dropped first).
        """
        return load_predictor(self.model_dir, f"{self.name} version {self.version}")

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
    return version_by_alias(configure(settings), settings.registry.model_name, alias)


def load_predictor(model_dir: str | Path, what: str = "the served model") -> OnnxPredictor:
    """An :class:`~pipelines.serving.OnnxPredictor` on the bundle of a served model folder (no pickle loaded).

    Raises:
        CorruptArtifact: no bundle, or its graph, tokenizer, labels or serving config do not load.
    """
    # lazy: serving defines the pyfunc PythonModel, and with MLflow loaded its import logs a type-hint warning;
    # register, which imports this module for find_bundle and tree_digest, never builds a predictor

    try:
        return OnnxPredictor(find_bundle(model_dir))
    except Exception as exc:
        manifest = Path(model_dir) / MANIFEST
        if manifest.is_file():  # a cache entry: drop it, so the next use downloads it again
            shutil.rmtree(model_dir, ignore_errors=True)
        raise CorruptArtifact(f"{what} at {str(model_dir)!r} does not load: {type(exc).__name__}: {exc}") from exc


def file_manifest(root: Path) -> dict[str, dict[str, Any]]:
    """SHA-256 and size of every file under ``root`` (the manifest file excluded), by relative path.

    Raises:
        CorruptArtifact: a symlink or something other than a file or folder lies under ``root``.
    """
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            raise CorruptArtifact(f"{rel!r} in {str(root)!r} is not a plain file")
        if path.is_file() and rel != MANIFEST:
            digest = hashlib.sha256()
            with path.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
            files[rel] = {"sha256": digest.hexdigest(), "size": path.stat().st_size}
    return files


def tree_digest(folder: str | Path) -> str:
    """One SHA-256 over the relative paths and SHA-256 of every file under ``folder`` (e.g. a bundle)."""
    files = file_manifest(Path(folder))
    lines = "".join(f"{rel}\0{meta['sha256']}\n" for rel, meta in sorted(files.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def _bundle_digest(files: dict[str, dict[str, Any]], bundle_rel: str) -> str:
    prefix = f"{bundle_rel}/"
    lines = "".join(
        f"{rel.removeprefix(prefix)}\0{meta['sha256']}\n"
        for rel, meta in sorted(files.items())
        if rel.startswith(prefix)
    )
    return hashlib.sha256(lines.encode()).hexdigest()


def write_manifest(entry: Path, source: str, expected_bundle: str | None, run_id: str | None = None) -> dict[str, Any]:
    """Hash a fresh download and write its manifest.

    Raises:
        CorruptArtifact: it has no bundle, or its bundle does not match ``expected_bundle`` (the registry's tag).
    """
    files = file_manifest(entry)
    try:
        bundle_rel = find_bundle(entry).relative_to(entry).as_posix()
    except FileNotFoundError as exc:
        raise CorruptArtifact(f"{source}: {exc}") from None
    bundle = _bundle_digest(files, bundle_rel)
    if expected_bundle and bundle != expected_bundle:
        raise CorruptArtifact(
            f"{source}: the downloaded bundle's SHA-256 {bundle[:16]}... does not match the version's tag "
            f"{TAG_BUNDLE_DIGEST}={expected_bundle[:16]}...; the registered artifact is corrupt"
        )
    manifest = {"source": source, "run_id": run_id, "bundle": bundle_rel, "bundle_sha256": bundle, "files": files}
    (entry / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def verify_entry(entry: Path, expected_bundle: str | None = None, run_id: str | None = None) -> str | None:
    """Why the cache entry ``entry`` may not be used, or None when every file matches its manifest (and, given
    ``run_id``, it was downloaded from that run: a store made anew at the same URI numbers its versions again)."""
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
        files = file_manifest(entry)
    except (OSError, ValueError, CorruptArtifact) as exc:
        return f"no readable manifest or a foreign file: {exc}"
    expected = manifest.get("files") or {}
    extra, missing = sorted(set(files) - set(expected)), sorted(set(expected) - set(files))
    if extra or missing:
        return f"files added {extra[:3]} or missing {missing[:3]}"
    changed = [rel for rel, meta in files.items() if meta != expected[rel]]
    if changed:
        return f"content changed: {changed[:3]}"
    if expected_bundle and manifest.get("bundle_sha256") != expected_bundle:
        return f"bundle does not match the version's tag {TAG_BUNDLE_DIGEST}"
    if run_id and manifest.get("run_id") != run_id:
        return f"downloaded from run {manifest.get('run_id')}, not {run_id} (the store was made anew)"
    return None


def _cache_root() -> Path:
    """A private model cache in the user's cache folder (``$XDG_CACHE_HOME`` or ``~/.cache``), mode 0700: not the
    shared, world-writable temp folder, where another user could plant a model folder."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mlops-models"
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    root.chmod(0o700)
    return root


def get_champion(settings: Settings, alias: str = CHAMPION, dst: str | Path | None = None) -> Champion | None:
    """Download the model version holding ``alias`` (default: the champion); None when there is none."""
    mv = champion_version(settings, alias)
    if mv is None:
        return None
    name = settings.registry.model_name
    source = f"models:/{name}/{mv.version}"
    expected = (mv.tags or {}).get(TAG_BUNDLE_DIGEST) or None
    # The cache is keyed by the store too: two stores can both hold "version 3" of a model of the same name.
    store = hashlib.sha1((settings.mlflow.registry_uri or settings.mlflow.tracking_uri).encode()).hexdigest()[:12]
    target = Path(dst) if dst else _cache_root() / store / name / str(mv.version)
    problem = verify_entry(target, expected, mv.run_id) if target.exists() else "not downloaded"
    if problem is not None:
        if target.exists():
            log.warning("champion cache: %s at %s is unusable (%s); downloading it again", source, target, problem)
        # Download beside the target, then rename: a crash mid-download never leaves a folder that looks complete.
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(partial))
            write_manifest(partial, source, expected, mv.run_id)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        if target.exists():
            shutil.rmtree(target)
        partial.rename(target)
    return Champion(name=name, version=str(mv.version), run_id=mv.run_id, model_dir=target, tags=dict(mv.tags))
