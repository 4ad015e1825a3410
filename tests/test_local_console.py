"""``--local`` runs are quiet: a real kfp.local run of a two-step toy pipeline under
:func:`pipelines.local_console.quiet_console` prints one line per step; the executor-input JSON,
the steps' own output and kfp's warnings land in per-step log files; a failing step prints its
status and the end of its log."""

# (no `from __future__ import annotations`: KFP reads the components' real annotations)

from pathlib import Path

import pytest
from kfp import dsl, local

from pipelines.local_console import StepResult, quiet_console, run_summary


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def chatty_op(n: int) -> str:
    import logging
    import warnings

    for i in range(n):
        print(f"chatty line {i}")
    logging.getLogger("toy").error("an error-level line of the step itself")
    warnings.warn("a warning of the step")
    return "done"


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def failing_op(text: str) -> str:
    print(f"about to fail after {text}")
    raise ValueError("the toy step failed on purpose")


@dsl.pipeline(name="toy-quiet")
def toy(n: int = 3) -> str:
    first = chatty_op(n=n).set_cpu_request("1")  # kfp.local warns that it ignores this
    return chatty_op(n=n).after(first).output  # two tasks, in sequence


@dsl.pipeline(name="toy-failing")
def toy_failing() -> str:
    return failing_op(text=chatty_op(n=1).output).output


def test_one_line_per_step_and_everything_else_in_step_logs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    with quiet_console(tmp_path / "logs") as con:
        task = toy(n=40)
    assert task.output == "done"
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert [line.split()[0] for line in lines] == ["chatty", "chatty"], lines
    assert all("done" in line for line in lines)
    assert "executor_input" not in printed and "ERROR" not in printed
    assert [r.status for r in con.results] == ["SUCCESS", "SUCCESS"]
    logs = sorted((tmp_path / "logs").glob("0[1-9]-*.log"))
    assert [p.name for p in logs] == ["01-chatty.log", "02-chatty.log"]
    text = logs[0].read_text()
    assert "chatty line 39" in text and '"parameterValues"' in text  # the executor-input JSON
    assert "an error-level line of the step itself" in text
    warned = "".join(p.read_text() for p in (tmp_path / "logs").glob("*.log"))
    assert "WARNING" in warned and "cpu_request" in warned  # kfp.local's warnings go to the logs
    assert "cpu_request" not in capsys.readouterr().err


def test_a_failed_step_shows_its_status_and_log_tail(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    with pytest.raises(RuntimeError, match="failing-op"):
        with quiet_console(tmp_path / "logs") as con:
            toy_failing()
    text = capsys.readouterr().out
    assert [r.status for r in con.results] == ["SUCCESS", "FAILURE"]
    (line,) = [t for t in text.splitlines() if t.startswith("failing")]
    assert "FAILURE: ValueError: the toy step failed on purpose" in line  # its last error line
    assert str(con.results[1].log) in line
    assert any("raise ValueError" in t for t in con.log_tail(con.results[1]))  # for the caller


def test_the_summary_names_model_metrics_figures_and_a_working_mlflow_command(tmp_path: Path) -> None:
    results = [StepResult("train-op-2", "train", "SUCCESS", 3.0, str(tmp_path / "train")),
               StepResult("evaluate-op", "evaluate", "SUCCESS", 2.0, str(tmp_path / "eval")),
               StepResult("register-op", "register", "SUCCESS", 1.0,
                          '{"model_name": "m", "version": "2", "promoted": true}')]
    text = run_summary(results, f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "logs", 6.0)
    assert f"model:    {tmp_path / 'train' / 'model.pt'}" in text
    assert f"metrics:  {tmp_path / 'eval' / 'metrics.json'}" in text
    assert f"figures:  {tmp_path / 'eval' / 'figures'}" in text
    assert "m version 2, promoted to champion" in text
    command = text.split("browse:", 1)[1].split()
    assert Path(command[0]).is_file() and command[1:3] == ["ui", "--backend-store-uri"]
    assert command[3] == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_the_train_line_says_when_the_training_data_was_unpaired(tmp_path: Path) -> None:
    import json

    from pipelines.local_console import step_summary

    def line(counts: dict) -> str:
        d = tmp_path / str(len(counts))
        d.mkdir()
        (d / "manifest.json").write_text(json.dumps({"step": "train", "steps": 2500,
                                                     "val_mae": 142.04, "counts": counts}))
        return step_summary(StepResult("train-op", "train", "SUCCESS", output=str(d)))

    assert line({"train_subjects": 8}) == "2500 steps, 8 train subjects, val MAE 142.0"
    assert line({"train_subjects": 8, "unpaired_mr_subjects": 4, "unpaired_ct_subjects": 4}) == \
        "2500 steps, unpaired: MR of 4 and CT of 4 other train subjects, val MAE 142.0"
