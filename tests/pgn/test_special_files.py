"""Targets and inputs that are not regular files, one writer per folder, and sizes no one means.

Writes go through a device, FIFO or ``/dev/stdout`` in place and never replace it; sockets and disks are refused;
reads name a non-regular file as such; ``pgn.files.hold_folder`` refuses a second process (tested with a real
one) and never goes stale after ``kill -9``.
"""

import errno
import os
import signal
import socket
import stat
import sys
import time

import pytest
import torch

import pgn
from pgn.cliutils import check_output, write_json
from pgn.errors import PGNError
from pgn.files import LOCK_NAME, atomic_write, check_input_file, hold_folder

needs_dev_full = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
posix_only = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")


@pytest.fixture(scope="module")
def model():
    return pgn.build("resnet4", num_blocks=1, down_channels=[8, 16], up_channels=[8])


def _is_char_device(path):
    return stat.S_ISCHR(os.stat(path).st_mode)


# ------------------------------------------------------------------------------------------------------
# Writing


def test_dev_null_is_written_through_not_replaced(model):
    pgn.save(model, "/dev/null")
    write_json({"a": 1}, "/dev/null")
    assert _is_char_device("/dev/null")


@needs_dev_full
def test_a_full_device_is_one_line_disk_full_and_stays_a_device(model):
    with pytest.raises(PGNError, match="^cannot write /dev/full: disk full"):
        pgn.save(model, "/dev/full")
    with pytest.raises(OSError) as err:
        write_json({"a": 1}, "/dev/full")
    assert err.value.errno == errno.ENOSPC
    assert _is_char_device("/dev/full")


@posix_only
def test_a_fifo_is_written_through_to_its_reader(tmp_path, model):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # the reader is there before the writer opens (no race)
    try:
        write_json({"rows": [1]}, fifo)  # a few bytes: they fit the pipe's buffer, the writer returns
        received = os.read(reader, 1 << 16)
    finally:
        os.close(reader)
    assert received == b'{\n  "rows": [\n    1\n  ]\n}\n'
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and os.listdir(tmp_path) == ["pipe"]  # no temp file, no replacement


@posix_only
def test_a_fifo_without_reader_is_one_line_not_a_hang(tmp_path, model):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(PGNError, match="FIFO .*nobody reads"):
        pgn.save(model, fifo)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


@posix_only
def test_a_socket_is_refused_up_front_and_when_written(tmp_path, model):
    path = tmp_path / "s"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        with pytest.raises(PGNError, match="--json: cannot write .*socket"):
            check_output(path, "--json")
        with pytest.raises(PGNError, match="socket"):
            pgn.save(model, path)
        assert stat.S_ISSOCK(os.stat(path).st_mode)


@pytest.mark.skipif(not os.path.isdir("/dev/fd"), reason="needs /dev/fd")
def test_a_descriptor_path_writes_to_that_descriptor_without_truncating(tmp_path):
    out = tmp_path / "out.txt"
    with open(out, "w") as f:
        f.write("table\n")
        f.flush()
        write_json({"a": 1}, f"/dev/fd/{f.fileno()}")
        f.write("end\n")
    assert out.read_text() == 'table\n{\n  "a": 1\n}\nend\n'


def test_a_symlink_to_a_regular_file_keeps_pointing_at_it(tmp_path):
    real = tmp_path / "real.json"
    real.write_text("old")
    (tmp_path / "link.json").symlink_to(real)
    write_json({"a": 1}, tmp_path / "link.json")
    assert (tmp_path / "link.json").is_symlink() and '"a": 1' in real.read_text()


def test_a_device_output_needs_no_writable_folder(tmp_path):
    assert check_output("/dev/null", "--json") is None  # /dev need not be writable; nothing to create


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "x.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target, "w") as f:
            f.write("new")
            raise RuntimeError("boom")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["x.json"]


# ------------------------------------------------------------------------------------------------------
# Reading


@posix_only
@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_symlink_to_a_fifo_or_device_is_not_a_regular_file(tmp_path, kind):
    if kind == "fifo":
        os.mkfifo(tmp_path / "pipe")
        (tmp_path / "model.pt").symlink_to(tmp_path / "pipe")
    else:
        (tmp_path / "model.pt").symlink_to("/dev/zero")
    with pytest.raises(PGNError, match="not a regular file: it is a (FIFO|character device) \\(through a symlink\\)"):
        pgn.load(tmp_path / "model.pt")


def test_a_dangling_symlink_is_not_found_and_says_where_it_points(tmp_path):
    (tmp_path / "model.pt").symlink_to(tmp_path / "gone.pt")
    with pytest.raises(PGNError, match="not found: .* is a symlink to .*gone.pt"):
        check_input_file(tmp_path / "model.pt")


def test_a_protocol_0_pickle_that_would_run_code_is_called_that(tmp_path):
    path = tmp_path / "evil.pt"
    path.write_bytes(b"cos\nsystem\n(S'touch " + str(tmp_path / "ran").encode() + b"'\ntR.")  # ASCII text
    with pytest.raises(PGNError, match="could run code") as err:
        pgn.load(path)
    assert "os.system" in str(err.value) and not (tmp_path / "ran").exists()


def test_map_location_meta_is_not_supported(tmp_path, model):
    path = pgn.save(model, tmp_path / "m.pt")
    with pytest.raises(PGNError, match="map_location='meta' is not supported"):
        pgn.load(path, map_location="meta")


def test_a_path_longer_than_the_os_allows_is_named(tmp_path, model):
    long = tmp_path / ("x" * 300 + ".pt")
    for call in (lambda: pgn.save(model, long), lambda: pgn.load(long)):
        with pytest.raises(PGNError, match="file name too long") as err:
            call()
        assert len(str(err.value)) < 300  # the path is shortened, the line stays a line


# ------------------------------------------------------------------------------------------------------
# Sizes no one means


def test_implausible_sizes_from_arguments_are_refused_before_allocation(monkeypatch):
    built = []
    real_init = torch.nn.Conv2d.__init__
    monkeypatch.setattr(torch.nn.Conv2d, "__init__", lambda self, *a, **k: built.append(a) or real_init(self, *a, **k))
    with pytest.raises(PGNError, match="num_blocks=1000000 .*at most 256"):
        pgn.build("resnet4", num_blocks=10**6)
    with pytest.raises(PGNError, match="from 1 to 4096 channels"):
        pgn.build("resnet4", down_channels=[10**6, 128])
    with pytest.raises(PGNError, match="parameters .*at most 1e\\+09"):
        pgn.build("resnet4", num_blocks=200, down_channels=[4096, 4096], up_channels=[4096])
    assert built == []  # refused before a single layer (and its weights) was made
    pgn.build("resnet4", num_blocks=1, down_channels=[8, 16], up_channels=[8])
    assert built  # the check sees real constructions


def test_an_implausible_size_from_a_checkpoint_is_refused_naming_the_file(tmp_path, model):
    obj = torch.load(pgn.save(model, tmp_path / "m.pt"), weights_only=True)
    obj["config"]["backbone_params"]["num_blocks"] = 10**7
    torch.save(obj, tmp_path / "big.pt")
    with pytest.raises(PGNError, match="big.pt describes an implausible model: num_blocks=10000000 .*at most 256"):
        pgn.load(tmp_path / "big.pt")


# ------------------------------------------------------------------------------------------------------
# One writer per folder

@pytest.fixture
def holder(tmp_path):
    """A second process holding ``tmp_path/run`` (killed with SIGKILL at the end)."""
    from folder_holder import FolderHolder

    proc = FolderHolder(tmp_path / "run", "test-holder", "--run-dir")
    yield proc
    proc.kill()


@pytest.mark.skipif(sys.platform == "win32", reason="flock is POSIX")
def test_a_folder_held_by_another_process_is_refused_naming_its_pid(tmp_path, holder):
    (tmp_path / "run" / "metrics.jsonl").write_text("mine\n")
    with pytest.raises(PGNError, match=f"--run-dir .*run is in use by another pgn-distill \\(PID {holder.pid}\\)"):
        with hold_folder(tmp_path / "run", "pgn-distill", "--run-dir"):
            pytest.fail("entered a held folder")
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == "mine\n"


@pytest.mark.skipif(sys.platform == "win32", reason="flock is POSIX")
def test_kill_9_never_leaves_a_stale_lock(tmp_path, holder):
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (tmp_path / "run" / LOCK_NAME).exists()  # the file stays; the kernel dropped the lock
    with hold_folder(tmp_path / "run", "pgn-distill", "--run-dir"):
        assert (tmp_path / "run" / LOCK_NAME).read_text().strip() == str(os.getpid())
    assert not (tmp_path / "run" / LOCK_NAME).exists()


def test_a_failed_holder_removes_the_folder_it_created(tmp_path):
    with pytest.raises(RuntimeError):
        with hold_folder(tmp_path / "new" / "run", "pgn-distill", "--run-dir"):
            raise RuntimeError("setup failed")
    assert os.listdir(tmp_path) == []
