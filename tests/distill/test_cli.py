import json

import pytest
from click.testing import CliRunner
from PIL import Image

from pgn.distill.cli import build_config, command, join_list_arguments

TINY = ["--size", "32", "--batch-size", "6", "--vgg-weights", "random", "--num-blocks", "1", "--down-channels", "16,32",
        "--up-channels", "16", "--val-images", "3", "--no-progress", "--device", "cpu"]


def invoke(*args):
    return CliRunner().invoke(command, list(args), catch_exceptions=False)


def test_help_has_examples():
    result = invoke("--help")
    assert result.exit_code == 0
    assert "Examples:" in result.output and "torchrun" in result.output and "--resume-dir" in result.output


def test_tiny_run_writes_json_and_resumes(tmp_path):
    out = tmp_path / "summary.json"
    result = invoke(*TINY, "--steps", "2", "--run-dir", str(tmp_path / "run"), "--json", str(out))
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())
    assert summary["steps"] == 2 and "random" in summary["teacher"] and "val/cos" in summary["last_validation"]
    again = invoke("--run-dir", str(tmp_path / "run"), "--resume", "--steps", "3")  # config.json supplies the rest
    assert again.exit_code == 0, again.output
    assert "resuming from" in again.output


def test_config_file_reruns_a_run(tmp_path):
    assert invoke(*TINY, "--steps", "1", "--run-dir", str(tmp_path / "a")).exit_code == 0
    result = invoke("--config", str(tmp_path / "a" / "config.json"), "--run-dir", str(tmp_path / "b"))
    assert result.exit_code == 0, result.output
    a, b = (json.loads((tmp_path / d / "config.json").read_text()) for d in "ab")
    assert {k: v for k, v in a.items() if k != "run_dir"} == {k: v for k, v in b.items() if k != "run_dir"}


def test_bad_data_is_one_line_and_exit_1(tmp_path):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(command, [*TINY, "--data", str(tmp_path / "empty"), "--run-dir", str(tmp_path / "r")])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "no images" in lines[0]


def test_unreadable_images_are_skipped_not_fatal(tmp_path):
    data = tmp_path / "imgs"
    data.mkdir()
    for i in range(4):
        Image.new("RGB", (64, 48), (40 * i, 90, 200)).save(data / f"ok{i}.png")
    (data / "broken.jpg").write_bytes(b"not an image")
    Image.new("RGB", (6, 6)).save(data / "tiny.png")
    # one loader worker process: the skip count must come back from it
    result = invoke(*TINY, "--data", str(data), "--steps", "3", "--run-dir", str(tmp_path / "r"), "--min-image-side", "16", "--workers", "1")
    assert result.exit_code == 0, result.output
    assert "skipping unusable images" in result.output
    records = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert max(r.get("data/skipped", 0) for r in records) > 0


def test_eval_only(tmp_path):
    out = tmp_path / "v.json"
    result = invoke(*TINY, "--eval-only", "--json", str(out))
    assert result.exit_code == 0, result.output
    assert "val/cos" in json.loads(out.read_text())["validation"]


def test_authors_flags_map_to_ours():
    argv = join_list_arguments(["--ae-max-layer", "0", "1", "2", "--resnet-down-channels", "64", "128", "--seed", "1"])
    assert argv == ["--ae-max-layer", "0,1,2", "--resnet-down-channels", "64,128", "--seed", "1"]
    ctx = command.make_context("pgn-distill", [
        "--pgn-arch", "resnet", "--resnet-num-blocks", "4", "--worker-batch-size", "44", "--pgn-proxy-grad-scale", "0.03",
        "--pgn-loss-proxy-prc-gt", "--pgn-loss-proxy-l1-gt", "--pgn-loss-proxy-prc-gt-coef", "0.5", "--dataset-name", "ImageNet",
        "--data-dir", "/data", "--batches-per-train-epoch", "256", "--save-each", "10", "--pgn-backbone-to-grad", "direct",
        "--pgn-proxy-type", "sigmoid", "--ae-max-layer", "0,1", "--no-alternate-gt-curr", "--loss-scale", "1024",
    ])
    cfg = build_config(ctx.params)
    assert (cfg.backbone, cfg.num_blocks, cfg.batch_size, cfg.grad_scale) == ("resnet8", 4, 44, 0.03)
    assert (cfg.vgg_weight, cfg.dataset, cfg.data, cfg.batches_per_epoch, cfg.save_every) == (0.5, "imagenet", "/data", 256, 2560)
    assert (cfg.head, cfg.ae_depths, cfg.alternate_gt, cfg.grad_loss_scale) == ("hybrid", [0, 1], False, 1024.0)


def test_world_size_mismatch_is_a_usage_error(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    result = CliRunner().invoke(command, ["--world-size", "8", "--steps", "1"])
    assert result.exit_code == 2 and "torchrun --nproc_per_node 8" in result.output


def test_bad_values_are_clear(tmp_path):
    result = CliRunner().invoke(command, [*TINY, "--size", "36", "--run-dir", str(tmp_path / "r")])
    assert result.exit_code == 1 and "multiple of 8" in result.output
    result = CliRunner().invoke(command, ["--down-channels", "a,b"])
    assert result.exit_code == 2 and "comma-separated" in result.output


@pytest.mark.parametrize("flag", ["--resume-dir", "--resume-epoch"])
def test_resume_dir_and_epoch_go_together(tmp_path, flag):
    value = str(tmp_path) if flag == "--resume-dir" else "3"
    result = CliRunner().invoke(command, [*TINY, flag, value, "--run-dir", str(tmp_path / "r")])
    assert result.exit_code == 1 and "go together" in result.output


@pytest.mark.parametrize("option", ["--save-every", "--batches-per-epoch", "--val-every", "--log-every"])
def test_zero_step_counts_are_refused_naming_the_option(tmp_path, option):
    result = CliRunner().invoke(command, [*TINY, option, "0", "--run-dir", str(tmp_path / "r")])
    assert result.exit_code == 1 and f"must be ≥ 1 ({option}), got 0" in result.output  # was: 0 taken as "one epoch"
    assert not (tmp_path / "r").exists()


def test_zero_step_counts_in_a_config_file_name_the_option(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"batches_per_epoch": 0}))
    result = invoke(*TINY, "--config", str(tmp_path / "c.json"), "--run-dir", str(tmp_path / "r"))
    assert result.exit_code == 1 and "batches_per_epoch must be ≥ 1 (--batches-per-epoch)" in result.output


def test_a_size_the_backbone_cannot_take_leaves_no_run_folder(tmp_path):
    result = CliRunner().invoke(command, ["--backbone", "unet", "--size", "48", "--vgg-weights", "random",
                                          "--run-dir", str(tmp_path / "r")])
    assert result.exit_code == 1 and "multiples of 32" in result.output  # was: config.json and metrics.jsonl left
    assert not (tmp_path / "r").exists()


def test_file_for_folder_mixups_exit_1(tmp_path):
    (tmp_path / "f").write_text("mine")
    result = CliRunner().invoke(command, [*TINY, "--run-dir", str(tmp_path / "f")])
    assert result.exit_code == 1 and "a file is in the way" in result.output
    result = CliRunner().invoke(command, [*TINY, "--config", str(tmp_path), "--run-dir", str(tmp_path / "r")])
    assert result.exit_code == 1 and "is a folder" in result.output  # was: click's exit 2
    assert (tmp_path / "f").read_text() == "mine"


@pytest.mark.parametrize("resume", [False, True])
def test_a_run_folder_another_process_holds_is_refused_and_untouched(tmp_path, resume):
    from folder_holder import FolderHolder

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    holder = FolderHolder(run, "pgn-distill", "--run-dir")
    try:
        result = CliRunner().invoke(command, [*TINY, "--steps", "1", "--run-dir", str(run), *(["--resume"] if resume else [])])
        assert result.exit_code == 1 and f"is in use by another pgn-distill (PID {holder.pid})" in result.output
        assert sorted(p.name for p in run.iterdir()) == [".pgn.lock", "metrics.jsonl"]
        assert (run / "metrics.jsonl").read_text() == '{"step": 1}\n'
    finally:
        holder.kill()
