"""Static checks of infra/: KubeRay manifests against the KubeRay CRD schemas, Kubernetes
manifests against the Kubernetes schemas, secrets hygiene, GPU requests, Dockerfiles.

The CRD schemas live in ../shared/crds (beside the repo); the Kubernetes schemas come from the
`kubernetes-validate` package. Nothing here talks to a cluster.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
CRD_DIR = REPO.parent / "shared" / "crds"
NAMESPACE = "medgan"
K8S_VERSION = "1.33"
EXAMPLE_SECRETS = INFRA / "mlflow" / "secrets.example.yaml"
PLACEHOLDER = "CHANGE-ME"

Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_docs(path: Path) -> list[dict[str, Any]]:
    with open(path) as f:
        return [d for d in yaml.load_all(f, Loader=Loader) if d is not None]


def yaml_files() -> list[Path]:
    return sorted(p for p in INFRA.rglob("*") if p.suffix in {".yaml", ".yml"})


def all_docs() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p in yaml_files() for d in load_docs(p)]


def manifests() -> list[tuple[Path, dict[str, Any]]]:
    """Kubernetes objects (kustomization files are not)."""
    return [(p, d) for p, d in all_docs() if p.name != "kustomization.yaml"]


def walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, f"{path}[{i}]")


# ------------------------------------------------------------------- CRD schema -> JSON Schema

_SCHEMA_MAPS = {"properties", "patternProperties", "definitions", "$defs"}
_SCHEMA_ONE = {"items", "additionalProperties", "not", "additionalItems"}
_SCHEMA_LISTS = {"anyOf", "allOf", "oneOf"}


def k8s_to_jsonschema(node: dict[str, Any], strict: bool = True) -> dict[str, Any]:
    """Translate a structural OpenAPI v3 schema (as in a CRD) into a JSON Schema.

    - ``x-kubernetes-int-or-string: true`` -> ``anyOf: [integer, string]``;
    - ``nullable: true`` -> null is also accepted;
    - other ``x-kubernetes-*`` keys (list types, CEL validations, ...) are dropped;
    - strict (like ``kubectl --validate=strict`` / kubeconform -strict): objects with
      ``properties`` reject unknown fields unless ``x-kubernetes-preserve-unknown-fields``.
    """
    out: dict[str, Any] = {}
    for key, val in node.items():
        if key in _SCHEMA_MAPS:
            out[key] = {name: k8s_to_jsonschema(s, strict) for name, s in val.items()}
        elif key in _SCHEMA_ONE and isinstance(val, dict):
            out[key] = k8s_to_jsonschema(val, strict)
        elif key in _SCHEMA_LISTS:
            out[key] = [k8s_to_jsonschema(s, strict) for s in val]
        elif key.startswith("x-") or key == "nullable":
            continue
        else:
            out[key] = val
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        t = out["type"]
        out["type"] = [*t, "null"] if isinstance(t, list) else [t, "null"]
    if (
        strict
        and "properties" in out
        and "additionalProperties" not in out
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


_DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# The CRD leaves metadata as a bare object (the API server validates it); check the parts we use.
METADATA_SCHEMA: dict[str, Any] = {
    "type": "object",
    "anyOf": [{"required": ["name"]}, {"required": ["generateName"]}],
    "properties": {
        "name": {"type": "string", "maxLength": 63, "pattern": _DNS1123_SUBDOMAIN},
        "generateName": {"type": "string", "maxLength": 58, "pattern": r"^[a-z0-9][-a-z0-9]*$"},
        "namespace": {"type": "string", "pattern": _DNS1123_SUBDOMAIN},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "additionalProperties": False,
}

FORMATS = jsonschema.FormatChecker()


@FORMATS.checks("int32")
def _int32(v: object) -> bool:
    return not isinstance(v, int) or -(2**31) <= v < 2**31


@FORMATS.checks("int64")
def _int64(v: object) -> bool:
    return not isinstance(v, int) or -(2**63) <= v < 2**63


def crd_validator(crd_file: str) -> tuple[str, jsonschema.protocols.Validator]:
    crd = load_docs(CRD_DIR / crd_file)[0]
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = k8s_to_jsonschema(version["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = METADATA_SCHEMA
    schema["required"] = sorted(
        {*schema.get("required", []), "apiVersion", "kind", "metadata", "spec"}
    )
    schema["properties"]["apiVersion"] = {"const": "ray.io/v1"}
    schema["properties"]["kind"] = {"const": crd["spec"]["names"]["kind"]}
    jsonschema.Draft7Validator.check_schema(schema)
    return crd["spec"]["names"]["kind"], jsonschema.Draft7Validator(schema, format_checker=FORMATS)


@pytest.fixture(scope="module")
def validators() -> dict[str, jsonschema.protocols.Validator]:
    if not CRD_DIR.is_dir():
        pytest.skip(f"KubeRay CRDs not found at {CRD_DIR} (the shared/ folder beside the repo)")
    return dict(crd_validator(f) for f in ("ray.io_rayclusters.yaml", "ray.io_rayjobs.yaml"))


def errors(validator: jsonschema.protocols.Validator, doc: dict[str, Any]) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]


RAY_FILES = {
    "RayCluster": INFRA / "kuberay" / "raycluster.yaml",
    "RayJob": INFRA / "kuberay" / "rayjob.yaml",
}


def ray_doc(kind: str) -> dict[str, Any]:
    docs = load_docs(RAY_FILES[kind])
    assert len(docs) == 1 and docs[0]["kind"] == kind, f"{RAY_FILES[kind]}: expected one {kind}"
    return docs[0]


def cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


# ------------------------------------------------------------------- KubeRay manifests


@pytest.mark.parametrize("kind", sorted(RAY_FILES))
def test_kuberay_manifest_matches_crd_schema(validators: dict[str, Any], kind: str) -> None:
    assert errors(validators[kind], ray_doc(kind)) == []


def _worker(d: dict[str, Any]) -> dict[str, Any]:
    return cluster_spec(d)["workerGroupSpecs"][0]


def _container(d: dict[str, Any]) -> dict[str, Any]:
    return _worker(d)["template"]["spec"]["containers"][0]


BROKEN = [  # (kind, how to break it, a substring of the expected error)
    ("RayCluster", lambda d: _worker(d).update(replicas="two"), "'two' is not of type 'integer'"),
    ("RayCluster", lambda d: _worker(d).pop("groupName"), "'groupName' is a required property"),
    (
        "RayCluster",
        lambda d: d["spec"].pop("headGroupSpec"),
        "'headGroupSpec' is a required property",
    ),
    ("RayCluster", lambda d: _worker(d).update(minReplica=1), "Additional properties"),
    (
        "RayCluster",
        lambda d: _worker(d)["rayStartParams"].update({"num-gpus": 1}),
        "1 is not of type 'string'",
    ),
    (
        "RayCluster",
        lambda d: _container(d)["resources"]["limits"].update(cpu=["8"]),
        "not valid under any",
    ),
    ("RayCluster", lambda d: _container(d).pop("name"), "'name' is a required property"),
    ("RayCluster", lambda d: _worker(d).update(maxReplicas=2**31), "is not a 'int32'"),
    ("RayCluster", lambda d: d.update(apiVersion="ray.io/v1alpha1"), "'ray.io/v1' was expected"),
    ("RayCluster", lambda d: d["metadata"].update(name="MedGAN_cluster"), "does not match"),
    (
        "RayJob",
        lambda d: d["spec"].update(shutdownAfterJobFinishes="yes"),
        "'yes' is not of type 'boolean'",
    ),
    (
        "RayJob",
        lambda d: d["spec"].update(ttlSecondsAfterFinished="1h"),
        "'1h' is not of type 'integer'",
    ),
    (
        "RayJob",
        lambda d: cluster_spec(d)["headGroupSpec"].pop("template"),
        "'template' is a required property",
    ),
    (
        "RayJob",
        lambda d: d["spec"].update(entrypoint=["python", "-m", "x"]),
        "is not of type 'string'",
    ),
    (
        "RayJob",
        lambda d: _container(d).setdefault("env", []).append({"value": "x"}),
        "'name' is a required property",
    ),
]


@pytest.mark.parametrize("kind, mutate, expected", BROKEN)
def test_validator_rejects_broken_manifests(
    validators: dict[str, Any], kind: str, mutate: Any, expected: str
) -> None:
    doc = copy.deepcopy(ray_doc(kind))
    mutate(doc)
    errs = errors(validators[kind], doc)
    assert any(expected in e for e in errs), (
        f"expected an error containing {expected!r}, got {errs}"
    )


def test_int_or_string_accepts_both(validators: dict[str, Any]) -> None:
    doc = copy.deepcopy(ray_doc("RayCluster"))
    limits = _container(doc)["resources"]["limits"]
    limits.update(cpu=8, memory="32Gi")
    assert errors(validators["RayCluster"], doc) == []
    limits.update(memory="32 gigabytes")  # a quantity must match the Kubernetes quantity pattern
    assert any("does not match" in e for e in errors(validators["RayCluster"], doc))


@pytest.mark.parametrize("kind", sorted(RAY_FILES))
def test_gpu_workers_and_cpu_head(kind: str) -> None:
    spec = cluster_spec(ray_doc(kind))
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head.get("resources", {}).get("limits", {}), (
        "the head must not take a GPU"
    )
    assert spec["headGroupSpec"]["rayStartParams"].get("dashboard-host") == "0.0.0.0"
    gpu_groups = [g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu"]
    assert gpu_groups, "a worker group named 'gpu' is expected"
    for g in gpu_groups:
        res = g["template"]["spec"]["containers"][0]["resources"]
        assert int(res["limits"]["nvidia.com/gpu"]) >= 1
        assert 0 <= g["minReplicas"] <= g["maxReplicas"]
        assert g["rayStartParams"]["num-gpus"] == str(res["limits"]["nvidia.com/gpu"])


IMAGE_RE = re.compile(r"ghcr\.io/medgan/medgan:[^\s\"']+")


def _version() -> str:
    return re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)


@pytest.mark.parametrize("kind", sorted(RAY_FILES))
def test_ray_pods_get_config_from_secrets(kind: str) -> None:
    spec = cluster_spec(ray_doc(kind))
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for g in groups:
        for c in g["template"]["spec"]["containers"]:
            assert c["image"] == f"ghcr.io/medgan/medgan:{_version()}"
            env = {e["name"] for e in c.get("env", [])}
            assert not env & {"MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL"}, "one source: the Secrets"
            refs = {r["secretRef"]["name"]: r["secretRef"].get("optional", False) for r in c["envFrom"]}
            assert refs == {"medgan-s3": False, "medgan-mlflow": False}


def test_one_image_pinned_by_tag_everywhere() -> None:
    """The steps (pipelines/ops.py) and the Ray pods run one image, tagged with the project
    version; no `:latest` anywhere in infra/ or pipelines/."""
    from pipelines.ops import IMAGE

    files = [p for d in ("infra", "pipelines") for p in (REPO / d).rglob("*")
             if p.is_file() and p.suffix in {".py", ".yaml", ".yml", ""}]
    tags = {m for p in files for m in IMAGE_RE.findall(p.read_text())}
    assert tags == {f"ghcr.io/medgan/medgan:{_version()}"}, tags
    assert IMAGE in tags or IMAGE.startswith(("ghcr.io/medgan/medgan:", "MEDGAN_IMAGE"))
    latest = [f"{p.relative_to(REPO)}" for p in files if ":latest" in p.read_text()]
    assert not latest, f":latest in {latest}"
    for p, d in manifests():
        for path, node in walk(d):
            if path.endswith(".image"):
                assert re.search(r":[\w.-]+$", node) and not node.endswith(":latest"), f"{p}{path}: {node}"


def _pins() -> dict[str, str]:
    return dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (INFRA / "constraints.txt").read_text(), re.M))


def test_the_lock_pins_what_the_cluster_depends_on() -> None:
    import importlib.metadata as md

    pins = _pins()
    for kind in RAY_FILES:
        assert pins["ray"] == cluster_spec(ray_doc(kind))["rayVersion"], kind
    server = re.search(r"ARG MLFLOW_VERSION=(\S+)", (INFRA / "mlflow" / "Dockerfile").read_text()).group(1)
    assert pins["mlflow"] == server
    for pkg in ("ray", "mlflow", "kfp", "kfp-kubernetes", "torch", "boto3"):
        assert pkg in pins, f"infra/constraints.txt does not pin {pkg}"
        # the lock is what the tests ran against
        assert md.version(pkg).split("+")[0] == pins[pkg], (pkg, md.version(pkg), pins[pkg])
    assert not [ln for ln in (INFRA / "constraints.txt").read_text().splitlines()
                if ln and not ln.startswith("#") and "==" not in ln], "every line an exact pin"


def test_max_resources_equal_the_autoscaling_maximum() -> None:
    """MEDGAN_RAY_MAX_RESOURCES (what tune sizes its concurrency from) = maxReplicas x a
    worker's CPU/GPU, on every RayCluster pod."""
    spec = ray_doc("RayCluster")["spec"]
    total: dict[str, float] = {"CPU": 0.0, "GPU": 0.0}
    for g in spec["workerGroupSpecs"]:
        res = g["template"]["spec"]["containers"][0]["resources"]["limits"]
        total["CPU"] += g["maxReplicas"] * float(g["rayStartParams"].get("num-cpus", res["cpu"]))
        total["GPU"] += g["maxReplicas"] * float(g["rayStartParams"].get("num-gpus", 0))
    head_cpus = float(spec["headGroupSpec"]["rayStartParams"].get("num-cpus", 0))
    total["CPU"] += head_cpus
    for g in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        env = {e["name"]: e.get("value") for e in g["template"]["spec"]["containers"][0]["env"]}
        assert json.loads(env["MEDGAN_RAY_MAX_RESOURCES"]) == total


def test_tune_concurrency_comes_from_the_maximum(monkeypatch) -> None:
    from components.step import StepInputError
    from components.tune import MAX_RESOURCES_ENV, _max_concurrent

    monkeypatch.setenv(MAX_RESOURCES_ENV, '{"CPU": 32, "GPU": 4}')
    assert _max_concurrent(1, True, None) == 4
    assert _max_concurrent(2, True, None) == 2
    assert _max_concurrent(1, True, {"GPU": 2}) == 2
    assert _max_concurrent(4, False, {"CPU": 4}) == 2
    assert _max_concurrent(8, True, None) == 1  # never below one
    monkeypatch.setenv(MAX_RESOURCES_ENV, "4 GPUs")
    with pytest.raises(StepInputError, match=MAX_RESOURCES_ENV):
        _max_concurrent(1, True, None)


def test_rayjob_runs_training_with_its_gpus_and_cleans_up() -> None:
    from components.step import params_from_args, params_parser
    from components.train import TrainParams

    doc = ray_doc("RayJob")
    spec = doc["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:3] == ["python", "-m", "components.train"]
    p = params_from_args(TrainParams, params_parser(TrainParams, "t", "").parse_args(argv[3:]))
    assert p.data_uri.startswith("s3://") and p.output_uri.startswith("s3://")
    assert p.config_uri and p.config_uri.startswith("s3://")
    assert "--num-workers" in argv and "--use-gpu" in argv and p.use_gpu
    gpus = sum(g["replicas"] * int(g["rayStartParams"]["num-gpus"])
               for g in cluster_spec(doc)["workerGroupSpecs"])
    assert 1 <= p.num_workers <= gpus, "the workers must fit in replicas x GPUs per pod"
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0


# ------------------------------------------------------------------- all manifests


def test_all_infra_yaml_parses() -> None:
    files = yaml_files()
    assert len(files) >= 7, files
    for p in files:
        docs = load_docs(p)
        assert docs, f"{p}: no YAML document"
        for d in docs:
            assert isinstance(d, dict) and "apiVersion" in d and "kind" in d, (
                f"{p}: not a Kubernetes object"
            )


def test_kustomization_lists_existing_files() -> None:
    kust = load_docs(INFRA / "mlflow" / "kustomization.yaml")[0]
    for res in kust["resources"]:
        assert (INFRA / "mlflow" / res).is_file(), f"kustomization.yaml lists missing {res}"
    assert "secrets.example.yaml" not in kust["resources"], "example secrets must never be applied"


def test_everything_lives_in_the_medgan_namespace() -> None:
    for p, d in manifests():
        if d["kind"] == "Namespace":
            assert d["metadata"]["name"] == NAMESPACE
        else:
            assert d["metadata"].get("namespace") == NAMESPACE, (
                f"{p}: {d['kind']} outside {NAMESPACE}"
            )


def test_kubernetes_objects_match_kubernetes_schemas() -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    checked = 0
    for p, d in manifests():
        if d["apiVersion"].startswith("ray.io/"):
            continue
        try:
            kv.validate(d, K8S_VERSION, strict=True)
        except kv.ValidationError as e:
            where = "/".join(map(str, e.path))
            pytest.fail(f"{p}: {d['kind']}/{d['metadata']['name']}: {where}: {e.message}")
        checked += 1
    assert checked >= 8
    bad = copy.deepcopy(next(d for _, d in manifests() if d["kind"] == "Deployment"))
    bad["spec"]["replicas"] = "one"
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, K8S_VERSION, strict=True)


def test_services_select_their_pods() -> None:
    docs = [d for _, d in manifests()]
    pod_labels = [
        d["spec"]["template"]["metadata"]["labels"]
        for d in docs
        if d["kind"] in {"Deployment", "StatefulSet"}
    ]
    for svc in (d for d in docs if d["kind"] == "Service"):
        sel = svc["spec"]["selector"]
        name = svc["metadata"]["name"]
        assert any(sel.items() <= labels.items() for labels in pod_labels), (
            f"Service {name} selects no pod"
        )
    for d in docs:
        if d["kind"] in {"Deployment", "StatefulSet"}:
            assert (
                d["spec"]["selector"]["matchLabels"].items()
                <= d["spec"]["template"]["metadata"]["labels"].items()
            )


def test_mlflow_server_uses_postgres_and_s3_artifacts() -> None:
    mlflow = next(
        d for _, d in manifests() if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow"
    )
    c = mlflow["spec"]["template"]["spec"]["containers"][0]
    argv = c["command"] + c["args"]
    assert argv[:2] == ["mlflow", "server"]
    assert any(a.startswith("--backend-store-uri=postgresql://postgres.") for a in argv)
    assert "--artifacts-destination=s3://mlflow/" in argv
    assert "--host=0.0.0.0" in argv and "--port=5000" in argv
    hosts = next(a for a in argv if a.startswith("--allowed-hosts=")).split("=", 1)[1].split(",")
    assert "mlflow.medgan.svc.cluster.local:5000" in hosts  # the URI the Ray pods use
    assert "--app-name=basic-auth" in argv, "the MLflow server must require a login"


def _doc(kind: str, name: str) -> dict[str, Any]:
    return next(d for _, d in manifests() if d["kind"] == kind and d["metadata"]["name"] == name)


def test_mlflow_auth_from_secrets_and_a_configmap() -> None:
    import configparser

    dep = _doc("Deployment", "mlflow")["spec"]["template"]["spec"]
    c = dep["containers"][0]
    env = {e["name"]: e for e in c["env"]}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in dep["volumes"]}
    path = env["MLFLOW_AUTH_CONFIG_PATH"]["value"]
    vol = next(n for n, m in mounts.items() if path.startswith(m + "/"))
    assert vols[vol]["configMap"]["name"] == "mlflow-auth"
    ini = configparser.ConfigParser()
    ini.read_string(_doc("ConfigMap", "mlflow-auth")["data"]["basic_auth.ini"])
    assert ini["mlflow"]["database_uri"].startswith("postgresql://postgres.")
    assert "admin_password" not in ini["mlflow"], "the admin password comes from a Secret"
    assert {r["secretRef"]["name"] for r in c["envFrom"]} == {"medgan-mlflow-admin"}
    # the server's S3 login is its own MinIO user, not the application's
    s3 = {env[k]["valueFrom"]["secretKeyRef"]["name"] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    assert s3 == {"medgan-mlflow-s3"}
    job = _doc("Job", "mlflow-create-user")["spec"]["template"]["spec"]["containers"][0]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in job["env"] if "valueFrom" in e}
    assert refs["MLFLOW_TRACKING_USERNAME"] == refs["MLFLOW_TRACKING_PASSWORD"] == "medgan-mlflow"
    assert refs["MLFLOW_AUTH_ADMIN_PASSWORD"] == "medgan-mlflow-admin"


def test_minio_users_get_one_bucket_each_and_root_stays_with_minio() -> None:
    cm = _doc("ConfigMap", "minio-setup")["data"]
    for policy, bucket in (("medgan-app", "medgan"), ("mlflow-server", "mlflow")):
        doc = json.loads(cm[f"{policy}.json"])
        resources = {r for st in doc["Statement"] for r in st["Resource"]}
        assert resources == {f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"}, policy
        actions = {a for st in doc["Statement"] for a in st["Action"]}
        assert all(a.startswith("s3:") and "*" not in a for a in actions), policy
        assert not actions & {"s3:CreateBucket", "s3:DeleteBucket", "s3:PutBucketPolicy"}, policy
        assert all(st["Effect"] == "Allow" for st in doc["Statement"])
    script = cm["setup.sh"]
    assert "mc mb --ignore-existing root/medgan root/mlflow" in script
    assert "setup_user medgan-app" in script and "setup_user mlflow-server" in script
    users = {}
    for p, d in manifests():
        for name, key in secret_refs(d):
            users.setdefault(name, set()).add(
                    f"{d['kind']}/{d['metadata'].get('name') or d['metadata'].get('generateName')}")
    assert users["medgan-minio-root"] == {"StatefulSet/minio", "Job/minio-setup"}
    minio = _doc("StatefulSet", "minio")["spec"]["template"]["spec"]["containers"][0]
    assert {e["valueFrom"]["secretKeyRef"]["name"] for e in minio["env"]} == {"medgan-minio-root"}


# ------------------------------------------------------------------- secrets

SENSITIVE = re.compile(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL)", re.I)
URL_WITH_LOGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@", re.I)


def secret_refs(doc: dict[str, Any]) -> set[tuple[str, str | None]]:
    refs: set[tuple[str, str | None]] = set()
    for _, node in walk(doc):
        if isinstance(node, dict):
            if isinstance(node.get("secretRef"), dict):
                refs.add((node["secretRef"]["name"], None))
            if isinstance(node.get("secretKeyRef"), dict):
                refs.add((node["secretKeyRef"]["name"], node["secretKeyRef"]["key"]))
    return refs


def test_no_literal_secrets_outside_the_example() -> None:
    problems = []
    for p, d in manifests():
        if p == EXAMPLE_SECRETS:
            continue
        if d["kind"] == "Secret":
            problems.append(f"{p}: a Secret object (create Secrets with kubectl instead)")
        for path, node in walk(d):
            if (
                isinstance(node, dict)
                and "name" in node
                and "value" in node
                and SENSITIVE.search(str(node["name"]))
            ):
                problems.append(
                    f"{p}{path}: env {node['name']} has a literal value (use secretKeyRef)"
                )
            if isinstance(node, dict):
                for k, v in node.items():
                    if (
                        SENSITIVE.search(str(k))
                        and isinstance(v, (str, int))
                        and k not in {"secretName"}
                    ):
                        problems.append(f"{p}{path}.{k}: literal value for a secret-like key")
            if isinstance(node, str) and URL_WITH_LOGIN.search(node):
                problems.append(f"{p}{path}: URL with an embedded login")
    for df in INFRA.rglob("Dockerfile"):
        for line in df.read_text().splitlines():
            if re.match(r"\s*(ENV|ARG)\b", line) and SENSITIVE.search(line):
                problems.append(f"{df}: {line.strip()}")
    assert not problems, "\n".join(problems)


def test_example_secrets_are_placeholders_and_cover_every_reference() -> None:
    examples = load_docs(EXAMPLE_SECRETS)
    provided: dict[str, set[str]] = {}
    for s in examples:
        assert s["kind"] == "Secret" and s["metadata"]["namespace"] == NAMESPACE
        values = {**s.get("stringData", {}), **s.get("data", {})}
        assert values, f"{s['metadata']['name']}: no keys"
        for k, v in values.items():
            if SENSITIVE.search(k) or k.endswith(("_USER", "_USERNAME")):
                assert str(v).startswith(PLACEHOLDER), (
                    f"{s['metadata']['name']}.{k} is not a {PLACEHOLDER} placeholder"
                )
        provided[s["metadata"]["name"]] = set(values)
    assert {"medgan-s3", "medgan-mlflow", "medgan-minio-root", "medgan-mlflow-s3",
            "medgan-mlflow-admin", "medgan-postgres"} <= provided.keys()
    assert {"AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"} <= provided["medgan-s3"]
    assert "MLFLOW_TRACKING_URI" in provided["medgan-mlflow"]
    for p, d in manifests():
        for name, key in secret_refs(d):
            assert name in provided, (
                f"{p}: Secret {name} is not described in {EXAMPLE_SECRETS.name}"
            )
            assert key is None or key in provided[name], (
                f"{p}: key {key} missing from Secret {name}"
            )


# ------------------------------------------------------------------- Dockerfiles


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def test_components_dockerfile() -> None:
    ins = dockerfile_instructions(INFRA / "Dockerfile")
    ops = [op for op, _ in ins]
    assert ops[0] in {"ARG", "FROM"} and "FROM" in ops
    default_base = next((r for op, r in ins if op == "ARG" and r.startswith("BASE_IMAGE=")), "")
    base = default_base.split("=", 1)[1]
    assert re.search(r":[\w.-]+$", base) and not base.endswith(":latest"), base
    runs = " ".join(r for op, r in ins if op == "RUN")
    assert re.search(r"pip install --constraint infra/constraints.txt \"?\.\[pipeline\]\"?", runs), (
        "the Dockerfile must pip install .[pipeline] from the lock"
    )
    assert ("WORKDIR", "/app") in ins
    users = [r for op, r in ins if op == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, (
        "the image must run as a non-root user"
    )
    assert "wget" in runs, "KubeRay's probes need wget in the Ray image"
    assert ("ARG", "GIT_COMMIT=unknown") in ins
    assert ("ENV", "MEDGAN_GIT_COMMIT=${GIT_COMMIT}") in ins, "the commit baked into the image"
    entry = [r for op, r in ins if op == "ENTRYPOINT"]
    assert entry in ([], ["[]"]), "KFP and KubeRay set the command: no ENTRYPOINT"


def test_mlflow_dockerfile_has_postgres_and_s3_clients() -> None:
    runs = " ".join(
        r for op, r in dockerfile_instructions(INFRA / "mlflow" / "Dockerfile") if op == "RUN"
    )
    assert "mlflow[auth]==" in runs, "the basic-auth app needs mlflow[auth] (Flask-WTF)"
    for pkg in ("mlflow", "psycopg2", "boto3"):
        assert pkg in runs, f"infra/mlflow/Dockerfile does not install {pkg}"


# ------------------------------------------------------------------- MLflow basic-auth, for real


def test_mlflow_basic_auth_server_and_user_job(tmp_path: Path) -> None:
    """The server's basic-auth settings (ConfigMap mlflow-auth; SQLite standing in for Postgres)
    with the admin from the environment, as the Deployment has it; the mlflow-create-user Job's
    script creates the application user (twice: idempotent); only logged-in requests pass."""
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    import requests

    from tests.mlflow_server import free_port

    cm = _doc("ConfigMap", "mlflow-auth")["data"]
    ini = re.sub(r"(?m)^database_uri = .*$", f"database_uri = sqlite:///{tmp_path / 'auth.db'}",
                 cm["basic_auth.ini"])
    (tmp_path / "basic_auth.ini").write_text(ini)
    (tmp_path / "create_user.py").write_text(cm["create_user.py"])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    admin = {"MLFLOW_AUTH_ADMIN_USERNAME": "admin", "MLFLOW_AUTH_ADMIN_PASSWORD": "admin-" + os.urandom(8).hex()}
    app = {"MLFLOW_TRACKING_USERNAME": "medgan-app", "MLFLOW_TRACKING_PASSWORD": "app-" + os.urandom(8).hex()}
    base = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env = {**base, **admin, "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "basic_auth.ini"),
           "MLFLOW_FLASK_SERVER_SECRET_KEY": os.urandom(16).hex(),
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth",
                             "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                             "--artifacts-destination", str(tmp_path / "artifacts"),
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:  # probes: no login
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()[-3000:]
            time.sleep(0.5)
        job_env = {**base, **admin, **app, "MLFLOW_URL": url}
        for attempt in ("created", "exists"):
            res = subprocess.run([sys.executable, str(tmp_path / "create_user.py")], env=job_env,
                                 capture_output=True, text=True, timeout=120)
            assert res.returncode == 0, res.stderr
            assert attempt in res.stdout and app["MLFLOW_TRACKING_PASSWORD"] not in res.stdout + res.stderr
        search = f"{url}/api/2.0/mlflow/experiments/search?max_results=5"
        assert requests.get(search, timeout=30).status_code == 401
        assert requests.get(search, auth=("medgan-app", "wrong"), timeout=30).status_code == 401
        login = (app["MLFLOW_TRACKING_USERNAME"], app["MLFLOW_TRACKING_PASSWORD"])
        assert requests.get(search, auth=login, timeout=30).status_code == 200
        r = requests.post(f"{url}/api/2.0/mlflow/experiments/create", json={"name": "medgan"},
                          auth=login, timeout=30)
        assert r.status_code == 200, r.text
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        log.close()
