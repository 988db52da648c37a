"""pgn-distill never loses a run's history and fails in one line: unreadable checkpoints, used folders, write failures."""

import errno
import hashlib
import json
import os
import shutil

import pytest
from click.testing import CliRunner
from PIL import Image

from pgn.distill import checkpoints as ckpt
from pgn.distill.cli import command
from test_cli import TINY
from write_faults import FullDiskFile


def invoke(*args):
    return CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)


def errors(result):
    return [line for line in result.output.splitlines() if line.startswith("error:")]


def snapshot(folder):
    """Every file under ``folder`` with its bytes' digest."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 3-step run with a checkpoint after every step, trained once for the module (tests get copies)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    result = invoke(*TINY, "--steps", 3, "--save-every", 1, "--run-dir", run)
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture
def used_run(finished_run, tmp_path):
    """A copy of the finished 3-step run (checkpoints after every step) in this test's own folder."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    return run


def test_resume_with_only_unreadable_checkpoints_stops_and_changes_nothing(used_run):
    for _, path in ckpt.list_checkpoints(used_run):
        path.write_bytes(path.read_bytes()[:1000])  # torn files
    before = snapshot(used_run)
    result = invoke("--run-dir", used_run, "--resume", "--steps", 5)
    assert result.exit_code == 1 and len(errors(result)) == 1, result.output
    line = errors(result)[0]
    assert "none of the 3 checkpoint(s)" in line and "step-000000001.pt" in line and "step-000000003.pt" in line and "--fresh" in line
    assert snapshot(used_run) == before  # metrics.jsonl, pgn.pt, checkpoints: all as they were


def test_resume_of_a_run_without_checkpoints_stops(used_run):
    for _, path in ckpt.list_checkpoints(used_run):
        path.unlink()
    before = snapshot(used_run)
    result = invoke("--run-dir", used_run, "--resume", "--steps", 5)
    assert result.exit_code == 1 and "holds an earlier run (pgn.pt, metrics.jsonl)" in errors(result)[0]
    assert snapshot(used_run) == before


def test_new_run_in_a_used_folder_needs_fresh_which_moves_the_old_run_aside(used_run):
    before = snapshot(used_run)
    refused = invoke(*TINY, "--steps", 1, "--run-dir", used_run)
    assert refused.exit_code == 1 and "--resume" in errors(refused)[0] and "--fresh" in errors(refused)[0]
    assert snapshot(used_run) == before
    fresh = invoke(*TINY, "--steps", 1, "--run-dir", used_run, "--fresh")
    assert fresh.exit_code == 0, fresh.output
    (previous,) = used_run.glob("previous-*")
    assert snapshot(previous) == before  # the old run, byte for byte
    assert [s for s, _ in ckpt.list_checkpoints(used_run)] == [1]
    assert invoke("--run-dir", used_run, "--resume", "--fresh").exit_code == 1


def test_resume_removes_partial_files_and_warns_in_one_line_per_skipped_checkpoint(used_run):
    partial = [used_run / ckpt.CHECKPOINT_DIR / ".step-000000004.pt.k2j3.tmp", used_run / ".pgn.pt.a8s7.tmp", used_run / "config.json.tmp"]
    for p in partial:
        p.write_bytes(b"cut short")
    newest = ckpt.checkpoint_path(used_run, 3)
    newest.write_bytes(newest.read_bytes()[:1000])
    result = invoke("--run-dir", used_run, "--resume", "--steps", 4)
    assert result.exit_code == 0, result.output
    assert not any(p.exists() for p in partial) and not list(used_run.rglob("*.tmp"))
    warning = [line for line in result.output.splitlines() if "step-000000003.pt" in line]
    assert len(warning) == 1 and warning[0].startswith("pgn-distill: warning: skipping unreadable checkpoint")
    assert "UserWarning" not in result.output and "warnings.warn" not in result.output
    assert "resuming from" in result.output and "step-000000002.pt" in result.output


@pytest.mark.parametrize("option, value, named", [("--size", 64, "size 32 → 64"), ("--lr", 0.01, "lr 0.001 → 0.01"),
                                                  ("--backbone", "resnet6", "backbone 'resnet4' → 'resnet6'")])
def test_resume_with_a_setting_that_changes_the_model_or_data_refuses(used_run, option, value, named):
    before = snapshot(used_run)
    result = invoke("--run-dir", used_run, "--resume", "--steps", 5, option, value)
    assert result.exit_code == 1 and named in errors(result)[0]
    assert snapshot(used_run) == before
    assert invoke("--run-dir", used_run, "--resume", "--steps", 4, "--save-every", 2).exit_code == 0  # schedule may change


def test_disk_full_during_a_run_keeps_the_older_checkpoints(tmp_path, monkeypatch):
    run = tmp_path / "run"
    real_fdopen = os.fdopen
    full = {"on": False}

    def fdopen(fd, mode="r", *args, **kwargs):
        f = real_fdopen(fd, mode, *args, **kwargs)
        return FullDiskFile(f, limit=4096) if full["on"] and "b" in mode and "w" in mode else f

    monkeypatch.setattr(os, "fdopen", fdopen)
    import pgn.distill.trainer

    real_save = pgn.distill.trainer._save

    def save(distiller, step, *args):
        full["on"] = step >= 3  # the disk fills up after the step-2 checkpoint
        return real_save(distiller, step, *args)

    monkeypatch.setattr(pgn.distill.trainer, "_save", save)
    result = invoke(*TINY, "--steps", 4, "--save-every", 1, "--run-dir", run)
    assert result.exit_code == 1 and len(errors(result)) == 1, result.output
    line = errors(result)[0]
    assert "disk full" in line and "step-3" in line and "older checkpoints are intact (newest: step-000000002.pt)" in line
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [1, 2]
    assert ckpt.read_training_state(ckpt.checkpoint_path(run, 2))["step"] == 2
    assert not list(run.rglob("*.tmp"))


def test_unusable_run_dir_is_one_line(tmp_path, read_only_dir):
    (tmp_path / "a-file").write_text("x")
    for run_dir in (tmp_path / "a-file", read_only_dir / "run"):
        result = invoke(*TINY, "--steps", 1, "--run-dir", run_dir)
        assert result.exit_code == 1 and len(errors(result)) == 1 and errors(result)[0].startswith(f"error: --run-dir {run_dir}")
    assert list(read_only_dir.iterdir()) == []


@pytest.mark.parametrize("args, words", [
    (["--lr", "nan"], "lr must be a positive number"),
    (["--lr", "-1"], "lr must be a positive number"),
    (["--time-limit", "-1"], "time_limit_minutes must be a positive number"),
    (["--ae-lr", "0"], "ae_lr must be a positive number"),
    (["--vgg-weight", "-0.5"], "vgg_weight must be ≥ 0"),
    (["--workers", "-2"], "workers must be ≥ 0"),
    (["--save-every", "-3"], "save_every must be ≥ 1"),
    (["--seed", "-1"], "seed must be ≥ 0"),
])
def test_invalid_numbers_are_one_line(tmp_path, args, words):
    result = invoke(*TINY, "--steps", 1, "--run-dir", tmp_path / "r", *args)
    assert result.exit_code == 1 and len(errors(result)) == 1 and words in errors(result)[0], result.output
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("content, words", [
    (bytes(range(128, 256)), "not a JSON config file"),
    (json.dumps({"size": "big"}).encode(), "config key 'size' must be an integer"),
    (json.dumps({"lr": [0.1]}).encode(), "config key 'lr' must be a number"),
    (b"[1, 2]", "must hold a JSON object"),
], ids=["random-bytes", "string-size", "list-lr", "json-list"])
def test_bad_config_files_are_one_line(tmp_path, content, words):
    (tmp_path / "c.json").write_bytes(content)
    result = invoke("--config", tmp_path / "c.json", "--run-dir", tmp_path / "r")
    assert result.exit_code == 1 and len(errors(result)) == 1 and words in errors(result)[0], result.output


def test_corrupt_held_out_image_is_skipped_and_another_is_held_out(tmp_path):
    data = tmp_path / "imgs"
    data.mkdir()
    for i in range(5):
        Image.new("RGB", (64, 48), (40 * i, 90, 200)).save(data / f"img{i}.jpg")
    held_out = min(data.iterdir(), key=lambda p: hashlib.sha1(p.name.encode()).digest())  # what a tiny folder holds out
    held_out.write_bytes(b"\xff\xd8\xff not really a JPEG")
    result = invoke(*TINY, "--data", data, "--steps", 1, "--run-dir", tmp_path / "r", "--min-image-side", 16)
    assert result.exit_code == 0, result.output
    assert "skipped 1 unusable held-out image" in result.output and "3 training images, 2 held out" in result.output
    records = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["val/skipped_images"] for r in records if "val/skipped_images" in r][0] == 1


def test_replacement_held_out_image_is_not_trained_on(tmp_path):
    from pgn.distill.data import find_images, validation_images

    for i in range(4):
        Image.new("RGB", (64, 48), (50 * i, 90, 200)).save(tmp_path / f"img{i}.png")
    split = find_images(str(tmp_path))
    (bad,) = split.val
    bad.write_bytes(b"broken")
    views, skipped = validation_images(split, 32, 3, 16)
    assert views.shape == (3, 3, 32, 32) and skipped == 1
    assert len(split.val) == 2 and split.val[1] not in split.train and len(split.train) == 2


def test_curves_are_redrawn_only_when_something_was_logged_since(tmp_path, monkeypatch):
    from pgn.distill import runlog

    drawn = []
    real = runlog.plot_curves
    monkeypatch.setattr(runlog, "plot_curves", lambda *a, **k: drawn.append(1) or real(*a, **k))
    log = runlog.RunLog(tmp_path / "run")
    log.scalars(1, {"train/cos": 0.1, "train/loss": 1.0})
    curves = log.plot()
    assert curves.is_file() and len(drawn) == 1
    assert log.plot() == curves and len(drawn) == 1  # a run that ends on a checkpoint: drawn once
    log.scalars(2, {"train/cos": 0.2, "train/loss": 0.9})
    log.plot()
    assert len(drawn) == 2
    curves.unlink()  # gone meanwhile: drawn again
    assert log.plot().is_file() and len(drawn) == 3
    log.close()
