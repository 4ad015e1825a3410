"""MLflow model-registry look-ups and plumbing of the register step.

:func:`fluent_target` points MLflow's fluent API (``log_model`` needs it) at one tracking URI
(credentials moved into MLflow's env vars) and restores it after; :func:`logged_model_uri` finds a
model already logged in a run; :func:`existing_version` finds the version already holding a model
(same ``model.pt`` sha256 tag and run), :func:`champion` the version holding an alias and
:func:`champion_mae` its test MAE, and :func:`settle_alias` moves an alias to the best eligible
version, race-free (see its docstring).

>>> with fluent_target("sqlite:////tmp/medgan-doc.db"):       # doctest: +SKIP
...     mlflow.register_model(model_uri, "medgan-sct")
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from components.registry_policy import EVAL_TAG, MAE_TAG, SHA_TAG, VersionFacts, alias_target
from components.step import finite_or_none

__all__ = ["fluent_target", "logged_model_uri", "existing_version", "all_versions", "champion", "champion_mae",
           "settle_alias", "Settled"]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def fluent_target(uri: str) -> Iterator[str]:
    """Point MLflow's fluent API (needed by ``log_model``) at ``uri``; restore everything after.

    Yields the URI to use for clients too: ``user:password@`` is moved out of the URI into
    ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` for the duration (MLflow's own
    client reads them), so MLflow never prints or stores a URI with credentials (its
    "View run at <uri>" lines included).

    >>> with fluent_target("http://u:pw@mlflow:5000") as clean:     # doctest: +SKIP
    ...     clean, os.environ["MLFLOW_TRACKING_PASSWORD"]
    ('http://mlflow:5000', 'pw')
    """
    import mlflow
    from mlflow.tracking._model_registry import utils as reg_utils
    from mlflow.tracking._tracking_service import utils as trk_utils

    from components.mlflow_utils import redact_uri

    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_TRACKING_USERNAME",
            "MLFLOW_TRACKING_PASSWORD")
    env = {k: os.environ.get(k) for k in keys}
    parts = urlsplit(uri)
    clean = str(redact_uri(uri))
    if clean != uri:
        os.environ["MLFLOW_TRACKING_USERNAME"] = unquote(parts.username or "")
        os.environ["MLFLOW_TRACKING_PASSWORD"] = unquote(parts.password or "")
    saved_t, saved_r = getattr(trk_utils, "_tracking_uri", None), getattr(reg_utils, "_registry_uri", None)
    mlflow.set_tracking_uri(clean)
    mlflow.set_registry_uri(clean)
    try:
        yield clean
    finally:
        mlflow.set_tracking_uri(saved_t)
        reg_utils._registry_uri = saved_r
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def logged_model_uri(client: Any, run_id: str, sha: str, marker: dict[str, str]) -> str | None:
    """``models:/<id>`` of a model already logged in run ``run_id`` holding ``model.pt`` sha256
    ``sha`` (tag ``model_sha256``) in the current format (every ``marker`` tag), or None: a
    second registration of the same model (another name, another evaluation) uploads nothing."""
    from mlflow.exceptions import MlflowException

    try:
        exp_id = client.get_run(run_id).info.experiment_id
        found = client.search_logged_models(
            experiment_ids=[exp_id],
            filter_string=" AND ".join([f"source_run_id = '{run_id}'", f"tags.{SHA_TAG} = '{sha}'",
                                        "status = 'READY'",
                                        *(f"tags.{k} = '{v}'" for k, v in marker.items())]),
            max_results=1)
    except MlflowException:
        return None
    return f"models:/{found[0].model_id}" if found else None


def all_versions(client: Any, name: str) -> list[Any]:
    """Every version of registered model ``name`` (with tags), oldest first; [] if none."""
    from mlflow.exceptions import MlflowException

    out: list[Any] = []
    token = None
    try:
        while True:
            page = client.search_model_versions(f"name = '{name}'", max_results=1000, page_token=token)
            out.extend(page)
            token = getattr(page, "token", None)
            if not token:
                break
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise
    return sorted(out, key=lambda v: int(v.version))


def existing_version(client: Any, name: str, run_id: str | None, sha: str,
                     eval_sha: str | None = None) -> Any | None:
    """The version of ``name`` already holding this model (same sha256 and, if known, run) with
    the same evaluation (tag ``evaluate_manifest_sha256``, when ``eval_sha`` is given): a version's
    model card is one evaluation, so a new evaluation makes a new version."""
    for mv in all_versions(client, name):
        if eval_sha is not None and mv.tags.get(EVAL_TAG) != eval_sha:
            continue
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


@dataclass(frozen=True)
class Settled:
    """Result of :func:`settle_alias`: the version holding the alias at the end (None: no
    alias), how many alias writes this call made and how many read rounds it took."""

    champion: VersionFacts | None
    moves: int
    rounds: int


def settle_alias(client: Any, name: str, alias: str, *, test_set: str | None,
                 max_rounds: int = 50) -> Settled:
    """Move ``alias`` of ``name`` to the best eligible version; safe against concurrent callers.

    MLflow has no compare-and-set for aliases, so this is a *convergence* loop rather than a
    lock: each round reads the alias and then every version's tags, computes
    :func:`components.registry_policy.alias_target` and, if the alias is not on the target,
    writes it and goes round again. It returns only after a round in which it read the alias
    already on the target (so its own last write has been re-checked against a later read).

    Why the final state is always the best eligible version, whatever the interleaving, when
    each register step calls this *after* its version exists with all its tags (MLflow's
    ``create_model_version`` writes the tags with the version):

    * Let W be the last alias write, by caller R. After W, R read the alias (= W's target, since
      nobody wrote after W) and all versions, and found the alias on the target: it is the best
      among the versions R saw.
    * A version V that R did not see was created after R's last version read, so V's own caller
      started its final round after that too, read the same alias and a superset of the
      versions, and found the alias on *its* target (it made no write after W). Since
      ``alias_target`` only ever moves the alias to a strictly better eligible version on the
      champion's test set, "the alias is on the target" means no eligible version seen
      (V included) beats the champion: the champion is the best eligible version overall.
    * It terminates: every write moves the alias to the best version its writer saw, the set of
      versions only grows, and once every caller's versions exist they all compute one target.
      ``max_rounds`` (with a small random back-off between writes) bounds a pathological case
      and raises ``RuntimeError`` instead of returning an unsettled alias.
    * The store's own alias write is not atomic either (two first writes of an alias collide on
      a unique constraint): a failed write is just another lost race, re-read next round.

    ``test_set``: the caller's candidate's test set; used only when there is no champion yet
    (the first champion fixes the test set later versions are compared on).

    >>> settle_alias(MlflowClient("http://mlflow:5000"), "medgan-sct", "champion",   # doctest: +SKIP
    ...              test_set="ab12…:test")
    Settled(champion=VersionFacts(version='4', mae=81.2, ...), moves=1, rounds=2)
    """
    from mlflow.exceptions import MlflowException

    moves = failures = 0
    for rnd in range(1, max_rounds + 1):
        # alias first, versions second: a version missing from this read was created after the
        # alias read, and its own caller will re-check (see the argument above)
        champ_mv = champion(client, name, alias)
        versions = [VersionFacts.from_tags(mv.version, mv.tags) for mv in all_versions(client, name)]
        current = None
        if champ_mv is not None:
            current = next((v for v in versions if v.version == str(champ_mv.version)),
                           VersionFacts.from_tags(champ_mv.version, champ_mv.tags))
        target = alias_target(current, versions, test_set=test_set)
        if target is None or (current is not None and target.version == current.version):
            return Settled(current, moves, rnd)
        log.info("%s: alias '%s' %s -> v%s (test MAE %s)", name, alias,
                 f"v{current.version}" if current else "(none)", target.version, target.mae)
        try:
            client.set_registered_model_alias(name, alias, target.version)
            moves += 1
        except MlflowException as exc:
            # the store's alias write is itself read-then-insert: a concurrent first write of the
            # alias fails with a unique-constraint error. Harmless: the next round re-reads.
            failures += 1
            if failures > max_rounds // 2:
                raise
            log.info("%s: alias '%s' write lost a race (%s); re-reading", name, alias,
                     str(exc.message).splitlines()[0][:200])
        time.sleep(random.uniform(0.0, 0.05 * min(rnd, 10)))
    raise RuntimeError(f"{name}: alias '{alias}' did not settle after {max_rounds} rounds of "
                       "concurrent registrations; rerun the register step")
