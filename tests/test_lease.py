"""One run of a date at a time: the lease of ``jobs/lease.py``, on the real local file system
through Spark's Hadoop API, and two real nightly processes started together."""
import datetime as dt
import getpass
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from salerank.conf import ConfigError
from salerank.jobs.cli import main
from salerank.jobs.lease import LeaseHeldError, LeaseLostError, hold, read_lease
from salerank.storage import FileSystem
from conftest import with_store

NAME = "nightly-run_date=2026-03-14"
# what a console must not show: the libraries' banners and warnings (they go to the log file)
NOISE = ("tensorflow", "oneDNN", "absl", "log4j", "WARN ", "alembic", "🏃", "py4j", "mlflow.store")
TIMINGS = {"timeout_seconds": 10.0, "heartbeat_seconds": 0.1, "poll_seconds": 0.05}


@pytest.fixture(scope="module")
def fast(config):
    """The test configuration with leases that beat and poll fast; the timeout leaves a live
    holder on a busy machine ample room (stale leases are planted with an old heartbeat)."""
    return {**config, "lease": TIMINGS}


@pytest.fixture(scope="module")
def conf_file(config, tmp_path_factory):
    """The test configuration's Spark and training settings, for the command line."""
    path = tmp_path_factory.mktemp("conf") / "small.yaml"
    path.write_text(yaml.safe_dump({key: config[key] for key in ("spark", "metamodel")}))
    return path


def lease_file(out, name=NAME):
    return out / "_leases" / f"{name}.json"


def plant(out, age_seconds=0.0, **fields):
    """Write a lease file as another run would have, its heartbeat ``age_seconds`` old."""
    beat = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=age_seconds)).isoformat()
    record = {"name": NAME, "owner": "someone", "host": "elsewhere.example", "pid": 4242,
              "command": "salerank nightly", "started": beat, "heartbeat": beat, "token": "theirs",
              **fields}
    lease_file(out).parent.mkdir(parents=True, exist_ok=True)
    lease_file(out).write_text(json.dumps(record))
    return record


@contextmanager
def held_elsewhere(spark, out, config, name=NAME):
    """The lease held by another thread during the block; setting the yielded event lets it go."""
    held, release = threading.Event(), threading.Event()

    def holder():
        with hold(spark, str(out), name, config):
            held.set()
            release.wait(60)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert held.wait(30)
        yield release
    finally:
        release.set()
        thread.join(30)


def attempt_elsewhere(spark, out, config, **kwargs):
    """Try to take the lease from another thread (a thread does not contend with itself);
    the exception it raised, or None."""
    outcome = []

    def attempt():
        try:
            with hold(spark, str(out), NAME, config, **kwargs):
                outcome.append(None)
        except Exception as err:  # returned to the test, which checks it
            outcome.append(err)

    thread = threading.Thread(target=attempt)
    thread.start()
    thread.join(30)
    assert outcome, "the attempt did not finish"
    return outcome[0]


def test_a_lease_is_held_for_the_block_and_released_after(spark, tmp_path, fast):
    with hold(spark, str(tmp_path), NAME, fast) as lease:
        record = json.loads(lease_file(tmp_path).read_text())
        assert record["token"] == lease.token and record["name"] == NAME
        assert (record["owner"], record["host"], record["pid"]) == (
            getpass.getuser(), socket.gethostname(), os.getpid())
        assert dt.datetime.fromisoformat(record["started"]).utcoffset() == dt.timedelta(0)
        assert dt.datetime.fromisoformat(record["heartbeat"]) >= dt.datetime.fromisoformat(record["started"])
    assert not lease_file(tmp_path).exists()


def test_a_lease_is_released_on_an_exception(spark, tmp_path, fast):
    with pytest.raises(KeyError):
        with hold(spark, str(tmp_path), NAME, fast):
            raise KeyError("the run failed")
    assert not lease_file(tmp_path).exists()
    assert attempt_elsewhere(spark, tmp_path, fast) is None  # free again


def test_a_second_holder_is_refused_and_told_who_holds_it(spark, tmp_path, fast):
    with hold(spark, str(tmp_path), NAME, fast) as first:
        err = attempt_elsewhere(spark, tmp_path, fast)
        assert json.loads(lease_file(tmp_path).read_text())["token"] == first.token
    assert isinstance(err, LeaseHeldError)
    message = str(err)
    for fact in (f"host {socket.gethostname()}", f"pid {os.getpid()}", f"owner {getpass.getuser()}",
                 f"started {first.record['started']}", "last heartbeat", "--wait", "lease.timeout_seconds"):
        assert fact in message


@pytest.mark.parametrize("age, taken", [(30.0, True), (0.0, False)])
def test_a_lease_is_taken_over_only_once_its_heartbeat_is_older_than_the_timeout(
        spark, tmp_path, fast, caplog, age, taken):
    plant(tmp_path, age_seconds=age)
    with caplog.at_level("WARNING", logger="salerank"):
        err = attempt_elsewhere(spark, tmp_path, fast)
    if taken:
        assert err is None
        assert "taking over the lease" in caplog.text and "elsewhere.example, pid 4242" in caplog.text
        assert not lease_file(tmp_path).exists()  # ours, released; theirs not put back
        assert os.listdir(tmp_path / "_leases") == []  # nothing left aside
    else:
        assert isinstance(err, LeaseHeldError) and "host elsewhere.example, pid 4242" in str(err)
        assert json.loads(lease_file(tmp_path).read_text())["token"] == "theirs"


@pytest.mark.skipif(not os.path.exists("/proc/self/ns/pid"), reason="needs Linux's /proc")
def test_a_lease_of_an_ended_process_on_this_host_is_taken_over_at_once(spark, tmp_path, fast):
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    plant(tmp_path, host=socket.gethostname(), pid=int(ended.stdout),
          pid_namespace=os.readlink("/proc/self/ns/pid"))
    assert attempt_elsewhere(spark, tmp_path, fast) is None
    plant(tmp_path, host=socket.gethostname(), pid=os.getpid(),  # alive: held
          pid_namespace=os.readlink("/proc/self/ns/pid"))
    assert isinstance(attempt_elsewhere(spark, tmp_path, fast), LeaseHeldError)


def test_an_unreadable_lease_is_held_until_its_file_is_older_than_the_timeout(spark, tmp_path, fast):
    lease_file(tmp_path).parent.mkdir(parents=True)
    lease_file(tmp_path).write_text('{"owner": "someone", "hea')  # cut short by a crash mid-rewrite
    err = attempt_elsewhere(spark, tmp_path, fast)
    assert isinstance(err, LeaseHeldError) and "unreadable" in str(err)
    old = time.time() - 30
    os.utime(lease_file(tmp_path), (old, old))
    assert attempt_elsewhere(spark, tmp_path, fast) is None


def test_of_contenders_for_a_dead_lease_exactly_one_takes_it(spark, tmp_path, fast):
    plant(tmp_path, age_seconds=60)
    start, done = threading.Barrier(4), threading.Event()
    outcomes = []

    def contend():
        start.wait()
        try:
            with hold(spark, str(tmp_path), NAME, fast):
                outcomes.append("held")
                done.wait(10)  # hold on until every other contender has tried
        except LeaseHeldError:
            outcomes.append("refused")

    threads = [threading.Thread(target=contend) for _ in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while len(outcomes) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    done.set()
    for thread in threads:
        thread.join(30)
    assert sorted(outcomes) == ["held", "refused", "refused", "refused"]


def test_exactly_one_of_concurrent_creates_wins(spark, tmp_path):
    files, path = FileSystem(spark, str(tmp_path)), str(tmp_path / "one")
    start, won = threading.Barrier(8), []

    def create(i):
        start.wait()
        if files.create_new(path, f"writer {i}".encode()):
            won.append(i)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(won) == 1 and (tmp_path / "one").read_text() == f"writer {won[0]}"


class ReleaseOnceWaiting(logging.Handler):
    """Lets the holder go once the waiter has said whom it waits for (a timer could fire
    before the waiter first looks, on a busy machine)."""

    def __init__(self, release: threading.Event):
        super().__init__()
        self.let_go, self.said = release, []  # not .release: a Handler's lock method

    def emit(self, record):
        if record.getMessage().startswith("waiting for the lease"):
            self.said.append(record.getMessage())
            self.let_go.set()


def test_wait_returns_once_the_holder_releases(spark, tmp_path, fast, caplog):
    with held_elsewhere(spark, tmp_path, fast) as release, caplog.at_level("INFO", logger="salerank"):
        waiting = ReleaseOnceWaiting(release)
        logging.getLogger("salerank").addHandler(waiting)
        try:
            with hold(spark, str(tmp_path), NAME, fast, wait=True) as lease:
                assert release.is_set()  # not before the holder let go
                assert json.loads(lease_file(tmp_path).read_text())["token"] == lease.token
        finally:
            logging.getLogger("salerank").removeHandler(waiting)
    assert len(waiting.said) == 1 and f"pid {os.getpid()}" in waiting.said[0]  # said once, not every poll


def test_the_heartbeat_advances_and_the_file_never_disappears(spark, tmp_path, fast):
    files = FileSystem(spark, str(tmp_path))
    with hold(spark, str(tmp_path), NAME, fast) as lease:
        first = dict(lease.record)
        beats, deadline = set(), time.monotonic() + 0.6
        while time.monotonic() < deadline:
            assert lease_file(tmp_path).exists()  # rewritten in place, never removed
            holder = read_lease(files, str(lease_file(tmp_path)))
            if holder.record is not None:  # read again by read_lease when caught mid-rewrite
                assert holder.record["started"] == first["started"]
                beats.add(holder.record["heartbeat"])
    assert len(beats) >= 3 and max(beats) > first["heartbeat"]


def test_only_the_holder_deletes_its_lease(spark, tmp_path, fast, caplog):
    with caplog.at_level("ERROR", logger="salerank"):
        with hold(spark, str(tmp_path), NAME, fast) as lease:
            plant(tmp_path)  # another run took it over while this one looked dead
            deadline = time.monotonic() + 10
            while not lease.lost and time.monotonic() < deadline:
                time.sleep(0.02)
            assert lease.lost
    assert json.loads(lease_file(tmp_path).read_text())["token"] == "theirs"  # neither deleted nor rewritten
    assert "was taken over by owner someone on host elsewhere.example" in caplog.text


def test_a_run_that_lost_its_lease_publishes_nothing(spark, tmp_path, fast):
    """The lease vanished (taken over, and released since by the run that took it): this run's
    commit refuses to start, and nothing of the night appears."""
    from salerank.jobs.publish import Night

    day = dt.date(2026, 3, 14)
    with hold(spark, str(tmp_path), NAME, fast) as lease:
        night = Night(spark, str(tmp_path), day, guard=lease.check)
        night.write_parquet(spark.range(3), "recommendations")
        lease_file(tmp_path).unlink()
        deadline = time.monotonic() + 10
        while not lease.lost and time.monotonic() < deadline:
            time.sleep(0.02)
        with pytest.raises(LeaseLostError, match="lost its lease"):
            night.commit({})
        night.abandon()
    assert not (tmp_path / "recommendations").exists() and not (tmp_path / "manifests").exists()


def test_a_thread_may_take_its_own_lease_again(spark, tmp_path, fast):
    with hold(spark, str(tmp_path), NAME, fast) as outer:
        with hold(spark, str(tmp_path), NAME, fast) as inner:
            assert inner is outer
        assert lease_file(tmp_path).exists()  # only the outermost block releases it
    assert not lease_file(tmp_path).exists()


def test_a_heartbeat_not_well_inside_the_timeout_is_refused(spark, tmp_path, config):
    slow_beat = {**config, "lease": {**TIMINGS, "heartbeat_seconds": 6.0}}
    with pytest.raises(ConfigError, match="heartbeat_seconds"):
        with hold(spark, str(tmp_path), NAME, slow_beat):
            pass
    assert not lease_file(tmp_path).exists()


def test_the_command_line_exits_2_naming_the_holder(spark, world, world_dir, config, conf_file,
                                                   tmp_path, capsys):
    out = tmp_path / "out"
    with held_elsewhere(spark, out, config, f"nightly-run_date={world.last_date}"):
        code = main(["nightly", "--data", str(world_dir / "data"), "--date", str(world.last_date),
                     "--out", str(out), "--conf", str(conf_file)])
    assert code == 2
    error = capsys.readouterr().err
    assert "salerank nightly: error: " in error and f"pid {os.getpid()}" in error
    assert not (out / "_staging").exists()  # stopped before staging anything


@pytest.mark.slow
def test_two_runs_of_a_date_started_together_one_publishes_the_other_exits_2(
        spark, world, world_dir, config, trained, tmp_path):
    out, night = tmp_path / "out", f"run_date={world.last_date}"
    conf = tmp_path / "store.yaml"  # the suite's champion, in the shared training's store
    conf.write_text(yaml.safe_dump({**{key: config[key] for key in ("spark", "metamodel")},
                                    "mlflow": with_store(config, trained[1])["mlflow"]}))
    command = [sys.executable, "-m", "salerank.jobs.cli", "nightly", "--data", str(world_dir / "data"),
               "--date", str(world.last_date), "--out", str(out), "--conf", str(conf)]
    logs = [(tmp_path / f"job{i}.out", tmp_path / f"job{i}.err") for i in range(2)]
    jobs = []
    try:
        for stdout, stderr in logs:
            with open(stdout, "w") as o, open(stderr, "w") as e:
                jobs.append(subprocess.Popen(command, stdout=o, stderr=e, start_new_session=True))
        codes = [job.wait(timeout=900) for job in jobs]
    finally:
        for job in jobs:  # never leave a Python or its JVM behind
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGKILL)
                job.wait()
    errors = [stderr.read_text() for _, stderr in logs]
    assert sorted(codes) == [0, 2], errors
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    refusal = errors[loser]
    assert "Traceback" not in refusal
    assert "salerank nightly: error: " in refusal and "is held by another run" in refusal
    assert f"host {socket.gethostname()}, pid {jobs[winner].pid}" in refusal and "--wait" in refusal
    # the winner's console, a whole night (photos, Spark, MLflow): salerank's lines only, the rest
    # in the log file it names at the end
    console = errors[winner] + logs[winner][0].read_text()
    for line in ("salerank: stage images ...", "salerank: stage score done in", "salerank: stage publish done in"):
        assert line in errors[winner], console
    assert re.search(r"salerank: \d+ of [1-9]\d* photos to tag", errors[winner]), console
    for noise in NOISE:
        assert noise not in console, (noise, console)
    named = re.search(r"salerank: details in (\S+)\s*$", errors[winner])
    assert named and named.group(1).startswith(str(out / "logs" / "salerank-nightly-")), console
    assert named.group(1).endswith(f"-{jobs[winner].pid}.log")  # its own, not the loser's
    details = Path(named.group(1)).read_text(encoding="utf-8")
    assert "WARN " in details and "stage publish done in" in details  # the JVM's lines and salerank's

    manifest = json.loads((out / "manifests" / night / "manifest.json").read_text())
    assert (out / "manifests" / night / "_SUCCESS").exists()
    rows = spark.read.parquet(str(out / "recommendations" / night)).count()
    assert rows == manifest["outputs"][f"recommendations/{night}"]["rows"] > 0
    assert f"{rows} recommendations" in logs[winner][0].read_text()
    assert not list((out / "_staging").iterdir())
    assert not lease_file(out, f"nightly-{night}").exists()  # released by the winner
