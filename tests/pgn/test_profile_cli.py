"""Table 6 reproduction (params and MACs in the paper's convention) and the pgn-info command."""

import json

import pytest
from click.testing import CliRunner

import pgn
from pgn.cli import main
from pgn.profile import PAPER_TABLE6
from pgn.presets import preset_description

# Paper-convention MACs at 224² to 4 decimals (rounded to 2 they are the paper's Table 6) and pure conv multiply-adds.
EXPECTED = {
    "resnet4": (19.7928, 19.68),
    "resnet6": (27.2269, 27.08),
    "resnet8": (34.6609, 34.48),
    "unet": (2.0970, 1.94),
}


@pytest.mark.parametrize("name,expected", EXPECTED.items())
def test_pgn_macs_paper_convention(name, expected):
    p = pgn.profile(name, 224)
    assert round(p.macs / 1e9, 4) == expected[0]
    assert round(p.conv_macs / 1e9, 2) == expected[1]


def test_vgg_macs_are_three_forwards_on_both_images():
    v19, v11 = pgn.profile("vgg19", 224), pgn.profile("vgg11", 224)
    assert (v19.params, v11.params) == (12_944_960, 6_860_672)
    assert f"{v19.macs / 1e9:.2f}" == "108.84" and f"{v11.macs / 1e9:.2f}" == "42.21"
    assert round(v19.macs / 6 / 1e9, 4) == 18.1402 and round(v11.macs / 6 / 1e9, 4) == 7.0349
    assert round(v19.conv_macs / 6 / 1e9, 4) == 18.1212


def test_profile_other_size_and_teacher_object(teacher19):
    assert pgn.profile(teacher19, 256).macs > pgn.profile("vgg19", 224).macs
    assert pgn.profile(pgn.build("unet"), (64, 96)).size == (64, 96)


def test_pgn_info_measures_table6_equal_to_the_paper(tmp_path):
    """The measured columns (counted by pgn.profile) equal the paper's printed Table 6 at its precision."""
    result = CliRunner().invoke(main, ["--size", "224", "--json", str(tmp_path / "t6.json")])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "t6.json").read_text())["rows"]
    assert [r["name"] for r in rows] == list(PAPER_TABLE6)
    printed = {cells[0]: cells for cells in _table_rows(result.output)}
    for r in rows:
        paper_params, paper_macs = PAPER_TABLE6[r["name"]]
        assert (f"{r['params'] / 1e6:.2f}M", f"{r['macs'] / 1e9:.2f}B") == (paper_params, paper_macs), r["name"]
        # columns: model, measured params, paper params, measured MACs, paper MACs, ...
        assert printed[r["model"]][1:5] == [paper_params, paper_params, paper_macs, paper_macs]


def _table_rows(output: str) -> list[list[str]]:
    """The cells of each model's first line in a printed rich table."""
    lines = [line for line in output.splitlines() if line.startswith("│") and line[1:].split("│")[0].strip()]
    return [[cell.strip() for cell in line.strip("│").split("│")] for line in lines]


def test_pgn_info_presets_and_checkpoint(tmp_path):
    runner = CliRunner()
    out = runner.invoke(main, ["--presets", "--json", str(tmp_path / "presets.json")])
    assert out.exit_code == 0 and "resnet8-hybrid" in out.output
    rows = {r["preset"]: r for r in json.loads((tmp_path / "presets.json").read_text())}
    assert set(rows) == set(pgn.list_presets())
    assert rows["unet"]["grad_scale"] == 0.048 and rows["resnet8-direct"]["head"] == "direct"
    assert all(r["description"] == preset_description(name) and r["description"] for name, r in rows.items())
    path = pgn.save(pgn.build("resnet4"), tmp_path / "m.pt")
    out = runner.invoke(main, ["--checkpoint", str(path)])
    assert out.exit_code == 0 and "pgn-toolkit" in out.output
    out = runner.invoke(main, ["--checkpoint", str(tmp_path / "nope.pt")])
    assert out.exit_code == 1 and "checkpoint not found" in out.output


def test_profile_of_a_size_the_unet_cannot_take_names_the_nearest_valid_sizes():
    with pytest.raises(pgn.PGNError, match="multiple of 32; nearest valid height: 32 or 64"):
        pgn.profile(pgn.build("unet"), size=33)
    with pytest.raises(pgn.PGNError, match="width must be a multiple of 2"):
        pgn.profile("resnet4", size=(64, 45))


def test_pgn_info_profiles_the_models_that_take_the_size_and_names_the_skipped(tmp_path):
    result = CliRunner().invoke(main, ["--size", "48", "--json", str(tmp_path / "t.json")])  # ResNets take 48, the UNet not
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "t.json").read_text())
    assert [r["name"] for r in report["rows"]] == ["vgg19", "vgg11", "resnet4", "resnet6", "resnet8"]
    assert list(report["skipped"]) == ["unet"] and "32 or 64" in report["skipped"]["unet"]
    assert "skipped: unet cannot take 48x48" in result.output


def test_pgn_info_json_on_a_read_only_path_is_one_line(read_only_dir):
    result = CliRunner().invoke(main, ["--presets", "--json", str(read_only_dir / "p.json")])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and lines == [lines[0]] and lines[0].startswith("error: --json")
    assert "PGN presets" not in result.output  # checked before any work


def test_pgn_info_refuses_presets_with_a_checkpoint(tmp_path):
    result = CliRunner().invoke(main, ["--presets", "--checkpoint", str(tmp_path / "m.pt")])
    assert result.exit_code == 2 and "pass one of them" in result.output  # was: the checkpoint ignored silently


def test_pgn_info_json_to_a_folder_or_under_a_file_exits_1(tmp_path):
    (tmp_path / "f").write_text("mine")
    for target, match in ((tmp_path, "is a folder"), (tmp_path / "f" / "x.json", "where a folder is needed")):
        result = CliRunner().invoke(main, ["--presets", "--json", str(target)])
        assert result.exit_code == 1 and match in result.output, result.output
    assert (tmp_path / "f").read_text() == "mine"
