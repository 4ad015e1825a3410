"""components.evaluate against real files, a real tiny model, a real `mlflow server` and moto S3."""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import moto.server as moto_server
import numpy as np
import pytest
from mlflow import MlflowClient

from components import storage
from components.evaluate import main, run_evaluate
from components.step import StepInputError
from tests.mlflow_server import preprocess_output, train_output


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tiny_cohort: Path, tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return preprocess_output(tiny_cohort, tiny_shards, tmp_path_factory.mktemp("eval-data") / "processed")


@pytest.fixture(scope="module")
def trained(tiny_shards: Path, server: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return train_output(tiny_shards, tmp_path_factory.mktemp("eval-train") / "train", server,
                        experiment="medgan-eval-test")


def _test_ids(data: Path) -> list[str]:
    return json.loads((data / "manifest.json").read_text())["splits"]["test"]


def test_evaluate_writes_report_and_logs_to_the_training_run(data, trained, server, tmp_path):
    model_dir, run_id = trained
    ids = _test_ids(data)
    out = tmp_path / "eval"
    m = run_evaluate(str(data), str(model_dir), str(out), tracking_uri=server, figures=1)

    # files, published atomically
    assert storage.is_complete(str(out))
    report = json.loads((out / "metrics.json").read_text())
    assert [r["subject"] for r in report["per_subject"]] == ids and report["failed"] == []
    assert report["methods"] == ["model", "baseline"]
    assert sorted(p.name for p in (out / "figures").iterdir()) == [f"{ids[0]}.png"]  # figures=1
    assert (out / "figures" / f"{ids[0]}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert m["outputs"]["viewer"] == "report.html" and f'"id":"{ids[0]}"' in (out / "report.html").read_text()
    results = (out / "results.txt").read_text()
    assert "| method | mae | psnr | ssim | audit |" in results and "| model |" in results
    assert f"audit of model: {m['outputs']['audit']['reason']}" in results
    assert json.loads((out / "manifest.json").read_text()) == m

    # manifest: inputs hashed, aggregate = metrics.json means, audit consistent with per-subject audits
    assert m["step"] == "evaluate" and m["counts"] == {"subjects": len(ids), "evaluated": len(ids),
                                                       "failed": 0, "figures": 1}
    assert m["inputs"]["data_manifest_sha256"] == hashlib.sha256((data / "manifest.json").read_bytes()).hexdigest()
    assert m["inputs"]["model_sha256"] == storage.sha256_file(model_dir / "model.pt")
    agg = m["outputs"]["aggregate"]
    assert agg["model"]["mae"] == pytest.approx(report["aggregate"]["model"]["mae"]["mean"])
    assert agg["baseline"]["mae"] == pytest.approx(report["aggregate"]["baseline"]["mae"]["mean"])
    assert agg["model"]["mae"] > 0 and 0 < agg["baseline"]["ssim"] <= 1
    audits = [r["model"]["audit"] for r in report["per_subject"]]
    assert m["outputs"]["audit_passed"] is (all(a["passed"] for a in audits)
                                            and m["outputs"]["audit"]["lesions_evaluable"] > 0
                                            and not m["outputs"]["audit"]["tissue_swap_flagged"])
    assert m["outputs"]["audit"]["lesions_true"] == sum(a["n_true"] for a in audits)
    assert m["outputs"]["audit"] == report["audit"]["model"] and m["outputs"]["task"] == "mr2ct"
    assert m["outputs"]["mlflow_run_id"] == run_id

    # MLflow: metrics, tag and artifacts on the training run
    client = MlflowClient(tracking_uri=server)
    run = client.get_run(run_id)
    assert run.data.metrics["test_mae_hu"] == pytest.approx(agg["model"]["mae"])
    assert run.data.metrics["test_ssim"] == pytest.approx(agg["model"]["ssim"])
    assert run.data.metrics["baseline_mae_hu"] == pytest.approx(agg["baseline"]["mae"])
    assert run.data.metrics["audit_lesions_true"] == m["outputs"]["audit"]["lesions_true"]
    assert run.data.metrics["audit_passed"] == float(m["outputs"]["audit_passed"])
    assert run.data.metrics["test_subjects"] == len(ids)
    assert "val_mae" in run.data.metrics  # training's own metric is untouched
    assert m["summary"]["test_mae_hu"] == pytest.approx(agg["model"]["mae"])
    assert {k: pytest.approx(v) for k, v in m["summary"].items()} == {
        k: run.data.metrics[k] for k in m["summary"]}
    assert run.data.tags["audit_passed"] == str(m["outputs"]["audit_passed"]).lower()
    listed = {a.path for a in client.list_artifacts(run_id, "evaluation")}
    assert {"evaluation/metrics.json", "evaluation/results.txt", "evaluation/manifest.json",
            "evaluation/report.html", "evaluation/figures"} <= listed
    assert [a.path for a in client.list_artifacts(run_id, "evaluation/figures")] == [f"evaluation/figures/{ids[0]}.png"]
    got = Path(client.download_artifacts(run_id, "evaluation/metrics.json", str(tmp_path)))
    assert got.read_bytes() == (out / "metrics.json").read_bytes()


def test_corrupted_subject_is_reported_and_the_rest_evaluated(data, trained, server, tmp_path, capsys):
    ids = _test_ids(data)
    assert len(ids) >= 2
    broken = tmp_path / "processed"
    shutil.copytree(data, broken)
    index = json.loads((broken / "shards" / "test" / "index.json").read_text())
    entry = next(e for e in index["subjects"] if e["id"] == ids[0])
    ct = np.load(broken / "shards" / "test" / "ct.npy", mmap_mode="r+")
    ct[entry["offset"]:entry["offset"] + entry["depth"]] = np.nan  # a corrupted subject
    ct.flush()
    del ct
    model_dir, _ = trained
    out = tmp_path / "eval"
    # CLI path; no --run-id and a train manifest without one -> a new run in the experiment
    manifest = json.loads((model_dir / "manifest.json").read_text())
    model_copy = tmp_path / "train"
    shutil.copytree(model_dir, model_copy)
    (model_copy / "manifest.json").write_text(json.dumps({**manifest, "mlflow_run_id": None}))
    rc = main(["--data-uri", str(broken), "--model-uri", str(model_copy), "--output-uri", str(out),
               "--tracking-uri", server, "--experiment", "medgan-eval-cli"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    m = json.loads((out / "manifest.json").read_text())
    assert printed["failed"] == 1 and printed["evaluated"] == len(ids) - 1
    assert [f["subject"] for f in m["outputs"]["failed"]] == [ids[0]]
    assert "non-finite" in m["outputs"]["failed"][0]["error"]
    report = json.loads((out / "metrics.json").read_text())
    assert [r["subject"] for r in report["per_subject"]] == ids[1:]
    client = MlflowClient(tracking_uri=server)
    run = client.get_run(m["outputs"]["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "evaluate"
    assert client.get_experiment(run.info.experiment_id).name == "medgan-eval-cli"
    assert run.data.metrics["test_subjects_failed"] == 1


def test_without_tracking_nothing_is_logged(data, trained, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    m = run_evaluate(str(data), str(trained[0]), str(tmp_path / "e"), figures=0)
    assert m["outputs"]["mlflow_run_id"] is None and m["params"]["tracking_uri"] is None
    assert not (tmp_path / "e" / "figures").exists() and m["counts"]["figures"] == 0
    assert not (tmp_path / "e" / "report.html").exists() and m["outputs"]["viewer"] is None


def test_bad_inputs_name_the_file_and_field(data, trained, tmp_path, capsys):
    model_dir, _ = trained
    bad = tmp_path / "bad"
    shutil.copytree(data, bad)
    doc = json.loads((bad / "manifest.json").read_text())
    (bad / "manifest.json").write_text(json.dumps({**doc, "step": "ingest"}))
    with pytest.raises(StepInputError, match=r"bad/manifest.json: field 'step' is 'ingest', expected 'preprocess'"):
        run_evaluate(str(bad), str(model_dir), str(tmp_path / "o1"))
    (bad / "manifest.json").write_text(json.dumps({**doc, "splits": {"train": ["a"]}}))
    with pytest.raises(StepInputError, match=r"has no split 'test'"):
        run_evaluate(str(bad), str(model_dir), str(tmp_path / "o2"))
    (bad / "manifest.json").write_text(json.dumps({**doc, "splits": {**doc["splits"], "test": ["../x"]}}))
    with pytest.raises(StepInputError, match=r"invalid subject ids \['../x'\]"):
        run_evaluate(str(bad), str(model_dir), str(tmp_path / "o3"))
    # every test subject unreadable: a clear error and nothing published
    (bad / "manifest.json").write_text(json.dumps({**doc, "splits": {**doc["splits"], "test": ["nobody"]}}))
    with pytest.raises(StepInputError, match=r"no subject of split 'test'.*nobody"):
        run_evaluate(str(bad), str(model_dir), str(tmp_path / "o4"))
    assert not (tmp_path / "o4").exists()
    with pytest.raises(StepInputError, match=r"data/manifest.json: not found \(expected the output of step 'train'\)"):
        run_evaluate(str(bad), str(tmp_path / "data"), str(tmp_path / "o5"))
    # bad input on the CLI: exit code 2 (components.step), the message names the file
    assert main(["--data-uri", str(bad), "--model-uri", str(tmp_path / "nope"),
                 "--output-uri", str(tmp_path / "o6")]) == 2
    assert "nope/manifest.json: not found" in capsys.readouterr().err
    assert main(["--data-uri", str(data), "--model-uri", str(model_dir),
                 "--output-uri", str(tmp_path / "o7"), "--figures", "-1"]) == 2
    assert "figures must be >= 0, got -1" in capsys.readouterr().err


def test_shard_paths_come_from_the_preprocess_manifest(data, trained, tmp_path, monkeypatch):
    """The shards are where ``outputs.shards.<split>.path`` says, not at ``<data>/shards``."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    moved = tmp_path / "processed"
    shutil.copytree(data, moved)
    (moved / "packed").mkdir()
    doc = json.loads((moved / "manifest.json").read_text())
    for split, entry in doc["outputs"]["shards"].items():
        (moved / entry["path"]).rename(moved / "packed" / split)
        entry["path"] = f"packed/{split}"
    (moved / "manifest.json").write_text(json.dumps(doc))
    assert not (moved / "shards" / "test").exists()
    m = run_evaluate(str(moved), str(trained[0]), str(tmp_path / "e"), figures=0)
    assert m["counts"]["evaluated"] == len(_test_ids(data))
    doc["outputs"]["shards"]["test"]["path"] = "../elsewhere/test"
    (moved / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(StepInputError, match=r"field 'outputs.shards.test.path' = '../elsewhere/test': "
                                             r"expected a relative path inside"):
        run_evaluate(str(moved), str(trained[0]), str(tmp_path / "e2"))
    del doc["outputs"]["shards"]["test"]
    (moved / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(StepInputError, match=r"processed/manifest.json: missing field "
                                             r"'outputs.shards.test.path'"):
        run_evaluate(str(moved), str(trained[0]), str(tmp_path / "e3"))


def test_a_task_without_audit_uses_its_own_metric_names(data, tmp_path, monkeypatch):
    """CT -> MR through the same step: fastMRI metric names, no audit_* metrics, audit_passed
    false with the reason."""
    from gan_core.presets import preset
    from gan_core.frameworks import build_framework
    from gan_core.engine import save_model

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    fw = build_framework(preset("tiny", "pix2pix", "ct2mr"))
    model_dir = tmp_path / "ct2mr"
    model_dir.mkdir()
    save_model(fw, model_dir / "model.pt")
    (model_dir / "manifest.json").write_text(json.dumps({"step": "train", "mlflow_run_id": None}))
    m = run_evaluate(str(data), str(model_dir), str(tmp_path / "e"), figures=1)
    o = m["outputs"]
    assert o["task"] == "ct2mr" and o["unit"] == "[0,1]" and set(o["aggregate"]) == {"model", "baseline"}
    assert o["audit_passed"] is False and o["audit"]["reason"] == "task 'ct2mr' has no audit"
    assert {"test_nmse", "test_psnr", "test_ssim", "baseline_nmse", "test_subjects"} <= set(m["summary"])
    assert not [k for k in m["summary"] if k.startswith("audit_") or k.endswith("_hu")]
    assert m["counts"]["evaluated"] == len(_test_ids(data)) and m["counts"]["figures"] == 1


@pytest.fixture()
def s3(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for var in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "MEDGAN_S3_ADDRESSING_STYLE",
                "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    boto3.client("s3").create_bucket(Bucket="medgan-eval")
    try:
        yield f"s3://medgan-eval/{uuid.uuid4().hex[:8]}"
    finally:
        server.stop()


def test_evaluate_s3_uris(data, trained, server, s3, tmp_path):
    model_dir, run_id = trained
    storage.upload_dir(data, storage.join(s3, "processed"))
    storage.upload_dir(model_dir, storage.join(s3, "train"))
    out = storage.join(s3, "eval")
    m = run_evaluate(storage.join(s3, "processed"), storage.join(s3, "train"), out, tracking_uri=server,
                     figures=1)
    assert storage.is_complete(out)
    files = storage.list_files(out)
    assert {"manifest.json", "metrics.json", "results.txt", "_SUCCESS"} <= set(files)
    assert [f for f in files if f.startswith("figures/")] == [f"figures/{_test_ids(data)[0]}.png"]
    assert storage.read_json(storage.join(out, "manifest.json")) == m
    assert m["counts"]["evaluated"] == len(_test_ids(data)) and m["outputs"]["mlflow_run_id"] == run_id
    local = run_evaluate(str(data), str(model_dir), str(tmp_path / "local"), figures=0, tracking_uri=None)
    assert m["outputs"]["aggregate"] == local["outputs"]["aggregate"]  # same numbers from S3 and disk


def test_flat_metric_names_docstring_examples_run():
    import doctest

    import components.eval_summary as summary

    result = doctest.testmod(summary, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
