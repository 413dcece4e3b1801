"""Hostile archives, servers, races and broken disks: archive extraction is bounded in size and ratio, a
download is checked against its Content-Length and bounded by a total deadline (a loopback server that
drip-feeds bytes), concurrent data and model builders are safe, a lock that fails for another reason than
contention says so, OS errors end in one line and exit 2, an edited cell record is named, `genft eval
--output` writes atomically, sft.py refuses a folder another process trains into, and a Slurm driver that is
killed cancels its jobs."""
from __future__ import annotations

import contextlib
import errno
import http.server
import io
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
import zipfile
from pathlib import Path

import pytest

from genft import data as gdata
from genft import files, models
from genft.cli import main as cli_main
from genft.data import study
from genft.suite import snapshot, store

from loopback import http_server
from report_records import record, stored

REPO = Path(__file__).resolve().parents[1]
BOMB_BYTES = 80 << 20  # zeros: ~80 kB compressed, a thousandfold ratio


# ---------------------------------------------------------------- archives


def zip_bomb(path: Path) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("repo/data/zeros.json", "w") as f:
        for _ in range(BOMB_BYTES >> 20):
            f.write(bytes(1 << 20))
    return path


def tar_bomb(path: Path) -> Path:
    class Zeros(io.RawIOBase):
        def __init__(self, n):
            self.left = n

        def readable(self):
            return True

        def readinto(self, b):
            k = min(len(b), self.left)
            b[:k] = bytes(k)
            self.left -= k
            return k

    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo("repo/data/zeros.json")
        info.size = BOMB_BYTES
        tf.addfile(info, io.BufferedReader(Zeros(BOMB_BYTES)))
    return path


@pytest.mark.parametrize("make", [zip_bomb, tar_bomb], ids=["zip", "tar.gz"])
def test_an_archive_bomb_is_refused_and_nothing_is_written(make, tmp_path):
    archive = make(tmp_path / "bomb.archive")
    assert archive.stat().st_size < 1 << 20
    root = tmp_path / "data"
    with pytest.raises(gdata.DataError, match=r"bomb.archive: the archive unpacks to .* bytes, more than the "
                                              r"67108864 bytes genft unpacks"):
        gdata.import_study(archive, root, log=lambda *_: None)
    assert not root.exists() or not any(root.rglob("*"))


def test_unpack_limits():
    assert study.unpack_limit(100 << 10) == study.RATIO_FLOOR_BYTES  # a small archive: the floor
    assert study.unpack_limit(5 << 20) == 500 << 20  # the ratio
    assert study.unpack_limit(100 << 20) == study.MAX_UNPACKED_BYTES  # the cap


# ---------------------------------------------------------------- downloads from a hostile loopback server


@contextlib.contextmanager
def loopback(handler_body):
    """An HTTP server on 127.0.0.1 that answers every GET with `handler_body(handler)`; stopped on exit."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            try:
                handler_body(self)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args):
            pass

    with http_server(Handler) as url:
        yield f"{url}/release.tar.gz"


def test_a_truncated_download_is_caught_by_its_content_length(tmp_path):
    def cut_short(h):
        h.send_response(200)
        h.send_header("Content-Length", "1000")
        h.end_headers()
        h.wfile.write(b"\x1f\x8b" + bytes(498))  # 500 of 1000 bytes, then the connection closes
        h.wfile.flush()
        h.close_connection = True

    with loopback(cut_short) as url:
        with pytest.raises(gdata.DataError, match=r"cut short \(500 of the 1000 bytes"):
            gdata.import_study(url, tmp_path / "data", log=lambda *_: None)
    assert not (tmp_path / "data").exists()


def test_a_drip_feeding_server_times_out_on_the_total_deadline(tmp_path, monkeypatch):
    monkeypatch.setattr(study, "DOWNLOAD_DEADLINE_S", 1.0)
    monkeypatch.setattr(study, "DOWNLOAD_TIMEOUT_S", 5.0)  # each byte comes well within the per-read timeout

    def drip(h):
        h.send_response(200)
        h.send_header("Content-Length", "100000")
        h.end_headers()
        for _ in range(100):  # bounded: 10 s at most, the client gives up after 1 s
            h.wfile.write(b"\0")
            h.wfile.flush()
            time.sleep(0.1)

    t0 = time.time()
    with loopback(drip) as url:
        with pytest.raises(gdata.DataError, match=r"took longer than 1.0 s"):
            gdata.import_study(url, tmp_path / "data", log=lambda *_: None)
    assert time.time() - t0 < 8
    assert not (tmp_path / "data").exists()


# ---------------------------------------------------------------- concurrent builders


def _write_many(root: str, n: int) -> None:
    from genft.builtin import BUILTIN_DATASETS, SEEDS, build_splits

    info = BUILTIN_DATASETS["builtin_products"]
    splits = build_splits(info, SEEDS[info.name])
    for _ in range(n):
        gdata.write_dataset(info.task, info.name, splits, root, {"source": "builtin"})


def test_concurrent_data_writers_into_one_folder_all_succeed(tmp_path):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_write_many, args=(str(tmp_path), 15)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    folder = gdata.dataset_dir("sentiment", "builtin_products", tmp_path)
    assert len(gdata.load_split("sentiment", "builtin_products", "test", tmp_path)) > 0
    assert sorted(p.name for p in folder.parent.iterdir()) == ["builtin_products"]  # no leftovers


def test_a_racing_model_build_never_deletes_the_winners_complete_model(tmp_path, monkeypatch):
    monkeypatch.setenv("GENFT_HOME", str(tmp_path / "home"))

    def winner(out):
        (out / "weights").write_text("winner")
        return {"by": "winner"}

    def loser(out):  # while this build runs, another builder finishes the same model first
        models._atomic_build("m", winner)
        (out / "weights").write_text("loser")
        return {"by": "loser"}

    final = models._atomic_build("m", loser)
    assert (final / "weights").read_text() == "winner"
    assert json.loads((final / models.MARKER).read_text())["by"] == "winner"
    assert sorted(p.name for p in final.parent.iterdir()) == ["m"]  # the loser's copy discarded
    # a folder that is not a genft build: an error naming it, never deleted
    other = tmp_path / "home" / "models" / "n"
    other.mkdir()
    (other / "mine.bin").write_text("x")
    with pytest.raises(models.ModelError, match=r"models/n exists but is not a model genft built"):
        models._atomic_build("n", winner)
    assert (other / "mine.bin").read_text() == "x"


# ---------------------------------------------------------------- locks


def test_a_held_lock_and_a_failing_lock_are_told_apart(tmp_path, monkeypatch):
    held = files.hold_lock(tmp_path / ".suite.lock")
    try:
        with pytest.raises(store.StoreError, match=rf"another `genft suite run` is using .*pid {os.getpid()}"):
            store.Lock(tmp_path).__enter__()
    finally:
        held.close()

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(files.fcntl, "flock", no_locks)  # a filesystem without locks (NFS without lockd)
    with pytest.raises(store.StoreError) as e:
        store.Lock(tmp_path).__enter__()
    assert "No locks available" in str(e.value) and "another" not in str(e.value)


def test_sft_refuses_an_output_folder_another_process_trains_into(tiny_model, tmp_path):
    from genft import training
    from genft.training import ConfigError

    from finetune_setup import DEMOS, TRAIN

    root = tmp_path / "data"
    gdata.write_dataset("sentiment", "amazon", {"train_16": TRAIN, "demos": DEMOS, "test": TRAIN[:4]}, root)
    out = tmp_path / "ft"
    out.mkdir()
    held = files.hold_lock(out / training.LOCK_FILE)  # another sft.py, still training here
    try:
        cfg = training.FinetuneConfig(task="sentiment", dataset="amazon", train_size=16, data_dir=str(root),
                                      model_name_or_path=tiny_model, output_dir=str(out), max_steps=1,
                                      per_device_train_batch_size=4, gradient_accumulation_steps=1, torch_threads=1)
        with pytest.raises(ConfigError, match=rf"being trained into by another process \(pid {os.getpid()}"):
            training.run(cfg, log=lambda *_: None)
    finally:
        held.close()
    assert sorted(p.name for p in out.iterdir()) == [training.LOCK_FILE]  # nothing else written


# ---------------------------------------------------------------- OS errors, atomic writes, edited records


def test_os_errors_end_in_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    evidence = REPO / "reports" / "study-cpu" / "cells.jsonl.gz"
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert cli_main(["report", "--cells", str(evidence), "--out-dir", str(blocker / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("genft: error: ") and "Not a directory" in err and len(err.splitlines()) == 1

    real = os.replace

    def disk_full(src, dst):
        if str(dst).endswith(".md"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real(src, dst)

    monkeypatch.setattr(files.os, "replace", disk_full)
    out = tmp_path / "reports"
    assert cli_main(["report", "--cells", str(evidence), "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "No space left on device" in err and "free some space" in err and len(err.splitlines()) == 1
    assert not (out / "study-cpu.md").exists() and not list(out.rglob("*.tmp"))  # nothing partial


def test_genft_eval_output_never_writes_through_a_planted_temporary_file(tiny_model, tmp_path):
    from genft.builtin import generate

    data = tmp_path / "data"
    generate(data, log=lambda *_: None)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "scores.json"
    (tmp_path / "scores.json.tmp").symlink_to(victim)  # a predictable name, planted by someone else
    rc = cli_main(["eval", "--model", tiny_model, "--tasks", "genft_sentiment_builtin_products", "--limit", "2",
                   "--data-dir", str(data), "--batch-size", "2", "--output", str(out)])
    assert rc == 0 and victim.read_text() == "precious"
    assert json.loads(out.read_text())["cells"][0]["n"] == 2


def test_an_edited_cell_record_is_detected_and_named(tmp_path):
    out = stored(tmp_path / "out", [record("sentiment", "amazon", "in", correct=[1, 0, 1, 1])])
    path = next((out / "cells").glob("*[0-9a-f].json"))
    raw = json.loads(path.read_text())
    assert raw["checksum"] == store.CellRecord.model_validate(raw).content_sha256()
    raw["metrics"]["acc_first"] = 1.0  # a better score, typed in; the key is untouched
    path.write_text(json.dumps(raw))
    rec, problem = snapshot.check_cell(out, raw["key"], None)
    assert rec is None and str(path) in problem and "edited after genft wrote it" in problem
    with pytest.raises(store.StoreError, match="edited after genft wrote it"):
        store.load_finished(out)


# ---------------------------------------------------------------- a killed Slurm driver cancels its jobs

DRIVER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from genft.suite import cluster
    from genft.suite.schema import ExecutorSection
    from genft.suite.units import Unit

    HERE = sys.argv[1]

    def slow_unit(suite_path, unit):
        Path(HERE, "job.pid").write_text(str(os.getpid()))
        time.sleep(120)
        return "finished"

    section = ExecutorSection(kind="slurm", cluster="local", poll_s=0.2, log_dir=str(Path(HERE, "logs")))
    ex = cluster.SlurmExecutor(section, unit_fn=slow_unit)
    ex.run_units(Path(sys.argv[1], "suite.yaml"), [Unit("evaluate", "tiny")], Path(sys.argv[1]), print)
""")


def test_a_killed_slurm_driver_cancels_its_submitted_jobs(tmp_path):
    pytest.importorskip("submitit")
    (tmp_path / "driver.py").write_text(DRIVER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    driver = subprocess.Popen([sys.executable, str(tmp_path / "driver.py"), str(tmp_path)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pid_file = tmp_path / "job.pid"
    try:
        deadline = time.time() + 120
        while not pid_file.is_file() and time.time() < deadline and driver.poll() is None:
            time.sleep(0.2)
        assert pid_file.is_file(), driver.communicate(timeout=30)[0][-3000:]
        job_pid = int(pid_file.read_text())
        driver.send_signal(signal.SIGTERM)
        output = driver.communicate(timeout=60)[0]
        assert "interrupted: cancelling 1 submitted jobs" in output, output[-3000:]
        deadline = time.time() + 30
        while time.time() < deadline and _alive(job_pid):
            time.sleep(0.2)
        assert not _alive(job_pid), "the job still runs after its driver was killed"
    finally:
        if driver.poll() is None:
            driver.kill()
        if pid_file.is_file() and _alive(int(pid_file.read_text())):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) is not running
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
