"""MLflow model-registry look-ups and plumbing of the register step.

:func:`fluent_target` points MLflow's fluent API (``log_model`` needs it) at one tracking URI
and restores it after; :func:`existing_version` finds the version already holding a model
(same ``model.pt`` sha256 tag and run), :func:`champion` the version holding an alias and
:func:`champion_mae` its test MAE.

>>> with fluent_target("sqlite:////tmp/medgan-doc.db"):       # doctest: +SKIP
...     mlflow.register_model(model_uri, "medgan-sct")
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from components.registry_policy import MAE_TAG, SHA_TAG
from components.step import finite_or_none

__all__ = ["fluent_target", "existing_version", "champion", "champion_mae"]


@contextlib.contextmanager
def fluent_target(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (needed by ``log_model``) at ``uri``; restore everything after."""
    import mlflow
    from mlflow.tracking._model_registry import utils as reg_utils
    from mlflow.tracking._tracking_service import utils as trk_utils

    env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    saved_t, saved_r = getattr(trk_utils, "_tracking_uri", None), getattr(reg_utils, "_registry_uri", None)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved_t)
        reg_utils._registry_uri = saved_r
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def existing_version(client: Any, name: str, run_id: str | None, sha: str) -> Any | None:
    """The version of ``name`` already holding this model (same sha256 and, if known, run)."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    for mv in sorted(versions, key=lambda v: int(v.version)):
        if mv.tags.get(SHA_TAG) == sha and (run_id is None or mv.run_id == run_id):
            return mv
    return None


def champion(client: Any, name: str, alias: str) -> Any | None:
    """The version of ``name`` holding ``alias``, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def champion_mae(client: Any, mv: Any) -> float | None:
    """The champion's test MAE: its model-card tag, else its run's ``test_mae_hu`` metric."""
    v = finite_or_none(mv.tags.get(MAE_TAG))
    if v is None and mv.run_id:
        with contextlib.suppress(Exception):
            v = finite_or_none(client.get_run(mv.run_id).data.metrics.get(MAE_TAG))
    return v
