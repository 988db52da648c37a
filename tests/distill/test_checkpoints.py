import warnings

import pytest
import torch

import pgn
from pgn.distill import checkpoints as ckpt
from pgn.distill import distributed as dist
from pgn.distill.resume import starting_point
from pgn.distill.runlog import read_metrics
from pgn.distill.trainer import Distiller, train
from pgn.errors import PGNError


class Crash(RuntimeError):
    pass


def comparable(records, steps):
    """Training scalars of the given steps, without timings."""
    out = {}
    for r in records:
        if r.get("step") in steps and "train/loss" in r:
            out[r["step"]] = {k: v for k, v in r.items() if not k.startswith("time/")}
    return out


def crash_at(step):
    def hook(done, scalars):
        if done == step:
            raise Crash(f"simulated crash after step {step}")

    return hook


def test_resume_after_interruption_continues_exactly(tiny_config, tmp_path):
    # resets with probability 1/2 after every step exercise the saved NumPy and PyTorch generators
    kw = dict(steps=6, save_every=2, keep_checkpoints=10, ae_min_samples_before_reset=0, ae_reset_prob=0.5)
    full = train(tiny_config(run_dir=str(tmp_path / "full"), **kw))
    with pytest.raises(Crash):
        train(tiny_config(run_dir=str(tmp_path / "crashed"), **kw), on_step=crash_at(5))  # after the step-4 checkpoint
    resumed = train(tiny_config(run_dir=str(tmp_path / "crashed"), **kw), resume=True)
    assert resumed.steps == 6
    a = comparable(read_metrics(full.run_dir / "metrics.jsonl"), {5, 6})
    b = comparable(read_metrics(resumed.run_dir / "metrics.jsonl"), {5, 6})
    assert a == b and len(a) == 2
    assert sum(a[6][f"ae{k}/resets"] for k in range(3)) > 0  # the random resets did happen
    sa, sb = (torch.load(r.checkpoint, weights_only=True) for r in (full, resumed))
    for key in sa["pgn"]:
        assert torch.equal(sa["pgn"][key], sb["pgn"][key]), key
    for k in range(3):
        for key, value in sa["ranks"][0]["autoencoders"][k].items():
            assert torch.equal(value, sb["ranks"][0]["autoencoders"][k][key]), key
    # the crashed run's step-5 line was dropped, so every step appears once
    steps = [r["step"] for r in read_metrics(resumed.run_dir / "metrics.jsonl") if "train/loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_corrupted_latest_checkpoint_falls_back(tiny_config, tmp_path):
    cfg = tiny_config(run_dir=str(tmp_path / "run"), steps=4, save_every=2)
    train(cfg)
    latest = ckpt.checkpoint_path(cfg.run_dir, 4)
    latest.write_bytes(latest.read_bytes()[:1000])  # a torn file
    with pytest.warns(UserWarning, match="falling back"):
        path, state = ckpt.latest_training_state(cfg.run_dir)
    assert state["step"] == 2 and path.name == "step-000000002.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = train(cfg, resume=True)
    assert again.steps == 4  # redid steps 3 and 4 from the step-2 state


def test_only_the_last_k_checkpoints_are_kept(tiny_config):
    cfg = tiny_config(steps=5, save_every=1, keep_checkpoints=2)
    train(cfg)
    assert [s for s, _ in ckpt.list_checkpoints(cfg.run_dir)] == [4, 5]


def test_fresh_run_refuses_a_used_run_dir(tiny_config):
    cfg = tiny_config(steps=1)
    train(cfg)
    with pytest.raises(PGNError, match="--resume"):
        train(cfg)


def test_plain_checkpoint_loads_with_pgn_load_in_unit_space(tiny_config):
    result = train(tiny_config(steps=2))
    model = pgn.load(result.pgn_path)
    assert model.config.value_space == "unit"
    state = torch.load(result.checkpoint, weights_only=True)
    trained = pgn.PGN(pgn.PGNConfig.from_dict(state["pgn_config"])).eval()
    trained.load_state_dict(state["pgn"])
    assert trained.config.value_space == "imagenet"
    y_hat, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        g_unit = model(y_hat, y)
        g_norm = trained(pgn.normalize(y_hat), pgn.normalize(y))
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(g_unit, g_norm / std, rtol=1e-4, atol=1e-7)


def test_authors_files_resume(tiny_config, tmp_path):
    """--resume-dir/--resume-epoch read the authors' per-epoch files (their version-2 PGN format)."""
    cfg = tiny_config().resolved()
    source = Distiller(cfg, dist.DistContext())
    for p in source.model.parameters():
        p.data.normal_()
    d = tmp_path / "authors" / "models"
    d.mkdir(parents=True)
    authors_pgn = {
        "state_dict": {f"module.{k}": v for k, v in source.model.backbone.state_dict().items()},
        "backbone_type": "resnet",
        "backbone_params": {"down_channels": [16, 32], "up_channels": [16], "num_blocks": 1, "output_nc": 3},
        "backbone_to_grad_type": "proxy",
        "backbone_to_grad_params": {"type": "sigmoid", "sigmoid": {"scale": 1.1}, "grad_type": "mse", "grad_scale": 0.025},
        "version": 2,
    }
    torch.save(authors_pgn, d / "7.pth")
    torch.save(source.optimizer.state_dict(), d / "7_opt.pth")
    for k, ae in enumerate(source.autoencoders):
        for p in ae.parameters():
            p.data.uniform_()
        torch.save(ae.state_dict(), d / f"7_ae_{k}.pth")
    cfg2 = tiny_config(resume_dir=str(tmp_path / "authors"), resume_epoch=7, batches_per_epoch=10).resolved()
    target = Distiller(cfg2, dist.DistContext())
    start, source_name = target.start(tmp_path / "newrun", resume=False)
    assert start == 80 and "epoch 7" in source_name
    for a, b in zip(source.model.parameters(), target.model.parameters()):
        assert torch.equal(a, b)
    for ae_s, ae_t in zip(source.autoencoders, target.autoencoders):
        for a, b in zip(ae_s.parameters(), ae_t.parameters()):
            assert torch.equal(a, b)


def test_pgn_checkpoint_flag_and_mismatched_head(tiny_config, tmp_path):
    result = train(tiny_config(steps=1))
    cfg = tiny_config(run_dir=str(tmp_path / "b"), pgn_checkpoint=str(result.pgn_path)).resolved()
    d = Distiller(cfg, dist.DistContext())
    d.start(tmp_path / "b", resume=False)
    assert torch.equal(next(d.model.parameters()).cpu(), pgn.load(result.pgn_path).backbone.state_dict()["layers.0.0.weight"])
    cfg = tiny_config(run_dir=str(tmp_path / "c"), pgn_checkpoint=str(result.pgn_path), grad_scale=0.5).resolved()
    d = Distiller(cfg, dist.DistContext())
    with pytest.raises(PGNError, match="grad_scale"):
        d.start(tmp_path / "c", resume=False)


def test_starting_point_decides_from_the_config_without_touching_models(tiny_config, tmp_path):
    cfg = tiny_config(pgn_checkpoint="p.pth", ae_checkpoints=["None", "a1.pth", "None"], start_epoch=2, batches_per_epoch=5).resolved()
    point = starting_point(cfg, tmp_path / "new", resume=False, ctx=dist.DistContext())
    assert (point.step, point.source, point.state) == (10, None, None)
    assert point.files == ckpt.InitialFiles("p.pth", None, (None, "a1.pth", None), (None, None, None))
    scratch = starting_point(tiny_config().resolved(), tmp_path / "other", resume=False, ctx=dist.DistContext())
    assert (scratch.step, scratch.files, scratch.state) == (0, None, None)


def test_ae_checkpoint_lists_need_one_entry_per_autoencoder():
    assert ckpt.parse_optional_paths(["a.pth", "None", "c.pth"], 3, "--ae-checkpoints") == ["a.pth", None, "c.pth"]
    with pytest.raises(PGNError, match="3 entries"):
        ckpt.parse_optional_paths(["a.pth"], 3, "--ae-checkpoints")
