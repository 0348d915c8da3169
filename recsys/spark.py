"""Building the SparkSession: called by ``jobs/*.py`` and test fixtures only, never at import.

Under ``spark-submit`` the master, memory and Python settings given there win; when a job
is started with plain ``python`` the defaults from :class:`recsys.config.SparkConfig`
apply (``local[2]``). Either way the Python workers run the same interpreter as the
driver unless the user pointed ``spark.pyspark.python`` at a shipped environment, and they
get ``TF_USE_LEGACY_KERAS=1``.
"""

from __future__ import annotations

import atexit
import fcntl
import logging
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from recsys import io
from recsys.config import ConfigError, SparkConfig

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)


class SparkStartError(RuntimeError):
    """The driver JVM that a job starts itself exited before the SparkSession existed."""


_WORKER_ENV = {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}


_SPARK_CORE = re.compile(r"^spark-core_[\d.]+-(\d+\.\d+)\.[\w.-]+\.jar$")


def spark_home_problem(env: Mapping[str, str] | None = None) -> str | None:
    """What is wrong with ``SPARK_HOME`` for this environment's pyspark, or None. A
    cluster machine often sets it for its own Spark; pyspark's launcher and the
    ``spark-submit`` of this environment then start that Spark instead of their own: one
    that is not there fails with a shell error, another version with errors from deep
    inside Py4J."""
    import pyspark

    home = (os.environ if env is None else env).get("SPARK_HOME")
    if not home:
        return None
    ours = pyspark.__version__
    fix = (f"unset SPARK_HOME to use the Spark of this environment's pyspark ({ours}), or "
           f"point it at a Spark {ours} installation")
    if not os.path.isfile(os.path.join(home, "bin", "spark-submit")):
        return f"SPARK_HOME={home} has no bin/spark-submit: {fix}"
    jars = os.path.join(home, "jars")
    found = [m.group(1) for n in (os.listdir(jars) if os.path.isdir(jars) else [])
             if (m := _SPARK_CORE.match(n))]
    if found and found[0] != ".".join(ours.split(".")[:2]):
        return f"SPARK_HOME={home} is Spark {found[0]}, this environment's pyspark {ours}: {fix}"
    return None


#: What a Python worker that cannot import a module says, through Spark's PythonException.
_WORKER_IMPORT = re.compile(r"PythonException.*?\b(?:ModuleNotFoundError|ImportError): ([^\n]+)",
                            re.S)


def worker_import_error(exc: BaseException) -> str | None:
    """Why a Spark Python worker could not import what a job's UDFs need (e.g. "No module
    named 'pyarrow'"), when ``exc`` (or an error it was raised from or while handling)
    says so; None for any other failure, the driver's own imports included. It happens
    when the workers run another interpreter than the job (``PYSPARK_PYTHON`` or
    ``spark.pyspark.python`` set to a system Python, say)."""
    for e, text in io.error_chain(exc):
        # pyspark's captured PythonException says it by its class; the JVM's in its text
        if (m := _WORKER_IMPORT.search(f"{type(e).__name__}: {text}")) is not None:
            return m.group(1).strip()
    return None


def worker_python_hint() -> str:
    """What to set when :func:`worker_import_error` finds one."""
    given = os.environ.get("PYSPARK_PYTHON")
    runs = (f"they run PYSPARK_PYTHON={given}" if given and given != sys.executable else
            "they run the Python that spark.pyspark.python names")
    return (f"{runs}, which lacks this project's packages: point PYSPARK_PYTHON (or "
            f"spark.pyspark.python) at a Python that has them, e.g. {sys.executable}")


def hive_resources_dir(config: SparkConfig) -> str:
    """One fixed directory for Hive's downloaded resources (``ADD JAR``/``ADD FILE``; the
    jobs add none): under the embedded metastore, or per user in the temp directory when
    the cluster's metastore is used."""
    if config.metastore_dir:
        return os.path.join(os.path.abspath(config.metastore_dir), "hive-resources")
    return os.path.join(tempfile.gettempdir(), f"recsys-hive-resources-{os.getuid()}")


def scratch_root(config: SparkConfig) -> str:
    """Where each local driver process (or nightly run) gets its own Spark scratch."""
    return os.path.abspath(config.scratch_dir) if config.scratch_dir else \
        os.path.join(tempfile.gettempdir(), f"recsys-spark-{os.getuid()}")


_SCRATCH = re.compile(r"^(\d+)-[a-z0-9_]{8}$")  # <owner pid>-<mkdtemp's random suffix>
_OWNER = ".owner"  # flocked by the owner, and by the processes it hands the descriptor to


def process_alive(pid: int) -> bool:
    """Whether a process of this id runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _stat_field(pid: int, field: int) -> int | None:
    """Numeric field ``field`` (numbered as in proc(5), from 1) of ``/proc/<pid>/stat``;
    None when it cannot be read (no such process, not Linux)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[field - 3])
    except (OSError, IndexError, ValueError):
        return None


def process_start(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot, which tells a process
    from a later one given the same id; None where ``/proc`` cannot tell."""
    return _stat_field(pid, 22)


def sweep_scratch(root: str) -> list[str]:
    """Remove the scratch directories under ``root`` that nobody owns any more. Spark
    deletes its own shuffle files when its JVM exits, but not when it is killed (SIGKILL,
    the OOM killer): a full-scale preprocess killed after 75 s left 493 MB in ``/tmp``.
    A directory is in use while its owner process lives or while any process holds the
    lock on its ``.owner`` file (a nightly's stages inherit it, and outlive a nightly
    killed alone)."""
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    removed = []
    for name in sorted(names):
        owner = _SCRATCH.match(name)
        if not owner or process_alive(int(owner.group(1))):
            continue
        path = os.path.join(root, name)
        try:
            fd = os.open(os.path.join(path, _OWNER), os.O_RDWR)
        except FileNotFoundError:
            fd = None  # its owner died before it took the lock
        except OSError:
            continue
        try:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        except OSError:
            continue  # held: still in use
        finally:
            if fd is not None:
                os.close(fd)
    return removed


class ScratchDir:
    """A Spark scratch directory (``spark.local.dir`` / ``SPARK_LOCAL_DIRS``) owned by this
    process, made under :func:`scratch_root` (sweeping away what killed jobs left there)
    and locked through ``fd`` (inheritable: pass it to the processes that use the
    directory) for as long as it is open."""

    def __init__(self, config: SparkConfig) -> None:
        self.root = scratch_root(config)
        if "," in self.root:
            raise ConfigError(f"spark.scratch_dir: {self.root} has a comma, and Spark reads its "
                              "local directories as a comma-separated list; choose another")
        for attempt in range(3):
            try:
                os.makedirs(self.root, exist_ok=True)
                self.path = tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=self.root)
                break
            except FileNotFoundError:  # the root was just removed by a job that ended
                if attempt == 2:
                    raise
            except OSError as exc:
                raise ConfigError(f"spark.scratch_dir: cannot make a directory under "
                                  f"{self.root} ({exc.strerror or exc})") from None
        swept = sweep_scratch(self.root)
        if swept:
            log.info("removed the Spark scratch of %d killed job(s) under %s", len(swept),
                     self.root)
        self.fd: int | None = os.open(os.path.join(self.path, _OWNER), os.O_RDWR | os.O_CREAT,
                                      0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        os.set_inheritable(self.fd, True)

    def remove(self) -> None:
        """Delete the directory, and the root if nothing else is left in it; once no
        process still writes there (a stopped SparkContext, the stages of a nightly)."""
        if self.fd is None:
            return
        os.close(self.fd)
        self.fd = None
        shutil.rmtree(self.path, ignore_errors=True)
        try:
            os.rmdir(self.root)
        except OSError:
            pass  # another job's directory is there


#: Where a user may have set the JVM's temporary directory already (then it is theirs).
_JAVA_OPTION_VARS = ("SPARK_SUBMIT_OPTS", "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS")


def java_tmpdir_set(env: Mapping[str, str], driver_java_options: str = "") -> bool:
    """Whether the user chose the driver JVM's ``java.io.tmpdir`` (in the environment or
    ``spark.driver.extraJavaOptions``)."""
    return any("-Djava.io.tmpdir=" in v
               for v in [*(env.get(k, "") for k in _JAVA_OPTION_VARS), driver_java_options])


def check_exec(directory: str) -> None:
    """A JVM's temporary directory must allow executables: the JVM unpacks the snappy and
    lz4 native libraries there and maps them; on a filesystem mounted ``noexec`` (a
    hardened ``/tmp``) every Spark stage would fail at its first compressed write, with
    an UnsatisfiedLinkError ("failed to map segment from shared object")."""
    try:  # a directory not made yet: the filesystem it will be made on
        noexec = bool(os.statvfs(io.existing_ancestor(directory)).f_flag & os.ST_NOEXEC)
    except (OSError, AttributeError):  # no such flag on this system
        return
    if noexec:
        raise ConfigError(
            f"spark.scratch_dir: {directory} is on a filesystem mounted noexec, where the "
            "Spark JVM would unpack its native libraries (snappy, lz4) and fail to load "
            "them: set spark.scratch_dir to a directory on a filesystem that allows "
            "executables (e.g. under /var/tmp), or give the JVM a -Djava.io.tmpdir of your "
            "own (SPARK_SUBMIT_OPTS or JAVA_TOOL_OPTIONS)")


def scratch_env(scratch: str, env: Mapping[str, str]) -> dict[str, str]:
    """The environment entries that keep a Spark driver JVM about to start (a local
    master's, whose executors it runs) inside ``scratch``: its shuffle and spill files
    (``SPARK_LOCAL_DIRS``) and, unless the user chose it, its Java temporary directory
    (``SPARK_SUBMIT_OPTS``, read by spark-submit). There the JVM unpacks the lz4 and
    snappy native libraries and makes Spark's ``spark-*`` and ``artifacts-*``
    directories: about 430 KB that a killed JVM used to leave in ``/tmp`` for good."""
    out = {"SPARK_LOCAL_DIRS": scratch}
    if not java_tmpdir_set(env):
        check_exec(scratch)
        opts = env.get("SPARK_SUBMIT_OPTS", "")
        option = f"-Djava.io.tmpdir={scratch}"
        if any(c.isspace() or c in "'\"\\" for c in scratch):  # the launcher splits on spaces
            option = '"' + option.replace("\\", "\\\\").replace('"', '\\"') + '"'
        out["SPARK_SUBMIT_OPTS"] = f"{opts} {option}".strip()
    return out


def local_master(master: str) -> bool:
    return master == "local" or master.startswith("local[")


def _own_scratch(config: SparkConfig, existing) -> str | None:
    """Local masters: a Spark scratch directory of this driver's own, removed when this
    process exits, where the next job can tell a killed job's leftovers from a running
    job's. None where settings given by the user (``SPARK_LOCAL_DIRS``,
    ``spark.local.dir``) or a cluster (its workers have their own directories) decide, or
    where this process's JVM has its directories already."""
    from pyspark import SparkContext

    master = existing.get("spark.master", config.master) if existing else config.master
    if not local_master(master) or SparkContext._active_spark_context is not None or \
            "SPARK_LOCAL_DIRS" in os.environ or \
            (existing is not None and existing.contains("spark.local.dir")) or \
            (existing is None and SparkContext._gateway is not None):
        return None
    scratch = ScratchDir(config)
    # After the job's spark.stop() (under spark-submit Spark's JVM exits after this
    # process, and would only then delete its files).
    atexit.register(scratch.remove)
    return scratch.path


def local_dirs(spark: "SparkSession") -> str | None:
    """Where a local master's Spark keeps its shuffle and spill files (``spark.local.dir``,
    else ``SPARK_LOCAL_DIRS``, else the JVM's temporary directory); None on a cluster,
    whose executors have their own."""
    conf = spark.sparkContext.getConf()
    if not local_master(conf.get("spark.master", "")):
        return None
    system = spark.sparkContext._jvm.java.lang.System
    return (conf.get("spark.local.dir", None) or system.getenv("SPARK_LOCAL_DIRS")
            or system.getProperty("java.io.tmpdir"))


def embedded_metastore(spark: "SparkSession") -> str | None:
    """The directory of the embedded Derby metastore database the session is configured
    with (:func:`build_session` under ``spark.metastore_dir``), or None for any other."""
    url = spark.sparkContext.getConf().get("spark.hadoop.javax.jdo.option.ConnectionURL", "")
    derby = re.search(r"jdbc:derby:;databaseName=([^;]+)", url)
    return derby.group(1) if derby else None


def derby_holder(database: str) -> int | None:
    """The process that has the Derby ``database`` open, or None when none has or this
    system cannot tell. A booted Derby holds a POSIX lock on ``<database>/dbex.lck``;
    the kernel lists it in ``/proc/locks`` (Linux), which is read, never locked, so this
    cannot get in the way of a process booting the database."""
    try:
        st = os.stat(os.path.join(database, "dbex.lck"))
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    file_id = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in lines:
        # "3: POSIX  ADVISORY  WRITE 28444 fe:00:2146583 0 EOF" (a waiter has "->" after "3:")
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "POSIX" and fields[5] == file_id:
            return int(fields[4])
    return None


def describe_process(pid: int) -> str:
    """``pid`` and, for a Spark driver's JVM, the program that started it (a notebook's
    kernel, a job's script), as far as ``/proc`` tells: for messages that ask a user to
    stop it."""
    def cmdline(p: int) -> str:
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            return ""

    own = cmdline(pid)
    if not own:
        return f"process {pid}"
    program = os.path.basename(own.split()[0])
    if "org.apache.spark.deploy.SparkSubmit" not in own:
        return f"process {pid} ({own[:160]})"
    ppid = _stat_field(pid, 4)  # the parent's id
    started_by = cmdline(ppid) if ppid else ""
    if not started_by:
        return f"process {pid} ({program}, a Spark driver)"
    return f"process {pid} ({program}, a Spark driver started by process {ppid}: {started_by[:160]})"


def jvm_pid(spark: "SparkSession") -> int:
    """The process id of the session's driver JVM."""
    return int(spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid())


#: Spark's logging for the jobs (the nightly and the Makefile pass it to spark-submit).
LOG4J_CONF = Path(__file__).resolve().parents[1] / "conf" / "log4j2.properties"


def _project_log_config(spark: "SparkSession") -> None:
    """Give a driver JVM started without a logging configuration the project's: a job run
    with plain ``python`` or a bare ``spark-submit`` otherwise logs Spark's warnings that
    the project's file quiets on purpose (the vocabularies' global windows, "can cause
    serious performance degradation", three times a preprocess run). A configuration of
    the user's (``-Dlog4j2.configurationFile``, a ``log4j2.properties`` in
    ``SPARK_CONF_DIR``) is left as it is."""
    jvm = spark.sparkContext._jvm
    if (jvm.java.lang.System.getProperty("log4j2.configurationFile") is not None
            or jvm.java.lang.Thread.currentThread().getContextClassLoader().getResource(
                "log4j2.properties") is not None
            or not LOG4J_CONF.is_file()):
        return
    context = jvm.org.apache.logging.log4j.LogManager.getContext(False)
    context.setConfigLocation(jvm.java.io.File(str(LOG4J_CONF)).toURI())


def build_session(
    app_name: str, config: SparkConfig, extra: Mapping[str, str] | None = None
) -> "SparkSession":
    # The workers must import pyarrow/pandas from our environment: unless told otherwise,
    # they run this very interpreter (a venv's python).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    for key, value in _WORKER_ENV.items():
        os.environ.setdefault(key, value)

    from pyspark import SparkConf, SparkContext
    from pyspark.sql import SparkSession

    submitted = "PYSPARK_GATEWAY_PORT" in os.environ  # started by spark-submit
    if (problem := spark_home_problem()) is not None:
        raise SparkStartError(problem)
    if not submitted and config.master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    existing = None
    if submitted:
        SparkContext._ensure_initialized()  # connect to spark-submit's JVM to read its conf
        existing = SparkConf()

    builder = SparkSession.builder.appName(app_name)

    def set_default(key: str, value: str) -> None:
        if existing is None or not existing.contains(key):
            builder.config(key, value)

    set_default("spark.master", config.master)
    set_default("spark.driver.memory", config.driver_memory)
    set_default("spark.sql.shuffle.partitions", str(config.shuffle_partitions))
    set_default("spark.sql.files.maxPartitionBytes", config.max_partition_bytes)
    set_default("spark.ui.enabled", "true" if config.ui_enabled else "false")
    set_default("spark.sql.session.timeZone", "UTC")
    set_default("spark.ui.showConsoleProgress", "false")  # progress bars fill batch logs
    if not submitted:
        # Under spark-submit the user's --conf spark.pyspark.python / PYSPARK_PYTHON decide
        # (e.g. a venv shipped with --archives); here the driver's own interpreter is used.
        set_default("spark.pyspark.python", os.environ["PYSPARK_PYTHON"])
    scratch = _own_scratch(config, existing)
    if scratch and existing is not None:
        # spark-submit started the JVM already: only its conf can still say where its
        # shuffle goes, and its temporary directory is read when first used (by the
        # SparkContext and the native libraries it loads, which start after this).
        builder.config("spark.local.dir", scratch)
        if not java_tmpdir_set(os.environ, existing.get("spark.driver.extraJavaOptions", "")):
            check_exec(scratch)
            SparkContext._jvm.java.lang.System.setProperty("java.io.tmpdir", scratch)
    set_default("spark.sql.execution.arrow.pyspark.enabled", "true")
    for key, value in _WORKER_ENV.items():
        set_default(f"spark.executorEnv.{key}", value)
    if config.hive_catalog:
        set_default("spark.sql.catalogImplementation", "hive")
        if config.metastore_dir:
            meta = os.path.abspath(config.metastore_dir)
            set_default("spark.sql.warehouse.dir", os.path.join(meta, "warehouse"))
            set_default("spark.hadoop.javax.jdo.option.ConnectionURL",
                        f"jdbc:derby:;databaseName={os.path.join(meta, 'metastore_db')};create=true")
        # Hive's session makes <java.io.tmpdir>/<session uuid>_resources and Spark never
        # closes that session: one empty directory left behind per job, every night.
        set_default("spark.hadoop.hive.downloaded.resources.dir", hive_resources_dir(config))
    for key, value in (extra or {}).items():
        builder.config(key, value)

    # The JVM started now learns it from its environment (spark.local.dir would make Spark
    # warn that a cluster manager may override it); processes started later must not.
    to_jvm = scratch_env(scratch, os.environ) if scratch and existing is None else {}
    saved = {key: os.environ.get(key) for key in to_jvm}
    os.environ.update(to_jvm)
    try:
        spark = builder.getOrCreate()
    except Exception as exc:
        if getattr(exc, "getCondition", lambda: None)() != "JAVA_GATEWAY_EXITED":
            raise
        raise SparkStartError(
            f"the Spark driver JVM exited before the session started (its own messages are "
            f"above). Check `java -version` (17 or newer), spark.master ({config.master!r}) "
            f"and spark.driver_memory ({config.driver_memory!r})") from None
    finally:
        for key, value in saved.items():
            if value is None:
                del os.environ[key]
            else:
                os.environ[key] = value
    _project_log_config(spark)
    spark.sparkContext.setLogLevel(config.log_level)
    if config.hive_catalog and config.metastore_dir:
        # Derby writes derby.log into the working directory (cron's: the user's home) when
        # it boots, at the catalog's first use, which is after this point.
        system = spark.sparkContext._jvm.java.lang.System
        if system.getProperty("derby.stream.error.file") is None:
            system.setProperty("derby.stream.error.file",
                               os.path.join(os.path.abspath(config.metastore_dir), "derby.log"))
    return spark
