"""components.mlflow_utils.AsyncLogger (MLflow off the training loop's critical path) and the
Ray reporter's sample figures, against a REAL MLflow sqlite store."""

from __future__ import annotations

import logging
import threading

import pytest

from components import mlflow_utils as mlu
from components.mlflow_utils import AsyncLogger, LoggingError


@pytest.fixture(scope="module")
def tracking(tmp_path_factory) -> str:
    """A real sqlite store, one per module (creating its schema takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


@pytest.fixture
def store(tracking, request):
    """``(tracking_uri, run_id)`` of a fresh run."""
    return tracking, mlu.create_run(tracking, "async-test", run_name=request.node.name)


def _history(uri: str, run_id: str, key: str) -> list:
    return sorted(mlu.client(uri).get_metric_history(run_id, key), key=lambda m: (m.timestamp, m.step))


@pytest.mark.parametrize("max_pending", [2, 256])
def test_every_metric_arrives_in_order_including_the_last(store, max_pending):
    uri, run_id = store
    n = 120
    with AsyncLogger(uri, run_id, max_pending=max_pending) as ml:  # 2: the loop waits on the thread
        for step in range(1, n + 1):
            ml.log_metrics({"G": step / 10, "D": -step, "nan": float("nan"), "flag": True}, step=step)
    for key, value in (("G", lambda s: s / 10), ("D", lambda s: -s)):
        h = _history(uri, run_id, key)
        assert [m.step for m in h] == list(range(1, n + 1))  # none lost, the last ones included
        assert [m.value for m in h] == [value(s) for s in range(1, n + 1)]
        # stamped when enqueued: timestamps never go back in step order
        assert all(a.timestamp <= b.timestamp for a, b in zip(h, h[1:]))
    keys = set(mlu.client(uri).get_run(run_id).data.metrics)
    assert keys == {"G", "D"}  # non-finite and boolean values are skipped, as in log_metrics
    assert ml.sent == 2 * n and ml.error is None and ml.dropped == 0


def test_metrics_are_batched_and_tasks_run_after_the_metrics_before_them(store):
    uri, run_id = store
    gate = threading.Event()
    seen: list[int] = []
    calls: list[int] = []

    class CountingClient:  # the real client; counts the log_batch requests
        def __init__(self, tracking_uri: str) -> None:
            self.c = mlu.client(tracking_uri)

        def log_batch(self, run, metrics=()):
            calls.append(len(metrics))
            return self.c.log_batch(run, metrics=metrics)

        def __getattr__(self, name):
            return getattr(self.c, name)

    with AsyncLogger(uri, run_id, client_factory=CountingClient) as ml:
        ml.submit(lambda c, r: gate.wait(30), what="hold the thread")
        for step in range(1, 51):  # queued while the thread is held: sent as one request
            ml.log_metrics({"G": float(step)}, step=step)
        ml.submit(lambda c, r: seen.append(len(c.get_metric_history(r, "G"))), what="count")
        ml.log_metrics({"G": 51.0}, step=51)
        gate.set()
        assert ml.flush(timeout=60)
        assert [m.step for m in _history(uri, run_id, "G")] == list(range(1, 52))
    assert seen == [50]  # the task ran after the 50 metrics queued before it, before the 51st
    assert calls == [50, 1]


def test_a_failure_in_the_thread_is_logged_once_and_raised_at_close(store, caplog):
    uri, _ = store
    ml = AsyncLogger(uri, "0" * 32)  # a run that does not exist: the store refuses every batch
    with caplog.at_level(logging.ERROR, logger=mlu.__name__):
        ml.log_metrics({"G": 1.0}, step=1)
        assert ml.flush(timeout=60)
        for step in range(2, 6):  # after the failure: counted, not sent, not logged again
            ml.log_metrics({"G": float(step)}, step=step)
            ml.flush(timeout=60)
        with pytest.raises(LoggingError, match=r"run 0{32} at sqlite:///.*failed: MlflowException: "
                                               r".*; 5 queued item\(s\)") as err:
            ml.close()
    from mlflow.exceptions import MlflowException

    assert isinstance(err.value.__cause__, MlflowException)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "0" * 32 in errors[0].getMessage()
    ml.close(raise_errors=False)  # idempotent; only logs now


def test_an_error_in_the_block_wins_but_the_logger_still_flushes(store, caplog):
    uri, run_id = store
    with pytest.raises(KeyError, match="boom"), caplog.at_level(logging.ERROR, logger=mlu.__name__):
        with AsyncLogger(uri, run_id) as ml:
            for step in (1, 2, 3):
                ml.log_metrics({"G": float(step)}, step=step)
            raise KeyError("boom")
    assert [m.step for m in _history(uri, run_id, "G")] == [1, 2, 3]
    with pytest.raises(RuntimeError, match="closed"):
        ml.log_metrics({"G": 4.0}, step=4)


def test_a_failed_figure_task_warns_and_metrics_go_on(store, caplog):
    uri, run_id = store

    def bad(c, r):
        raise ValueError("cannot draw")

    with caplog.at_level(logging.WARNING, logger=mlu.__name__), AsyncLogger(uri, run_id) as ml:
        ml.log_metrics({"G": 1.0}, step=1)
        ml.submit(bad, what="sample figure of step 1")
        ml.log_metrics({"G": 2.0}, step=2)
    assert [m.step for m in _history(uri, run_id, "G")] == [1, 2]
    assert any("sample figure of step 1" in r.getMessage() and "cannot draw" in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)
    assert ml.error is None


def test_bad_queue_size_is_named():
    with pytest.raises(ValueError, match="max_pending: expected >= 1, got 0"):
        AsyncLogger("sqlite:////nonexistent/m.db", "0" * 32, max_pending=0)


def test_reporter_figures_on_the_interval_from_the_live_networks(store, tiny_shards, tmp_path):
    """Forward pass on the caller's thread (global RNG untouched, train mode restored); the PNG
    is drawn and uploaded by the logger; due every ``sample_every_s`` and at the last step."""
    import torch

    from components.raytrain import _Reporter
    from gan_core.frameworks import build_framework
    from gan_core.presets import preset

    uri, run_id = store
    fw = build_framework(preset("tiny", "pix2pix"), device=torch.device("cpu"))
    fw.train(True)
    now = [0.0]
    ml = AsyncLogger(uri, run_id)
    rep = _Reporter(0, ml, tiny_shards / "val", None, total_steps=100, sample_every_s=60.0,
                    clock=lambda: now[0])
    rep.bind(fw)
    due = []
    for step in (10, 20, 30, 100):
        now[0] += 25.0  # t = 25, 50, 75, 100
        due.append(rep._sample_due(step))
        if due[-1]:
            state = torch.get_rng_state()
            rep._log_samples(step)
            assert torch.equal(torch.get_rng_state(), state)
            assert all(m.training for m in fw.networks().values())
    assert due == [False, False, True, True]  # 60 s after the start (t=75), then the last step
    rep.close()
    c = mlu.client(uri)
    pngs = sorted(a.path for a in c.list_artifacts(run_id, "samples"))
    assert pngs == ["samples/step_0000030.png", "samples/step_0000100.png"]
    png = c.download_artifacts(run_id, pngs[-1], str(tmp_path))
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
