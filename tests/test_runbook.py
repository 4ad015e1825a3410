"""docs/deploy.md followed verbatim works: the documented submit compiles, and every environment
variable the steps read is provided by a Secret the compiled pipeline mounts (and the runbook
creates), by a pipeline parameter, by the image or the Ray cluster's manifest, or is an optional
setting named here with the reason.

The variables are found by parsing ``components/`` and ``gan_core/`` (``os.environ.get(X)``,
``os.getenv(X)``, ``os.environ[X]``, ``X in os.environ``), so a new one fails this test until it
is provided or listed.
"""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "docs" / "deploy.md"

#: Read by the steps but optional: each has a working default; the reason says why it needs no
#: Secret or parameter.
OPTIONAL = {
    "MLFLOW_REGISTRY_URI": "saved and restored around MLflow's fluent log_model (model_registry); "
                           "the registry defaults to the tracking URI",
    "MEDGAN_FAULT_KILL": "test-only fault injection (kill a worker at a step); unset in production",
    "MEDGAN_CACHE_DIR": "where shards/sources are cached; default: the temp dir",
    "MEDGAN_S3_ADDRESSING_STYLE": "S3 addressing style; default: path with a custom endpoint",
    "AWS_ENDPOINT_URL_S3": "an S3-only endpoint override of AWS_ENDPOINT_URL (which the Secret sets)",
    "AWS_REGION": "alternative to AWS_DEFAULT_REGION (which the Secret sets)",
    "AWS_SESSION_TOKEN": "temporary AWS credentials; MinIO users have none",
    "AWS_PROFILE": "an AWS config profile; the Secret gives keys instead",
}
#: Provided by a pipeline parameter: the steps take it as an argument and fall back to the variable.
BY_PARAMETER = {"RAY_ADDRESS": "ray_address", "MLFLOW_TRACKING_URI": "tracking_uri"}


# --------------------------------------------------------------------------- the code's reads


def _strings(node: ast.AST) -> set[str] | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        items = [_strings(e) for e in node.elts]
        return set().union(*items) if items and all(i is not None for i in items) else None
    return None


def _bindings(tree: ast.AST) -> dict[str, set[str]]:
    """Names bound to string literals anywhere in a module: ``X = "..."``, ``names = (...)``,
    ``for k in ("A", "B")`` (loops and comprehensions)."""
    out: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            values = _strings(node.value) if node.value is not None else None
            for t in targets:
                if isinstance(t, ast.Name) and values is not None:
                    out.setdefault(t.id, set()).update(values)
        elif isinstance(node, (ast.For, ast.comprehension)):
            values = _strings(node.iter)
            if values is None and isinstance(node.iter, ast.Name):
                values = out.get(node.iter.id)
            if isinstance(node.target, ast.Name) and values is not None:
                out.setdefault(node.target.id, set()).update(values)
    return out


def _is_environ(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "environ"
            and isinstance(node.value, ast.Name) and node.value.id == "os")


def env_reads(files: list[Path] | None = None) -> dict[str, list[str]]:
    """``{variable: ["file:line", ...]}`` for every environment read in ``files`` (default:
    ``components/`` and ``gan_core/``); a read whose name cannot be resolved fails (name it with
    a constant)."""
    if files is None:
        files = sorted(p for r in ("components", "gan_core") for p in (REPO / r).rglob("*.py"))
    trees = {p: ast.parse(p.read_text(), str(p)) for p in files}
    constants: dict[str, set[str]] = {}
    for tree in trees.values():
        for k, v in _bindings(tree).items():
            constants.setdefault(k, set()).update(v)
    reads: dict[str, list[str]] = {}
    unresolved: list[str] = []
    for path, tree in trees.items():
        local = _bindings(tree)
        for node in ast.walk(tree):
            key = None
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
                f = node.func
                if (f.attr in ("get", "setdefault") and _is_environ(f.value)) or (
                        f.attr == "getenv" and isinstance(f.value, ast.Name) and f.value.id == "os"):
                    key = node.args[0]
            elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and _is_environ(node.value):
                key = node.slice
            elif (isinstance(node, ast.Compare) and len(node.ops) == 1
                  and isinstance(node.ops[0], (ast.In, ast.NotIn)) and _is_environ(node.comparators[0])):
                key = node.left
            if key is None:
                continue
            where = f"{path.name}:{node.lineno}"
            names = _strings(key)
            if names is None and isinstance(key, ast.Name):
                names = local.get(key.id) or constants.get(key.id)
            if names is None and isinstance(key, ast.Attribute):
                names = constants.get(key.attr)
            if not names:
                unresolved.append(f"{where}: {ast.unparse(key)}")
                continue
            for name in names:
                reads.setdefault(name, []).append(where)
    assert not unresolved, f"environment reads with a name this test cannot resolve: {unresolved}"
    return reads


def test_env_reads_are_found(tmp_path):
    """The scanner sees the reads it must (a scanner that finds nothing would pass anything)."""
    reads = env_reads()
    assert {"AWS_ENDPOINT_URL", "MLFLOW_TRACKING_URI", "RAY_ADDRESS", "MEDGAN_GIT_COMMIT",
            "AWS_ACCESS_KEY_ID"} <= set(reads)
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("import os\nK = 'A'\nfor n in ('B', 'C'):\n    os.environ.get(n)\n"
                 "os.getenv(K)\nif 'D' in os.environ:\n    x = os.environ['E']\nos.environ['W'] = '1'\n")
    b.write_text("import os\nimport a\nos.environ.get(a.K)\n{k: os.environ.get(k) for k in ('F',)}\n")
    assert set(env_reads([a, b])) == {"A", "B", "C", "D", "E", "F"}  # W is a write
    b.write_text("import os\ndef f(name):\n    return os.environ.get(name)\n")
    with pytest.raises(AssertionError, match="cannot resolve"):
        env_reads([b])


# --------------------------------------------------------------------------- the runbook


def _bash_blocks(text: str) -> list[str]:
    return [b.replace("\\\n", " ") for b in re.findall(r"```bash\n(.*?)```", text, re.S)]


def documented_secrets() -> dict[str, dict[str, str]]:
    """``{secret: {key: value as written}}`` from the ``kubectl create secret generic`` commands."""
    out: dict[str, dict[str, str]] = {}
    for block in _bash_blocks(DEPLOY.read_text()):
        value = r'(?:"[^"]*"|\S+)'
        for m in re.finditer(rf"create secret generic (\S+)((?:\s+--from-literal=[^\s=]+={value})+)", block):
            keys = dict(re.findall(rf"--from-literal=([^\s=]+)=({value})", m.group(2)))
            out.setdefault(m.group(1), {}).update(keys)
    return out


def documented_submit() -> list[str]:
    """The argv after ``python -m pipelines`` of the command under ``runbook:submit``."""
    text = DEPLOY.read_text()
    at = text.index("<!-- runbook:submit")
    (block,) = _bash_blocks(text[at:])[:1]
    (line,) = [ln for ln in block.splitlines() if ln.strip().startswith("python -m pipelines")]
    return shlex.split(line.strip())[3:]


def _compile_documented(tmp_path: Path) -> tuple[list[str], dict, dict]:
    from pipelines.cli import main

    argv = documented_submit()
    i = argv.index("--host")
    del argv[i:i + 2]
    if "--experiment" in argv:
        j = argv.index("--experiment")
        del argv[j:j + 2]
    out = tmp_path / "submit.yaml"
    assert main([*argv, "--compile", str(out)]) == 0
    spec, platform = list(yaml.safe_load_all(out.read_text()))[:2]
    return argv, spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _secret_env(executor: dict) -> dict[str, str]:
    """``{env var: secret name}`` an executor gets from Secrets."""
    return {k["envVar"]: s["secretName"] for s in executor.get("secretAsEnv", []) for k in s["keyToEnv"]}


def _image_env() -> set[str]:
    text = re.sub(r"\\\n", " ", (REPO / "infra" / "Dockerfile").read_text())
    names = set()
    for line in text.splitlines():
        if line.strip().startswith("ENV "):
            names |= set(re.findall(r"([A-Z_][A-Z0-9_]*)=", line))
    return names


def _raycluster_env() -> set[str]:
    doc = yaml.safe_load((REPO / "infra" / "kuberay" / "raycluster.yaml").read_text())
    groups = [doc["spec"]["headGroupSpec"], *doc["spec"]["workerGroupSpecs"]]
    sets = [{e["name"] for e in c.get("env", [])} for g in groups for c in g["template"]["spec"]["containers"]]
    return set.intersection(*sets)


def test_the_documented_submit_compiles_and_sets_the_ray_cluster(tmp_path):
    argv, spec, _ = _compile_documented(tmp_path)
    params = dict(a.split("=", 1) for a in argv[argv.index("--param") :: 1] if "=" in a)
    assert params["ray_address"].startswith("http://") and params["ray_address"].endswith(":8265")
    raycluster = (REPO / "infra" / "kuberay" / "raycluster.yaml").read_text()
    head_svc = params["ray_address"].split("//")[1].split(".")[0]
    assert head_svc == "medgan-head-svc" and "name: medgan\n" in raycluster  # KubeRay: <name>-head-svc
    defaults = {k: v.get("defaultValue") for k, v in spec["root"]["inputDefinitions"]["parameters"].items()}
    assert defaults["ray_address"] == params["ray_address"] and defaults["use_gpu"] is True


def test_every_env_var_the_steps_read_is_provided(tmp_path):
    _, spec, executors = _compile_documented(tmp_path)
    secrets = documented_secrets()
    by_secret = _secret_env(executors["exec-train-op"])
    # every Secret/key the pipeline mounts is one the runbook creates
    for name, ex in executors.items():
        for s in ex.get("secretAsEnv", []):
            assert s["secretName"] in secrets, f"{name}: Secret {s['secretName']} is not created in docs/deploy.md"
            missing = {k["secretKey"] for k in s["keyToEnv"]} - set(secrets[s["secretName"]])
            assert not missing, f"{name}: docs/deploy.md creates {s['secretName']} without {sorted(missing)}"
    image, cluster = _image_env(), _raycluster_env()
    problems = []
    for var, where in sorted(env_reads().items()):
        if var in by_secret or var in BY_PARAMETER or var in OPTIONAL or var in image or var in cluster:
            continue
        problems.append(f"{var} (read at {', '.join(where)})")
    assert not problems, ("read by the steps but provided by no Secret, parameter, image ENV or "
                          f"RayCluster env, and not listed in OPTIONAL with a reason: {problems}")
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert set(BY_PARAMETER.values()) <= set(inputs)
    stale = sorted(set(OPTIONAL) - set(env_reads()))
    assert not stale, f"OPTIONAL lists variables no step reads any more: {stale}"


def test_register_and_the_s3_steps_get_endpoint_and_tracking_uri(tmp_path):
    """The two failures the issue found: steps writing to AWS instead of MinIO (no endpoint), and
    register without a tracking URI."""
    _, _, executors = _compile_documented(tmp_path)
    secrets = documented_secrets()
    for name, ex in executors.items():
        env = _secret_env(ex)
        assert env.get("AWS_ENDPOINT_URL") == "medgan-s3", name
        assert secrets["medgan-s3"]["AWS_ENDPOINT_URL"].startswith("http://minio.medgan.svc")
    reg = _secret_env(executors["exec-register-op"])
    assert reg["MLFLOW_TRACKING_URI"] == "medgan-mlflow"
    assert secrets["medgan-mlflow"]["MLFLOW_TRACKING_URI"].startswith("http://mlflow.medgan.svc")
    assert {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} <= set(reg)


def test_documented_secrets_match_the_example_file():
    example = {d["metadata"]["name"]: set(d["stringData"]) for d in
               yaml.safe_load_all((REPO / "infra" / "mlflow" / "secrets.example.yaml").read_text()) if d}
    documented = {k: set(v) for k, v in documented_secrets().items()}
    assert documented == example


@pytest.mark.parametrize("var", sorted(OPTIONAL))
def test_optional_reasons_are_given(var):
    assert len(OPTIONAL[var]) > 20
