"""The nightly pipeline for cron (DESIGN §4.7): preprocess -> train -> index -> score
(publishes) -> evaluate, each stage its own job process.

* **Lock.** An exclusive ``flock`` on ``nightly.lock_file``: a second run exits at once
  with :data:`EXIT_LOCKED` and names the holder. The stage processes inherit the locked
  file, so even a stage orphaned by a killed nightly keeps the lock until it ends; the
  kernel drops it when the last holder dies, so a crash never leaves a stale lock.
* **Stages.** Spark stages run with ``spark-submit`` (plus ``nightly.spark_submit_args``),
  the others with this Python. The score stage's driver JVM also gets
  ``nightly.score_java_options`` (the quick JIT tier only) and, when
  ``nightly.class_archive`` names one, a class-data sharing archive
  (:func:`class_archive_flags`). Every stage gets the nightly's resolved configuration as a
  TOML file, so ``--set`` overrides reach all of them. Training is skipped while the
  latest model is younger than ``nightly.max_model_age_hours`` (counted from the start
  of its training, with an hour's slack), tonight's catalog is the one it embeds and
  it was trained with tonight's ``[split]``/``[model]``/``[train]`` settings
  (:func:`train_skip`; ``--force-train`` trains anyway); the index and the evaluation
  are made once per model, and again when their own settings change (:func:`made_skip`).
* **Exit codes.** 0 ok; :data:`EXIT_LOCKED` another run holds the lock; ``10 + n`` stage
  ``n`` failed (11 preprocess, 12 train, 13 index, 14 score, 15 evaluate) — the stage's
  own exit code (2 config, 3 input data, 4 artifact, 5 catalog, 6 Spark did not start,
  1 other) is in the log and summary. A stage still running after
  ``nightly.stage_timeout_hours`` is stopped and fails the night the same way, so that a
  hung stage does not hold the lock against every later night.
* **Logs and summary.** One log file per run in ``nightly.log_dir`` with every stage's
  output; a summary (per-stage status, timings, counts, metrics, where the tables are)
  printed at the end and written to ``<root>/nightly/<run_id>/summary.json``.
* **Retention.** After a night that succeeds, old runs, summaries and logs beyond
  ``nightly.keep_runs`` are removed, never a run still in use (:mod:`recsys.retention`);
  a failed night keeps everything.

A stage that fails or is killed leaves the published tables as they were (publishing is
atomic per table, :mod:`recsys.publish.tables`); the next run starts from the top.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Mapping

from recsys import artifacts, io
from recsys.config import Config, ConfigError, dump_toml
from recsys.spark import (
    LOG4J_CONF, ScratchDir, check_exec, java_tmpdir_set, local_master, scratch_env,
    scratch_root, spark_home_problem)

REPO = Path(__file__).resolve().parents[1]
JOBS = REPO / "jobs"
EXIT_LOCKED = 10
EXIT_STAGE_BASE = 10
EXIT_INTERRUPTED = 130
STAGES = ("preprocess", "train", "index", "score", "evaluate")


class LockedError(RuntimeError):
    """Another nightly run holds the lock."""


@dataclass
class StageResult:
    name: str
    status: str  # ok | skipped | failed | not run
    wall_s: float = 0.0
    exit_code: int | None = None
    run_id: str | None = None
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class NightlyResult:
    run_id: str
    run_date: str
    exit_code: int
    log_file: str
    stages: list[StageResult]
    summary_uri: str = ""
    #: What retention removed after the night (recsys.retention), or why it did not run.
    pruned: dict[str, Any] = field(default_factory=dict)
    #: The signal that stopped the run ("SIGTERM", "SIGINT"), "" when none came.
    stopped_by: str = ""
    #: Why the log file stops short (its disk filled up), "" when it is whole.
    log_lost: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "run_date": self.run_date, "exit_code": self.exit_code,
                "stopped_by": self.stopped_by, "log_file": self.log_file,
                "log_lost": self.log_lost,
                "stages": [s.__dict__ for s in self.stages], "pruned": self.pruned}


class Lock:
    """An exclusive, non-blocking ``flock`` on a local file, held for the whole run."""

    def __init__(self, path: str, *, setting: str = "nightly.lock_file") -> None:
        self.path = path
        self.setting = setting  # the configuration key that placed it, for errors
        self.fd: int | None = None

    def __enter__(self) -> "Lock":
        try:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(
                f"cannot open the lock file {self.path} ({exc.strerror or exc}): set "
                f"{self.setting} to a writable local path") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise LockedError(f"another nightly run holds {self.path} ({holder}); "
                              "not starting a second one") from None
        try:  # who holds it, for the next run's message; the flock is the lock
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()}, started {_now()}\n".encode())
        except OSError:
            pass
        os.set_inheritable(fd, True)
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)  # the lock goes with the last process holding the file
            self.fd = None


def log_header(run_id: str, run_date: str, root: str, log_file: str) -> str:
    """A night's first log line (after the time stamp): its run, date, artifact root and
    log file. Retention reads the root back (:func:`log_root`), so that a log directory
    that nightlies of several artifact roots share keeps each root's logs."""
    return f"run {run_id}: run_date={run_date}, artifacts {root}, log {log_file}"


def log_root(first_line: str, run_id: str) -> str | None:
    """The artifact root that :func:`log_header` wrote in ``first_line`` of run
    ``run_id``'s log, or None when the line is not such a header (an empty log, one whose
    disk was full, another program's file)."""
    found = re.fullmatch(rf"\[nightly [^\]]*\] run {re.escape(run_id)}: run_date=[^,]*, "
                         r"artifacts (.+), log .+", first_line.rstrip("\r\n"))
    return found.group(1) if found else None


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _latest(root: str, stage: str) -> dict[str, Any] | None:
    try:
        return artifacts.read_manifest(artifacts.resolve(root, stage))
    except artifacts.ArtifactError:
        return None


def made_skip(root: str, stage: str, config: Config) -> tuple[str, str]:
    """(why tonight's ``index`` or ``evaluate`` stage is skipped, or ""; a note, or "").
    Each is made once per model: skipped when its latest run was made for the latest
    model with tonight's ``[index]`` / ``[evaluate]`` settings. With other settings it
    runs again, saying which (a new ``index.similar_movies``, an ALS grid), rather than
    wait for the next model."""
    train, made = _latest(root, "train"), _latest(root, stage)
    if not (train and made) or made.get("inputs", {}).get("model_version") != train["run_id"]:
        return "", ""  # none yet, or made for an older model
    model, run = train["run_id"], made["run_id"]
    changed = config_change(made, config, (stage,))
    if changed:
        what = "index" if stage == "index" else "evaluation"
        return "", (f"tonight's configuration differs from the latest {what}'s in "
                    f"{_some(changed, 4)}: it is made again for model {model}")
    if stage == "index":
        return f"index {run} is built for model {model}", ""
    # A model is evaluated on the preprocess run it was trained on: again the same
    # figures, so once per model.
    return f"model {model} is evaluated by run {run}", ""


def _run_dir(root: str, manifest: dict[str, Any]) -> str:
    return artifacts.stage_dir(root, manifest["stage"], manifest["run_id"])


def model_age_hours(train: dict[str, Any] | None) -> float | None:
    """Hours since the train run of manifest ``train`` *started*; None without one.

    Counted from the start, not the end: a model trained at 02:20 after a 25-minute
    training run is 24 h old at 02:20 the next night, when the next nightly reaches its
    train stage; counted from 02:45 it would be 23.6 h old, and a daily nightly with
    ``max_model_age_hours = 24`` would retrain every other night only. (Runs written
    before manifests had ``started_at`` are counted from ``finished_at``.)"""
    stamp = train and (train.get("started_at") or train.get("finished_at"))
    if not stamp:
        return None
    started = dt.datetime.fromisoformat(stamp)
    return (dt.datetime.now(dt.timezone.utc) - started).total_seconds() / 3600


#: How far in the future a model may have started by this machine's clock and still be
#: taken as new: clocks of two machines (or one set by NTP) disagree by seconds.
CLOCK_SLACK_HOURS = 0.05


def age_slack_hours(max_age_hours: float) -> float:
    """How much younger than ``max_age_hours`` a model may be and still be retrained: one
    hour (a tenth of the age for ages under 10 h). A nightly that starts at the same time
    each day does not reach its train stage at the same second: cron starts it a few
    seconds late or early, and preprocessing takes a little more or less time than the
    night before. Without the slack, a model trained 23 h 59 min ago is kept by
    ``max_model_age_hours = 24``, and a daily nightly retrains every other night."""
    return min(1.0, max_age_hours / 10)


def catalog_change(root: str, train: dict[str, Any], prep: dict[str, Any]
                   ) -> tuple[list[int], list[int]]:
    """(movie ids of the catalog of the preprocess run ``prep`` (its manifest) that the
    model of the train run ``train`` has no embedding for, movie ids the model has that
    the catalog no longer holds), each sorted."""

    def ids(manifest: dict[str, Any], table: str) -> set[int]:
        uri = io.join(_run_dir(root, manifest), table)
        return set(io.read_parquet(uri, columns=["movie_id"]).column("movie_id").to_pylist())

    catalog, model = ids(prep, "movies"), ids(train, "movie_embeddings")
    return sorted(catalog - model), sorted(model - catalog)


#: The configuration sections that make a model: tonight's values against the latest
#: model's decide whether a young model is retrained (:func:`config_change`).
MODEL_SECTIONS = ("split", "model", "train")
#: Keys of those sections that do not change the trained model.
NOT_THE_MODEL = frozenset({"train.tensorboard", "train.eval_batch_size",
                           "train.min_recall_vs_popular"})


def config_change(run: dict[str, Any], config: Config,
                  sections: tuple[str, ...] = MODEL_SECTIONS) -> list[str]:
    """``"section.key (was, now)"`` for each key of ``sections`` on which ``config``
    differs from the configuration of the run whose manifest is ``run`` (a train run: the
    sections that make a model). A key the run does not have (written by an older
    version) counts as changed."""
    was = run.get("config") or {}
    now = json.loads(json.dumps(config.to_dict()))  # tuples as the manifest's lists
    changed = []
    for section in sections:
        for key, value in now[section].items():
            name = f"{section}.{key}"
            old = (was.get(section) or {}).get(key, "absent")
            if name not in NOT_THE_MODEL and old != value:
                changed.append(f"{name} ({json.dumps(old)}, now {json.dumps(value)})")
    return changed


PREPROCESS_SECTIONS = ("data", "split", "preprocess")


def preprocess_skip(root: str, config: Config) -> str:
    """Why tonight's preprocessing is skipped (``nightly.skip_unchanged_release``), or "":
    the latest preprocess run read this very release (``data.input``; the same files by
    size and MD5) with tonight's ``[data]``, ``[split]`` and ``[preprocess]`` settings, and
    rejected no rating as from the future (a bound that moves with the night). Anything
    that cannot be compared runs the stage, which says what is wrong."""
    from recsys.data.release import open_release

    prep = _latest(root, "preprocess")
    if prep is None or config_change(prep, config, PREPROCESS_SECTIONS):
        return ""
    inputs = prep.get("inputs", {})
    by_reason = prep.get("counts", {}).get("rows_by_reason", {})
    if any(c.get("timestamp_out_of_range") for c in by_reason.values()):
        return ""
    try:
        release = open_release(config.data.input, work_uri=root, layout=config.data.layout)
        if release.source != inputs.get("source") or release.checksums() != inputs.get("files"):
            return ""
    except Exception:  # noqa: BLE001 (the stage itself reports what is wrong with the input)
        return ""
    return (f"tonight's release is the one preprocess run {prep['run_id']} read (the same "
            "files by size and MD5, the same settings); nightly.skip_unchanged_release")


def _movies(ids: list[int]) -> str:
    return f"{len(ids)} movie" + ("s" if len(ids) != 1 else "")


def _some(ids: list[Any], n: int = 5) -> str:
    shown = ", ".join(str(i) for i in ids[:n])
    return shown + (", ..." if len(ids) > n else "")


def train_skip(root: str, max_age_hours: float, *, retrain_on_catalog_change: bool = True,
               config: Config | None = None) -> tuple[str, str]:
    """(why tonight's training is skipped, or ""; a note for the log, or "").

    Training is skipped while the latest model is younger than ``max_age_hours`` less
    :func:`age_slack_hours`, unless tonight's catalog holds movies the model has no
    embedding for (or lacks movies it has): those could never be recommended, or gone
    movies would be, until the next training, so the model is retrained
    (``retrain_on_catalog_change``; when off, the reason to skip says how many wait).
    An ``mf`` model is always retrained when tonight's histories have users it has no
    embedding for (:func:`recsys.model.serving.users_without_embedding`): scoring would
    refuse it. So is a model trained with other ``split``, ``model`` or ``train``
    settings than tonight's ``config`` (:func:`config_change`): a changed configuration
    would otherwise take effect only once the model aged out, and the night would say
    nothing of it.
    A model that started in the future by this machine's clock has no age that can be
    trusted (the clock was set back, or the run came from a machine whose clock was
    ahead): it is retrained rather than kept until the clock catches up, months later
    perhaps."""
    train = _latest(root, "train")
    age = model_age_hours(train)
    if train is None or age is None or age >= max_age_hours - age_slack_hours(max_age_hours):
        return "", ""
    if age < -CLOCK_SLACK_HOURS:
        return "", (f"the latest model started {-age:.1f} h from now by this machine's "
                    "clock (a clock set back since?): its age is unknown, so it is retrained")
    skip = (f"latest model is {max(age, 0.0):.1f} h old (< nightly.max_model_age_hours = "
            f"{max_age_hours:g}); --force-train to retrain")
    changed = config_change(train, config) if config is not None else []
    if changed:
        return "", (f"tonight's configuration differs from the latest model's in "
                    f"{_some(changed, 4)}: the model is retrained")
    prep = _latest(root, "preprocess")
    if prep is None or train.get("inputs", {}).get("preprocess_run") == prep["run_id"]:
        return skip, ""  # trained on tonight's run: its catalog and users are the model's
    from recsys.model.serving import users_without_embedding

    try:
        new, gone = catalog_change(root, train, prep)
        users = users_without_embedding(_run_dir(root, train),
                                        io.join(_run_dir(root, prep), "histories")).tolist()
    except (OSError, ValueError, artifacts.ArtifactError) as exc:
        return "", (f"could not compare tonight's catalog and users with the latest "
                    f"model's ({exc}): it is retrained")
    if users:  # not a choice: scoring refuses the model
        return "", (f"tonight's histories have {len(users)} user"
                    f"{'s' if len(users) != 1 else ''} the latest model (mf: one embedding "
                    f"per user id) has no embedding for ({_some(users)}): the model is "
                    "retrained")
    if not (new or gone):
        return skip, ""
    change = []
    if new:
        change.append(f"has {_movies(new)} the latest model has no embedding for "
                      f"({_some(new)})")
    if gone:
        change.append(f"lacks {_movies(gone)} of the latest model's ({_some(gone)})")
    said = "tonight's catalog " + " and ".join(change)
    if retrain_on_catalog_change:
        return "", f"{said}: the model is retrained"
    return (f"{skip}; {said}, and stays so until the next training "
            "(nightly.retrain_on_catalog_change = false)"), ""


class Runner:
    """Runs the stage commands, streaming their output into the run's log file."""

    def __init__(self, log: IO[str], pass_fds: tuple[int, ...] = (),
                 echo: Callable[[str], None] = lambda line: print(line, flush=True), *,
                 grace_s: float = 60) -> None:
        self.log = log
        self.grace_s = grace_s  # nightly.stop_grace_seconds: SIGTERM, then SIGKILL
        self.pass_fds = pass_fds  # the lock and the scratch directory's: stages hold them too
        self.echo = echo
        self.child: subprocess.Popen | None = None
        self.stopped_by = ""  # the first SIGTERM / SIGINT received, by name
        self.log_lost = ""  # why the log file could not be written (e.g. a full disk)
        self.timed_out = False  # the running stage passed nightly.stage_timeout_hours
        self._writing = threading.Lock()  # the time limit's note comes from its own thread

    def _log(self, text: str) -> bool:
        """Append to the run's log file; once that fails (a full disk), say so on the
        console, where every later line then goes too: the night goes on, its output kept."""
        if self.log_lost:
            return False
        try:
            with self._writing:
                self.log.write(text)
                self.log.flush()
            return True
        except OSError as exc:
            self.log_lost = exc.strerror or str(exc)
            self.echo(f"[nightly {_now()}] cannot write the log file "
                      f"{getattr(self.log, 'name', '')} ({self.log_lost}): the rest of this "
                      "run's output, its stages' included, comes here instead")
            return False

    def stop(self, signum: int) -> None:
        """The nightly's SIGTERM / SIGINT handler. A running stage is stopped (its whole
        process group) and :meth:`run` raises KeyboardInterrupt; between stages the run
        only notes the signal and stops before the next stage, so that its summary is
        still written."""
        if not self.stopped_by:
            self.stopped_by = signal.Signals(signum).name
            self.note(f"received {self.stopped_by}: stopping"
                      + (" the running stage" if self.child is not None else ""))
        if self.child is not None:
            self.stop_child()
            raise KeyboardInterrupt

    def note(self, text: str) -> None:
        line = f"[nightly {_now()}] {text}"
        self._log(line + "\n")
        self.echo(line)

    def run(self, cmd: list[str], env: dict[str, str], *, limit_hours: float = 0
            ) -> tuple[int, list[str]]:
        """Run one stage to its end; with ``limit_hours`` (> 0) a stage still running
        then is stopped as by :meth:`stop_child`, and :attr:`timed_out` says so."""
        if not self._log(f"$ {shlex.join(cmd)}\n"):
            self.echo(f"$ {shlex.join(cmd)}")
        tail: list[str] = []
        self.timed_out = False
        if self.stopped_by:
            raise KeyboardInterrupt
        self.child = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            errors="replace", start_new_session=True,
            pass_fds=self.pass_fds)
        if self.stopped_by:  # the signal came while it started
            self.stop_child()
            raise KeyboardInterrupt
        timer = None
        if limit_hours > 0:
            timer = threading.Timer(limit_hours * 3600, self._time_out,
                                    args=(self.child, limit_hours))
            timer.daemon = True
            timer.start()
        try:
            assert self.child.stdout is not None
            for line in self.child.stdout:
                if not self._log(line):
                    self.echo(line.rstrip("\n"))
                if not _STACK_FRAME.match(line):  # a JVM's stack would push its message out
                    tail = (tail + [line.rstrip()])[-15:]
            code = self.child.wait()
        finally:
            if timer is not None:
                timer.cancel()
                timer.join()  # one that fired stops the rest of the stage's process group
        self.child = None
        return code, tail

    def _time_out(self, child: subprocess.Popen, limit_hours: float) -> None:
        """``nightly.stage_timeout_hours`` reached (the timer's thread): the stage goes
        the way a SIGTERM to the nightly would stop it, and the night fails there."""
        if child is not self.child or child.poll() is not None:
            return  # it ended as the limit came
        self.timed_out = True
        self.note(f"the running stage passed nightly.stage_timeout_hours = {limit_hours:g}: "
                  f"stopping it (SIGTERM; SIGKILL {self.grace_s:g} s later)")
        self.stop_child()

    def stop_child(self) -> None:
        """SIGTERM the running stage's process group; SIGKILL it after :attr:`grace_s` if
        any of it is left. Waits, so that the stage no longer holds the lock when the nightly
        exits. The whole group counts, not only its leader: under ``spark-submit`` the job's
        Python process is a child of the driver JVM, which exits at once on SIGTERM, while
        the Python process may sit in a read that does not return to the interpreter (a
        pipe, a hung mount) and never run its SIGTERM handler."""
        child = self.child
        if child is None or child.poll() is not None:
            return
        group = child.pid  # start_new_session: the stage leads its own process group
        try:
            os.killpg(group, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + self.grace_s
        while time.monotonic() < deadline:
            if child.poll() is not None and not _group_alive(group):
                return
            time.sleep(0.2)
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            return
        try:
            child.wait(timeout=max(self.grace_s, 10))
        except subprocess.TimeoutExpired:  # in the kernel (a hung mount): nothing more to do
            pass


def _group_alive(group: int) -> bool:
    """Whether any process of the process group is left."""
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # one is left, as another user
        return True
    return True


@contextmanager
def _open_log(path: str) -> Iterator[IO[str]]:
    """The run's log file, in ``nightly.log_dir`` (created when missing)."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        log = open(path, "a", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write the run's log {path} ({exc.strerror or exc}): set "
                          "nightly.log_dir to a writable local directory") from None
    try:
        yield log
    finally:
        try:
            log.close()
        except OSError:  # what a full disk did not take: said when it happened (Runner._log)
            pass


@contextmanager
def _scratch(config: Config) -> Iterator[ScratchDir]:
    """The run's own directory for its configuration and its stages' Spark scratch,
    removed when the run ends; a run killed outright leaves it to the next job's sweep."""
    scratch = ScratchDir(config.spark)
    try:
        yield scratch
    finally:
        scratch.remove()


def _given_master(args: list[str]) -> str | None:
    """The ``--master X`` or ``--master=X`` among spark-submit arguments, if any."""
    for i, arg in enumerate(args):
        if arg == "--master" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--master="):
            return arg.split("=", 1)[1]
    return None


def _stages_in_scratch(config: Config, env: Mapping[str, str]) -> bool:
    """Whether the stages' Spark keeps its files in the run's scratch directory: a local
    master's, unless the user chose its directories (``SPARK_LOCAL_DIRS``)."""
    return local_master(stage_master(config)) and "SPARK_LOCAL_DIRS" not in env


def stage_master(config: Config) -> str:
    """The master the Spark stages run on: ``nightly.spark_submit_args``' ``--master``,
    else ``spark.master``."""
    return _given_master(shlex.split(config.nightly.spark_submit_args)) or config.spark.master


def _stage_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    env.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    env["TF_USE_LEGACY_KERAS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


#: A line of a Java stack trace ("\tat org...", "\t... 12 more", "Caused by" is kept).
_STACK_FRAME = re.compile(r"^\s+(at |\.\.\. \d+ more)")


def _failure_reason(tail: list[str], job: str) -> str:
    """The line that says why a stage failed: the job's own error line, else the last
    exception or error message (spark-submit's, the JVM's), else the last line."""
    said = next((ln for ln in reversed(tail) if f"{job}:" in ln), None)
    if said is None:
        said = next((ln for ln in reversed(tail) if "Exception" in ln or "Error" in ln), None)
    return said if said is not None else (tail[-1] if tail else "")


def _spark_submit(config: Config) -> str:
    """The spark-submit the Spark stages run: ``nightly.spark_submit``, or the one next to
    this Python; checked before the night starts."""
    given = config.nightly.spark_submit
    path = given or str(Path(sys.executable).parent / "spark-submit")
    if shutil.which(path) is None:
        raise ConfigError(
            f"spark-submit not found or not executable: {path} ("
            + ("nightly.spark_submit" if given else "none next to this Python: install "
               "pyspark in this environment, or set nightly.spark_submit") + ")")
    if not given and (problem := spark_home_problem()) is not None:
        raise ConfigError(f"this environment's spark-submit would start another Spark: "
                          f"{problem}")
    return path


def stage_commands(config: Config, conf_file: str, run_date: str, run_id: str
                   ) -> dict[str, list[str]]:
    """The command line of every stage, as cron would type it."""
    n = config.nightly
    spark_submit = _spark_submit(config)
    submit = [spark_submit, *shlex.split(n.spark_submit_args)]
    if _given_master(submit) is None:
        submit += ["--master", config.spark.master]
    if "--driver-memory" not in submit:
        submit += ["--driver-memory", config.spark.driver_memory]
    java = [f"-Dlog4j2.configurationFile={LOG4J_CONF}"] if LOG4J_CONF.is_file() else []
    score_submit = list(submit)
    if "--driver-java-options" not in submit:  # else the user's options stand, unchanged
        score_java = [*java, *shlex.split(n.score_java_options),
                      *(class_archive_flags(n.class_archive) if n.class_archive else [])]
        if java:
            submit += ["--driver-java-options", " ".join(java)]
        if score_java:
            score_submit += ["--driver-java-options", " ".join(score_java)]
    common = ["--conf-file", conf_file, "--artifact-root", config.artifact_root]
    return {
        "preprocess": [*submit, str(JOBS / "preprocess.py"), *common],
        "train": [sys.executable, str(JOBS / "train.py"), *common],
        "index": [sys.executable, str(JOBS / "build_index.py"), *common],
        "score": [*score_submit, str(JOBS / "score_all_users.py"), *common, "--run-date",
                  run_date, "--run-id", run_id],
        "evaluate": [*submit, str(JOBS / "evaluate.py"), *common, "--run-id", run_id],
    }


def class_archive_flags(path: str) -> list[str]:
    """A JVM's flags for the class-data sharing archive at ``path`` (JDK 13+ AppCDS): map
    the archive when it exists, else write it when the JVM exits (its directory is made
    here). An archive that no longer matches the JDK or the classpath is ignored by the
    JVM with a warning."""
    path = os.path.abspath(path)
    if os.path.isfile(path):
        return [f"-XX:SharedArchiveFile={path}"]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return [f"-XX:ArchiveClassesAtExit={path}"]


def _details(root: str, stage: str) -> tuple[str | None, dict[str, Any]]:
    """The run id and the figures worth a line in the summary, from the stage's manifest."""
    m = _latest(root, stage)
    if m is None:
        return None, {}
    keep: dict[str, Any] = {}
    if stage == "preprocess":
        keep = {"counts": m.get("counts", {})}
    elif stage == "train":
        validation = m.get("metrics", {}).get("validation", {})
        keep = {"validation": validation.get("model", validation)}
    elif stage == "index":
        keep = {"recall": m.get("recall", {})}
    elif stage == "score":
        keep = {"counts": m.get("counts", {}), "tables": m.get("tables", {}),
                "table_root": m.get("table_root"), "expired": m.get("expired")}
    elif stage == "evaluate":
        keep = {"report": m.get("report"), "headline": m.get("headline", {})}
    return m.get("run_id"), keep


def run_nightly(config: Config, *, run_date: str | None = None, force_train: bool = False,
                run_id: str | None = None,
                echo: Callable[[str], None] = lambda line: print(line, flush=True)
                ) -> NightlyResult:
    """Run the pipeline once under the lock; never raises for a failed stage."""
    n = config.nightly
    run_id = run_id or artifacts.new_run_id()
    run_date = artifacts.run_date(run_date, timezone=config.score.run_date_timezone)
    root = io.normalize_uri(config.artifact_root)
    if n.evaluate and config.model.kind != "history":  # else every night failed at the end
        raise ConfigError(
            f"nightly.evaluate = true cannot evaluate a model.kind = {config.model.kind!r} "
            "model: the evaluation embeds its held-out users from their histories, which "
            "only a 'history' model can do; set nightly.evaluate = false")
    _spark_submit(config)  # a night that cannot start its Spark stages is not begun
    artifacts.check_writable(root, "nightly")  # nor one whose stages could keep nothing
    if _stages_in_scratch(config, os.environ) and not java_tmpdir_set(os.environ):
        check_exec(scratch_root(config.spark))  # the stages' JVMs' temporary directory
    lock_path = n.lock_file or os.path.join(n.log_dir, "nightly.lock")
    log_file = os.path.abspath(os.path.join(n.log_dir, f"nightly-{run_id}.log"))
    lock = Lock(lock_path, setting="nightly.lock_file" if n.lock_file else "nightly.log_dir")
    with lock, _open_log(log_file) as log, _scratch(config) as scratch:
        assert lock.fd is not None and scratch.fd is not None
        runner = Runner(log, (lock.fd, scratch.fd), echo,
                        grace_s=config.nightly.stop_grace_seconds)
        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
        for s in previous:
            signal.signal(s, lambda signum, _frame: runner.stop(signum))
        try:
            return _run_stages(config, runner, run_id, run_date, root, force_train, log_file,
                               scratch.path)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def _run_stages(config: Config, runner: Runner, run_id: str, run_date: str, root: str,
                force_train: bool, log_file: str, scratch: str) -> NightlyResult:
    n = config.nightly
    conf_file = os.path.join(scratch, "config.toml")
    with io.names_storage_errors(f"{conf_file} (spark.scratch_dir)"), \
            open(conf_file, "w", encoding="utf-8") as fh:
        fh.write(dump_toml(config.replace(artifact_root=root)))
    commands = stage_commands(config.replace(artifact_root=root), conf_file, run_date, run_id)
    env = _stage_env()
    if _stages_in_scratch(config, env):
        env.update(scratch_env(scratch, env))  # every stage's Spark files, removed at the end
    results: list[StageResult] = []
    exit_code = 0
    runner.note(log_header(run_id, run_date, root, log_file))
    for number, stage in enumerate(STAGES, start=1):
        if runner.stopped_by and not exit_code:  # the signal came between two stages
            runner.note(f"{stage}: not started ({runner.stopped_by})")
            exit_code = EXIT_INTERRUPTED
        if exit_code:
            results.append(StageResult(stage, "not run"))
            continue
        skip = note = ""
        if stage == "preprocess" and n.skip_unchanged_release:
            skip = preprocess_skip(root, config)
        if stage == "train" and not force_train and n.max_model_age_hours > 0:
            skip, note = train_skip(root, n.max_model_age_hours,
                                    retrain_on_catalog_change=n.retrain_on_catalog_change,
                                    config=config)
        if stage == "evaluate" and not n.evaluate:
            skip = "nightly.evaluate = false"
        elif stage in ("index", "evaluate"):
            skip, note = made_skip(root, stage, config)
        if note:  # why a stage that could be skipped runs: in the log and the summary
            runner.note(f"{stage}: {note}")
        if skip:
            run, details = _details(root, stage)
            results.append(StageResult(stage, "skipped", run_id=run, reason=skip,
                                       details=details))
            runner.note(f"{stage}: skipped ({skip})")
            continue
        runner.note(f"{stage}: started")
        start = time.perf_counter()
        try:
            code, tail = runner.run(commands[stage], env, limit_hours=n.stage_timeout_hours)
        except KeyboardInterrupt:
            wall = round(time.perf_counter() - start, 1)
            results.append(StageResult(stage, "failed", wall, EXIT_INTERRUPTED,
                                       reason=f"stopped by {runner.stopped_by or 'SIGINT'}"))
            runner.note(f"{stage}: stopped after {wall:.1f} s")
            exit_code = EXIT_INTERRUPTED
            break
        wall = round(time.perf_counter() - start, 1)
        if code != 0:
            if runner.timed_out:  # its last line says nothing of that: it was cut off
                reason = (f"timed out: still running after nightly.stage_timeout_hours = "
                          f"{n.stage_timeout_hours:g}, and stopped (a hung stage would hold "
                          "the lock against every later night); its output is in the log")
            else:
                reason = _failure_reason(tail, _job_name(stage))
            results.append(StageResult(stage, "failed", wall, code, reason=reason))
            runner.note(f"{stage}: FAILED with exit code {code} after {wall:.1f} s: {reason}")
            exit_code = EXIT_STAGE_BASE + number
            continue
        run, details = _details(root, stage)
        results.append(StageResult(stage, "ok", wall, 0, run_id=run, reason=note,
                                   details=details))
        runner.note(f"{stage}: ok in {wall:.1f} s (run {run})")
    for stage in STAGES[len(results):]:
        results.append(StageResult(stage, "not run"))
    result = NightlyResult(run_id, run_date, exit_code, log_file, results)
    result.log_lost = runner.log_lost
    result.pruned = _prune(config, root, runner, run_id) if exit_code == 0 else {
        "skipped": f"the night {'was stopped' if exit_code == EXIT_INTERRUPTED else 'failed'}: "
                   "every run is kept to be read"}
    if runner.stopped_by:  # stopped at any point, pruning included: the run says so
        result.exit_code, result.stopped_by = EXIT_INTERRUPTED, runner.stopped_by
    try:
        uri = io.join(root, "nightly", run_id, "summary.json")
        io.write_text(uri, json.dumps(result.to_dict(), indent=2, default=str) + "\n")
        result.summary_uri = uri
    except OSError as exc:  # the summary is a report; never turn a good night into a failure
        runner.note(f"could not write the summary: {exc}")
    for line in format_summary(result).splitlines():
        runner.note(line)
    return result


def _prune(config: Config, root: str, runner: Runner, run_id: str) -> dict[str, Any]:
    """Retention after a good night; a failure to prune is noted, never the night's."""
    from recsys.retention import prune

    keep = config.nightly.keep_runs
    if keep == 0:
        return {"skipped": "nightly.keep_runs = 0"}
    try:
        pruned = prune(root, keep, log_dir=config.nightly.log_dir, tonight=run_id,
                       table_root=config.score.table_root,
                       stop=lambda: bool(runner.stopped_by))
    except (OSError, ValueError) as exc:  # e.g. an unreadable manifest: nothing removed
        runner.note(f"retention: could not prune old runs: {exc}")
        return {"error": str(exc)}
    for failed in pruned.failed:
        runner.note(f"retention: could not remove {failed}")
    runner.note(f"retention: kept the {keep} newest runs of each stage; removed "
                f"{pruned.describe()}")
    out = {"keep_runs": keep, "removed": pruned.removed, "removed_bytes": pruned.removed_bytes,
           "in_use": sorted(pruned.in_use)}
    if pruned.failed:
        out["failed"] = pruned.failed
    if pruned.stopped:
        out["stopped"] = (f"by {runner.stopped_by} with {pruned.left} more to remove; the "
                          "next good night removes them")
    return out


def _job_name(stage: str) -> str:
    return {"index": "build_index", "score": "score_all_users"}.get(stage, stage)


def format_summary(result: NightlyResult) -> str:
    lines = [f"summary of run {result.run_id} (run_date {result.run_date}): "
             + ("succeeded" if result.exit_code == 0
                else f"STOPPED by {result.stopped_by}, exit code {result.exit_code}"
                if result.stopped_by else f"FAILED, exit code {result.exit_code}")]
    for s in result.stages:
        line = f"  {s.name:<10} {s.status:<8}"
        if s.status in ("ok", "failed"):
            line += f" {s.wall_s:7.1f} s"
        if s.run_id:
            line += f"  run {s.run_id}"
        if s.reason:
            line += f"  ({s.reason})"
        lines.append(line)
        d = s.details
        if s.name == "preprocess" and d.get("counts"):
            c = d["counts"]
            lines.append("             " + ", ".join(f"{k} {v:,}" for k, v in c.items()
                                                      if isinstance(v, int))[:200])
        if s.name == "index" and d.get("recall"):
            lines.append("             " + ", ".join(f"{k} {v}" for k, v in d["recall"].items()))
        if s.name == "score" and d.get("counts"):
            tables = ", ".join(t["name"] for t in d.get("tables", {}).values())
            lines.append(f"             {d['counts'].get('users', 0):,} users x top "
                         f"{d['counts'].get('top_n')}; tables {tables} under "
                         f"{d.get('table_root')} (partition run_date={result.run_date})")
            expired = d.get("expired")
            if expired and (expired["nights"] or expired["failed"]):
                lines.append(f"             score.keep_nights = {expired['keep_nights']}: "
                             f"removed {', '.join(expired['nights']) or 'no night'}"
                             + (f"; NOT removed: {'; '.join(expired['failed'])}"
                                if expired["failed"] else ""))
        if s.name == "evaluate" and d.get("report"):
            lines.append(f"             report {d['report']}")
            for name, value in d.get("headline", {}).items():
                lines.append(f"             {name}: {value}")
    if result.summary_uri:
        lines.append(f"  summary {result.summary_uri}")
    lines.append(f"  log {result.log_file}"
                 + (f" (stops short: {result.log_lost}; the rest is above)"
                    if result.log_lost else ""))
    return "\n".join(lines)
