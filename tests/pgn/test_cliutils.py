"""The plumbing every CLI shares: output locations checked up front, write failures and OOM as one line, cleanup."""

import errno
import json
import signal

import click
import pytest
from click.testing import CliRunner

from pgn.cliutils import FiniteFloat, check_output, run_cli
from pgn.files import write_json
from pgn.errors import PGNError


def _command(body, **outputs):
    @click.command()
    def cmd():
        run_cli(body, **outputs)

    return cmd


def _invoke(body, **outputs):
    return CliRunner().invoke(_command(body, **outputs), [], catch_exceptions=False)


def _one_error_line(result):
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_read_only_folder_is_refused_up_front(read_only_dir):
    with pytest.raises(PGNError, match="--json .*permission denied"):
        check_output(read_only_dir / "x.json", "--json")
    with pytest.raises(PGNError, match="--output .*permission denied"):
        check_output(read_only_dir / "new" / "deeper", "--output", folder=True)
    assert list(read_only_dir.iterdir()) == []  # the check creates nothing


def test_file_in_the_way_and_folder_in_the_way(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(PGNError, match="is a file, where a folder is needed"):
        check_output(tmp_path / "file" / "out.json", "--json")
    with pytest.raises(PGNError, match="a file is in the way"):
        check_output(tmp_path / "file", "--output", folder=True)
    with pytest.raises(PGNError, match="is a folder, not a file"):
        check_output(tmp_path, "--json")
    assert check_output("-", "--json") is None
    assert check_output(tmp_path / "a" / "b" / "c.json", "--json") == tmp_path / "a"  # the folder it would create


def test_nothing_runs_when_an_output_cannot_be_written(read_only_dir):
    ran = []
    result = _invoke(lambda: ran.append(1), files={"--json": read_only_dir / "r.json"})
    assert result.exit_code == 1 and ran == []
    assert "--json" in _one_error_line(result)


@pytest.mark.parametrize("code, words", [
    (errno.ENOSPC, "disk full"), (errno.EROFS, "read-only file system"), (errno.EACCES, "permission denied"),
    (errno.ENOTDIR, "a file is in the way"), (errno.EISDIR, "is a folder, not a file"),
])
def test_write_failures_are_one_line(code, words):
    def body():
        raise OSError(code, "raw message", "/some/where.pt")

    line = _one_error_line(result := _invoke(body))
    assert result.exit_code == 1 and words in line and "/some/where.pt" in line


def test_torch_save_runtime_error_raised_from_a_full_disk_is_one_line(tmp_path):
    import torch

    class FullDisk:
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            pass

    def body():
        torch.save({"w": torch.zeros(10_000)}, FullDisk())  # torch reports "unexpected pos ..."

    line = _one_error_line(result := _invoke(body))
    assert result.exit_code == 1 and "disk full" in line


@pytest.mark.parametrize("error", [MemoryError(), RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")])
def test_out_of_memory_is_one_line(error):
    def body():
        raise error

    line = _one_error_line(result := _invoke(body))
    assert result.exit_code == 1 and "out of memory" in line


def test_a_bug_keeps_its_traceback():
    def body():
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        _invoke(body)


def test_failed_or_interrupted_command_leaves_no_empty_folders(tmp_path):
    out = tmp_path / "new" / "deeper"

    def fails_after_mkdir():
        (out / "images").mkdir(parents=True)
        raise PGNError("something went wrong")

    result = _invoke(fails_after_mkdir, folders={"--output": out})
    assert result.exit_code == 1 and not (tmp_path / "new").exists()

    def interrupted():
        out.mkdir(parents=True)
        raise KeyboardInterrupt

    result = _invoke(interrupted, folders={"--output": out})
    assert result.exit_code == 130 and "interrupted" in result.output and not (tmp_path / "new").exists()

    def terminated():
        out.mkdir(parents=True)
        signal.raise_signal(signal.SIGTERM)

    result = _invoke(terminated, folders={"--output": out})
    assert result.exit_code == 143 and not (tmp_path / "new").exists()

    def writes_then_fails():
        write_json({"partial": True}, out / "r.json")
        raise PGNError("failed late")

    assert _invoke(writes_then_fails, folders={"--output": out}).exit_code == 1
    assert json.loads((out / "r.json").read_text()) == {"partial": True}  # what was written stays


def test_write_json_is_atomic_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    import os

    target = tmp_path / "r.json"
    write_json({"old": 1}, target)

    def full(src, dst):  # the temporary file is written, then moving it into place fails
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError):
        write_json({"new": 2}, target)
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"old": 1} and sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_finite_float_refuses_nan_inf_and_out_of_range(value):
    with pytest.raises(click.BadParameter):
        FiniteFloat(0, min_open=True).convert(value, None, None)
    assert FiniteFloat(1, allow_inf=True).convert("inf", None, None) == float("inf")


def test_first_line_quotes_one_line_of_a_foreign_error():
    from pgn.errors import first_line

    assert first_line(RuntimeError("\n  conversion failed: op X\nTraceback (most recent call last):\n ...")) == "conversion failed: op X"
    assert first_line(KeyError()) == "KeyError"
    assert first_line("y" * 500, limit=10) == "y" * 10
