"""Checkpoint as you go, resume by default: a run killed after epoch k and rerun ends with
the same weights, bit for bit, as one never stopped, and trains only the epochs after k;
epochs of another configuration are never mixed in."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch

from attn_pipeline.data.saved_state import CheckpointFolders, TrainingCheckpoints
from attn_pipeline.models import build_vae
from attn_pipeline.pipelines.train.nodes import train_model
from attn_pipeline.spec.config import ModelConfig, TrainConfig
from attn_pipeline.training.loop import TrainingState, fit
from tests.conftest import MNIST_SHAPE, project_copy, write_raw_dataset

pytestmark = pytest.mark.pipeline

KEDRO = str(Path(sys.executable).with_name("kedro"))


class _KilledError(Exception):
    """Stands for a kill between two epochs."""


def _images(n: int = 256) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def _model(variant: str) -> torch.nn.Module:
    torch.manual_seed(0)
    extra = {"attention_loss_weight": 1.0, "attention_target": "ink"} if variant != "none" else {}
    return build_vae(ModelConfig(variant=variant, **extra), MNIST_SHAPE)


def _through_disk(state: TrainingState) -> TrainingState:
    buffer = io.BytesIO()
    torch.save(state.to_dict(), buffer)
    buffer.seek(0)
    return TrainingState.from_dict(torch.load(buffer, weights_only=True))


@pytest.mark.parametrize(("variant", "binarize"), [("none", False), ("spatial_gate", True)])
def test_resuming_after_a_kill_gives_the_uninterrupted_weights_bitwise(
    variant: str, binarize: bool
) -> None:
    """Weights, Adam's moments, the batch order and the posterior / binarisation noise all
    continue where they were: any one of them left out changes the weights."""
    images, config = _images(), TrainConfig(epochs=4, batch_size=64)
    kwargs = {"show_progress": False, "binarize": binarize}
    whole = fit(_model(variant), images, images[:32], config, **kwargs)

    saved: list[TrainingState] = []

    def save_then_die_after_epoch_2(state: TrainingState) -> None:
        saved.append(_through_disk(state))
        if state.epoch == 2:
            raise _KilledError

    with pytest.raises(_KilledError):
        fit(
            _model(variant),
            images,
            images[:32],
            config,
            on_state=save_then_die_after_epoch_2,
            **kwargs,
        )
    trained: list[int] = []
    resumed = fit(
        _model(variant),
        images,
        images[:32],
        config,
        resume_from=saved[-1],
        on_epoch_end=lambda epoch, metrics: trained.append(epoch),
        **kwargs,
    )
    assert trained == [3, 4]
    expected, actual = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)
    assert [r["val/loss"] for r in resumed.history] == [r["val/loss"] for r in whole.history]


def _split(n: int, seed: int) -> dict[str, torch.Tensor]:
    images = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))
    return {"images": images, "labels": torch.zeros(n, dtype=torch.int64)}


def test_a_rerun_continues_in_its_configurations_folder_only(tmp_path: Path) -> None:
    train_set, val_set = _split(128, 0), _split(32, 1)
    folders = CheckpointFolders(tmp_path / "training")
    model_config = ModelConfig(variant="none", backbone="mlp", hidden_dim=32)

    def run(epochs: int, **overrides: object) -> dict:
        config = TrainConfig(epochs=epochs, batch_size=64, **overrides)
        return train_model(train_set, val_set, model_config, config, folders)[3]

    first = run(3)
    assert first["resumed_after_epoch"] == 0
    # the same configuration again: nothing left to train
    assert run(3)["resumed_after_epoch"] == 3
    # another budget, seed or data: another folder, its own epochs only
    shorter = run(2)
    assert shorter["resumed_after_epoch"] == 0
    assert shorter["checkpoint_folder"] != first["checkpoint_folder"]
    assert run(3, seed=1)["checkpoint_folder"] != first["checkpoint_folder"]
    epochs_of = {
        folder.name: sorted(p.name for p in folder.glob("epoch_*.pt"))
        for folder in (tmp_path / "training").iterdir()
    }
    assert epochs_of[first["checkpoint_folder"]] == [f"epoch_00{i}.pt" for i in (1, 2, 3)]
    assert epochs_of[shorter["checkpoint_folder"]] == ["epoch_001.pt", "epoch_002.pt"]
    # train.resume: false starts over
    assert run(3, resume=False)["resumed_after_epoch"] == 0


def test_a_half_written_or_unreadable_state_is_not_resumed_from(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    checkpoints = TrainingCheckpoints(tmp_path / "abc", {"what": "test"})
    checkpoints.folder.mkdir()
    (checkpoints.folder / "resume.pt.partial").write_bytes(b"killed while writing")
    assert checkpoints.latest() is None
    checkpoints.save(1, {"epoch": 1}, {"epoch": 1})
    assert checkpoints.latest() == {"epoch": 1}
    checkpoints.resume_file.write_bytes(checkpoints.resume_file.read_bytes()[:50])
    assert checkpoints.latest() is None
    assert "cannot be read" in caplog.text and "starts again from epoch 1" in caplog.text


# ---- real processes: SIGKILL during epoch 4 of 6, then the same command again ----

SIX_EPOCHS = "data_prep.val_size=100,train.epochs=6,train.batch_size=50"
ENV = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1"}


def _project(root: Path) -> Path:
    project = project_copy(root)
    # enough images that an epoch lasts long enough to be killed in (a second or so)
    write_raw_dataset(project / "data" / "01_raw" / "mnist", n_train=1600, n_test=20)
    (project / "conf" / "local" / "parameters.yml").write_text("entries: [none]\n")
    return project


def _kedro_train(project: Path, log: Path | None = None) -> subprocess.Popen:
    """The six epochs' `kedro run`, its output in a pipe, or in ``log``."""
    return subprocess.Popen(
        [KEDRO, "run", "--pipelines", "data_prep,train", "--params", SIX_EPOCHS],
        cwd=project,
        env={**ENV, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"},
        stdout=log.open("w") if log else subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _final_weights(project: Path) -> dict[str, torch.Tensor]:
    path = project / "data" / "06_models" / "mnist" / "none" / "model.pt"
    return torch.load(path, weights_only=True)["state_dict"]


def _epoch_3_complete(training: Path) -> bool:
    """Epoch 3's model is written and resume.pt (written after it) replaced since."""
    epoch_3 = list(training.glob("*/epoch_003.pt"))
    resume = [path.with_name("resume.pt") for path in epoch_3]
    return (
        bool(epoch_3)
        and resume[0].exists()
        and (resume[0].stat().st_mtime_ns >= epoch_3[0].stat().st_mtime_ns)
    )


def _runs(project: Path) -> dict[str, str]:
    """run id -> status, of the project's store."""
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("attn_pipeline_mnist")
    return {r.info.run_id: r.info.status for r in client.search_runs([experiment.experiment_id])}


@pytest.mark.process
def test_kill_during_epoch_4_of_6_then_rerun_gives_the_same_weights(tmp_path: Path) -> None:
    """SIGKILL while epoch 4 trains: the rerun goes on after the last saved epoch and ends
    with the uninterrupted run's weights, bitwise; it also marks the runs the killed process
    left RUNNING as KILLED, and leaves alone a RUNNING run that is not the project's."""
    reference = _project(tmp_path / "uninterrupted")
    # beside the one to kill: the same data, seed and threads
    uninterrupted = _kedro_train(reference, log=tmp_path / "uninterrupted.log")
    project = _project(tmp_path / "killed")
    process = _kedro_train(project)
    training = project / "data" / "06_models" / "mnist" / "none" / "training"
    deadline = time.time() + 300
    while not _epoch_3_complete(training):  # then epoch 4 is under way
        assert process.poll() is None, process.communicate()[0][-3000:]
        assert time.time() < deadline, "epoch 3 never saved"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert not list(training.glob("*/epoch_006.pt"))  # killed before the end
    assert not (project / "data" / "06_models" / "mnist" / "none" / "model.pt").exists()
    orphaned = _runs(project)
    assert set(orphaned.values()) == {"RUNNING"}
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    experiment_id = client.get_experiment_by_name("attn_pipeline_mnist").experiment_id
    foreign = client.create_run(experiment_id).info.run_id  # no owner tags: not the project's

    uninterrupted.wait(timeout=600)
    output = (tmp_path / "uninterrupted.log").read_text()
    assert "epoch 6/6" in output, output[-3000:]
    rerun = _kedro_train(project)
    output = rerun.communicate(timeout=600)[0]
    assert rerun.returncode == 0, output[-3000:]
    resumed = re.search(r"resuming after epoch (\d) of 6", output)
    assert resumed is not None, output[-3000:]
    resumed_after = int(resumed.group(1))
    assert resumed_after >= 3
    trained = [e for e in range(1, 7) if f"epoch {e}/6 " in output]
    assert trained == list(range(resumed_after + 1, 7))
    expected, actual = _final_weights(reference), _final_weights(project)
    assert all(torch.equal(expected[name], actual[name]) for name in expected)
    status = _runs(project)
    assert {status[run_id] for run_id in orphaned} == {"KILLED"}
    assert status[foreign] == "RUNNING"
    assert {s for r, s in status.items() if r not in {*orphaned, foreign}} == {"FINISHED"}
