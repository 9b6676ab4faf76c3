"""The tutorial's "What next", as a tool: search its three knobs with Optuna.

The tutorial ends by saying its parameters are not tuned, and suggests other
learning rates, decay rates and initialisations. This script searches them.
A trial is one setting, trained from scratch with seeds 1..S side by side:
each run is tutorial_atari_pong.py itself, unchanged, as a subprocess, in
its own folder RUNS/STUDY/trial-NNNN/seed-S/. The study lives in a database
(an SQLite file in the runs folder, or any URL Optuna takes), so the same
command carries on after a stop, and many machines pointed at one database
share one study. A study searches one network's settings: the --network it
was made with, which it records; comparing the networks is two studies (the
same settings in both with --enqueue).

    python sweep.py --trials 20 --episodes 3000 --seeds 2     # search, on this machine
    python sweep.py --trials 20 --episodes 3000 -- --hidden 100   # flags after -- go to every run
    python sweep.py --report                                   # which settings win
    python sweep.py --network cnn --study pong-cnn             # the convolutional policy's study
    python tutorial_atari_pong.py --plot runs/pong/trial-0003          # a trial's seeds
"""

import argparse
import collections
import ctypes
import datetime
import math
import os
import pathlib
import signal
import socket
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np

try:
    import fcntl
except ImportError:  # Windows: no locks, as the script has none there
    fcntl = None

try:  # the script beside this file: its defaults, and how it reads its progress.csv
    import tutorial_atari_pong as pong
except ImportError as error:
    sys.exit(
        f"sweep.py: error: cannot import tutorial_atari_pong.py, which must sit beside sweep.py "
        f"({error})"
    )

# What is searched: edit it here, like the script's defaults.
LEARNING_RATE = (1e-5, 1e-2)  # RMSProp learning rate, searched on a log scale
DECAY_RATE = (0.9, 0.999)  # RMSProp decay of the mean square
INITIALISERS = ["glorot-uniform", "glorot-normal", "he-uniform", "he-normal", "truncated-normal"]
# The median pruner: it compares a trial with the finished ones only once
# there are this many, and not in the first part of the episodes, where every
# setting still loses about 21-0 and the seeds' luck decides.
PRUNE_STARTUP_TRIALS = 5
PRUNE_WARMUP_FRACTION = 0.2

# Defaults of the flags.
trials = 20  # finished (complete or pruned) trials the study should hold
episodes = 3000  # episodes each run of a trial trains
seeds = 2  # runs per trial, seeds 1..seeds, side by side
runs = "runs"  # the trials' folders: RUNS/STUDY/trial-NNNN/seed-S/
study = "pong"
network = pong.network  # the policy every run of the study trains: the script's default
save_every = 100  # episodes between checkpoints and between reports to the pruner
grace_period = 120  # seconds without a heartbeat before a trial counts as dead and is retried

SCRIPT = pathlib.Path(__file__).resolve().parent / "tutorial_atari_pong.py"
# Optuna's names of the knobs, and the script's flags with - for _.
PARAMS = ("learning_rate", "decay_rate", "init")
SET_BY_SWEEP = (
    "--model-dir",
    "--model",
    "--seed",
    "--learning-rate",
    "--decay-rate",
    "--init",
    "--network",
    "--episodes",
    "--save-every",
    "--resume",
    "--restart",
    "--play",
    "--plot",
    "--render",
    "--record",
    "--record-every",
    "--record-scale",
    "--record-gif",
)
STOP_SECONDS = 120  # a run asked to stop saves within seconds; past this it is killed
# A study made before sweeps named a network has no "network" attribute: its runs
# trained the script's network of that time, the tutorial's.
OLD_STUDY_NETWORK = "mlp"
POLL_SECONDS = 1  # how often the runs' progress.csv files are read
WAIT_SECONDS = 5  # how often a sweep with nothing to train looks at the study again
LOCK_WAIT_SECONDS = 300  # another sweep holds the study's lock for a moment; past this it is hung
LOCK_POLL_SECONDS = 0.05
# The advisory lock's key: any fixed number, the same in every sweep ("pongswep").
POSTGRES_LOCK_KEY = int.from_bytes(b"pongswep", "big")
OBJECTIVE = (
    "the mean episode reward over the last tenth of the E episodes (reward: points won minus "
    "points lost, -21 to +21), averaged over the seeds"
)

warnings.filterwarnings("ignore", message=".*is experimental.*")  # Optuna's heartbeat and retry
import optuna  # noqa: E402  (after the filter: importing some of its parts warns)
from optuna.exceptions import ExperimentalWarning  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

warnings.filterwarnings("ignore", category=ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.ERROR)  # this script prints each trial's course itself
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class SweepError(Exception):
    """Something that stops the sweep with one line on stderr."""

    def __init__(self, message, status=2):
        super().__init__(message)
        self.status = status


class Stopped(Exception):
    """Ctrl-C or SIGTERM of the sweep, inside a trial: its runs have saved."""


def fail(message, status=2):
    print(f"sweep.py: error: {message}", file=sys.stderr)
    raise SystemExit(status)


# --- The search block and the script ---------------------------------------


def script_setting():
    """The script's default setting: a new study's first trial, and what
    --enqueue leaves out."""
    return {name: getattr(pong, name) for name in PARAMS}


def check_search_block(known_initialisers):
    low, high = LEARNING_RATE
    if not 0 < low < high < math.inf:
        raise SweepError(f"LEARNING_RATE = {LEARNING_RATE} in sweep.py: need 0 < low < high")
    low, high = DECAY_RATE
    if not 0 <= low < high < 1:
        raise SweepError(f"DECAY_RATE = {DECAY_RATE} in sweep.py: need 0 <= low < high < 1")
    unknown = [name for name in INITIALISERS if name not in known_initialisers]
    if not INITIALISERS or unknown or len(set(INITIALISERS)) < len(INITIALISERS):
        raise SweepError(
            f"INITIALISERS = {INITIALISERS} in sweep.py: need distinct names from "
            f"{', '.join(known_initialisers)}"
        )
    if not 1 <= PRUNE_STARTUP_TRIALS or not 0 <= PRUNE_WARMUP_FRACTION < 1:
        raise SweepError(
            "PRUNE_STARTUP_TRIALS must be >= 1 and PRUNE_WARMUP_FRACTION in [0, 1) in sweep.py"
        )


def suggest(trial):
    """One setting from the search block (a queued trial's fixed values come back as they are)."""
    return {
        "learning_rate": trial.suggest_float("learning_rate", *LEARNING_RATE, log=True),
        "decay_rate": trial.suggest_float("decay_rate", *DECAY_RATE),
        "init": trial.suggest_categorical("init", INITIALISERS),
    }


def in_search_block(setting):
    return (
        LEARNING_RATE[0] <= setting["learning_rate"] <= LEARNING_RATE[1]
        and DECAY_RATE[0] <= setting["decay_rate"] <= DECAY_RATE[1]
        and setting["init"] in INITIALISERS
    )


def parse_setting(text, defaults):
    """--enqueue learning_rate=3e-4,decay_rate=0.95,init=he-normal; what is
    left out is the script's default."""
    setting = dict(defaults)
    for part in filter(None, text.split(",")):
        name, _, value = part.partition("=")
        name = name.strip().replace("-", "_")
        if name not in PARAMS or not value:
            raise SweepError(
                f"--enqueue {text}: expected NAME=VALUE,... with names {', '.join(PARAMS)}"
            )
        try:
            setting[name] = value.strip() if name == "init" else float(value)
        except ValueError:
            raise SweepError(f"--enqueue {text}: {value} is not a number") from None
    if not in_search_block(setting):
        raise SweepError(
            f"--enqueue {text}: outside the search block (learning rate {LEARNING_RATE}, "
            f"decay rate {DECAY_RATE}, init one of {', '.join(INITIALISERS)})"
        )
    return setting


def describe(setting):
    return (
        f"learning_rate={setting['learning_rate']:.3g}, decay_rate={setting['decay_rate']:.4g}, "
        f"init={setting['init']}"
    )


def abbreviates(flag, full_name):
    """Whether flag (or --flag=value) names full_name, as argparse reads a shortened flag."""
    name = flag.split("=", 1)[0]
    return name.startswith("--") and len(name) > 2 and full_name.startswith(name)


def check_run_flags(flags, network_name):
    """Flags after --: any of the script's, except those the sweep sets for each run, and
    --hidden with the cnn, which the script would refuse in every run of every trial."""
    for flag in flags:
        if any(abbreviates(flag, taken) for taken in SET_BY_SWEEP):
            raise SweepError(
                f"{flag} after --: the sweep sets it for each run itself (it sets "
                f"{', '.join(SET_BY_SWEEP[:9])}; the other flags it leaves out)"
            )
        if network_name == "cnn" and abbreviates(flag, "--hidden"):
            raise SweepError(
                f"{flag} after --: --hidden does nothing with --network cnn (its hidden layer "
                f"has {pong.CNN_HIDDEN})"
            )


# --- Storage ----------------------------------------------------------------


def storage_url(args):
    return args.storage or f"sqlite:///{os.path.join(args.runs, 'studies.db')}"


def engine_settings(url, must_exist):
    """The URL as SQLAlchemy takes it here, its parsed form and the engine's
    settings; an SQLite file's folder made. A bad URL is one line."""
    import sqlalchemy

    try:
        parsed = sqlalchemy.engine.make_url(url)
    except Exception as error:
        raise SweepError(f"--storage {url}: not a database URL ({error})") from None
    # SQLAlchemy 2.1 took psycopg 3 for postgresql://; requirements.txt has psycopg2.
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg2")
        url = parsed.render_as_string(hide_password=False)
    engine_kwargs = {"pool_pre_ping": True}
    if parsed.get_backend_name() == "sqlite":
        # Sweeps on one file wait for each other's writes. The driver leaves
        # transactions to SQLAlchemy, which begins each immediately (open_storage).
        engine_kwargs["connect_args"] = {"timeout": 60, "isolation_level": None}
        if sqlite_file(parsed):
            if must_exist and not os.path.exists(parsed.database):
                raise SweepError(f"no study database at {parsed.database} (--storage, --runs)")
            os.makedirs(os.path.dirname(os.path.abspath(parsed.database)), exist_ok=True)
    elif parsed.get_backend_name() == "postgresql":
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
    return url, parsed, engine_kwargs


def sqlite_file(parsed):
    return parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:")


def open_storage(url, must_exist, grace_seconds=None, retry=None):
    """Optuna's RDB storage on url; any failure to reach it is one line."""
    import sqlalchemy

    url, parsed, engine_kwargs = engine_settings(url, must_exist)
    try:
        storage = optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            grace_period=grace_seconds,
            heartbeat_interval=None if grace_seconds is None else max(1, grace_seconds // 5),
            heartbeat_stale_trial_callback=retry,
        )
    except Exception as error:  # a missing driver, a refused connection, a file that is no database
        raise cannot_open(url, error) from None
    if parsed.get_backend_name() == "sqlite":
        # Optuna reads a trial's state, then writes it: a queued trial taken, a dead
        # sweep's trial failed. In a deferred transaction two sweeps both read "waiting"
        # and both train the trial; an immediate one holds the file's write lock from
        # its first read, as PostgreSQL's SELECT ... FOR UPDATE holds the row.
        sqlalchemy.event.listen(
            storage.engine,
            "begin",
            lambda connection: connection.exec_driver_sql("BEGIN IMMEDIATE"),
        )
    return storage


def cannot_open(url, error):
    reason = " ".join(str(error).split())
    return SweepError(f"cannot open the study database {hide_password(url)}: {reason[:300]}")


def study_lock(url):
    """The lock of the database at url that every sweep sees: flock on the file DB.lock
    beside an SQLite file, or a PostgreSQL advisory lock. Under it one sweep at a time
    creates the tables and the study, checks and writes its settings, enqueues, and counts
    the trials before it starts one; so any number of sweeps may start at once. Other
    databases (MySQL) get none: there, start one sweep first."""
    url, parsed, engine_kwargs = engine_settings(url, must_exist=False)
    if sqlite_file(parsed) and fcntl is not None:
        return FileLock(url, f"{parsed.database}.lock")
    if parsed.get_backend_name() == "postgresql":
        return AdvisoryLock(url, engine_kwargs)
    return StudyLock(url, None)


class StudyLock:
    """A lock that the sweep takes and gives back as often as it wants; a hung holder,
    past LOCK_WAIT_SECONDS, is one line. It goes with its sweep, however the sweep dies:
    the kernel closes the file, the server the session. This one, of other databases,
    locks nothing."""

    def __init__(self, url, name):
        self.url, self.name, self.held = url, name, None

    def open_handle(self):
        return None

    def try_lock(self, handle):
        return True

    def acquire(self):
        if self.held is not None:
            return
        handle = self.open_handle()
        try:
            deadline = time.monotonic() + LOCK_WAIT_SECONDS
            while not self.try_lock(handle):
                if time.monotonic() > deadline:
                    raise SweepError(
                        f"another sweep has held {self.name}, the lock of the study database "
                        f"{hide_password(self.url)}, for {LOCK_WAIT_SECONDS} s: is one stopped "
                        "(Ctrl-Z) or hung?"
                    )
                time.sleep(LOCK_POLL_SECONDS)
        except BaseException:
            if handle is not None:
                handle.close()
            raise
        self.held = handle

    def release(self):
        """As often as wanted: the objective releases it once its trial runs, the sweep
        after every try."""
        if self.held is not None:
            self.held.close()  # with it go the file's flock, the session's advisory lock
        self.held = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc_info):
        self.release()


class FileLock(StudyLock):
    def open_handle(self):
        try:
            return open(self.name, "a")
        except OSError as error:
            raise cannot_open(self.url, f"its lock {self.name}: {error.strerror}") from None

    def try_lock(self, handle):
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


class AdvisoryLock(StudyLock):
    def __init__(self, url, engine_kwargs):
        import sqlalchemy

        super().__init__(url, f"pg_advisory_lock({POSTGRES_LOCK_KEY})")
        try:  # a connection while it is held, none kept between
            self.engine = sqlalchemy.create_engine(
                url, poolclass=sqlalchemy.pool.NullPool, **engine_kwargs
            )
        except ImportError as error:
            raise cannot_open(url, error) from None

    def open_handle(self):
        try:
            return self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        except Exception as error:  # refused, unknown host, bad password
            raise cannot_open(self.url, error) from None

    def try_lock(self, handle):
        import sqlalchemy

        try:
            return handle.execute(
                sqlalchemy.text("SELECT pg_try_advisory_lock(:key)"), {"key": POSTGRES_LOCK_KEY}
            ).scalar()
        except sqlalchemy.exc.SQLAlchemyError as error:  # the server went away
            raise cannot_open(self.url, error) from None


def hide_password(url):
    import sqlalchemy

    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def open_study(args, storage, defaults):
    """The study, created if new (with the script's default setting as its
    first trial). Its episodes, seeds and run flags are kept in the study:
    trials are compared only if trained alike."""
    try:
        optuna_study = optuna.create_study(
            study_name=args.study, storage=storage, direction="maximize"
        )
        # First of all: a sweep that finds the study from now on checks it.
        optuna_study.set_user_attr("network", args.network)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        optuna_study = optuna.load_study(study_name=args.study, storage=storage)
        check_network(optuna_study, args)
        created = False
    trained = optuna_study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
    check_settings(optuna_study, args, trained=bool(trained))
    for name, value in run_settings(args).items():
        optuna_study.set_user_attr(name, value)
    if created:
        tutorial = dict(defaults)
        if in_search_block(tutorial):
            optuna_study.enqueue_trial(tutorial)
            print(
                f"new study {args.study} (--network {args.network}): its first trial is the "
                f"tutorial's setting ({describe(tutorial)})"
            )
    for text in args.enqueue:
        optuna_study.enqueue_trial(parse_setting(text, defaults), skip_if_exists=True)
    return optuna_study


def run_settings(args):
    return {"episodes": args.episodes, "seeds": args.seeds, "run_flags": args.run_flags}


def check_settings(optuna_study, args, trained):
    """The episodes, seeds and run flags kept in the study, if it has trials trained or
    training with them, are the only ones it takes: trials are compared only if trained
    alike."""
    wanted = run_settings(args)
    attrs = optuna_study.user_attrs
    kept = {name: attrs[name] for name in wanted if name in attrs}
    if kept and kept != wanted and trained:
        raise SweepError(
            f"study {args.study} trains with {command_line(kept)}; this command has "
            f"{command_line(wanted)}: give the same, or a new --study"
        )


def study_network(user_attrs):
    return user_attrs.get("network", OLD_STUDY_NETWORK)


def check_network(optuna_study, args):
    """A study never mixes networks: the pruner's median and the report compare its trials."""
    trained = study_network(optuna_study.user_attrs)
    if trained != args.network:
        raise SweepError(
            f"study {args.study} trains --network {trained}, this command has --network "
            f"{args.network}: use another --study (a study's trials all train one network)"
        )


def command_line(kept):
    flags = " ".join(kept.get("run_flags", []))
    return f"--episodes {kept.get('episodes')} --seeds {kept.get('seeds')}" + (
        f" -- {flags}" if flags else ""
    )


# --- One run: the script in a seed's folder -----------------------------------


def exit_with_sweep():
    """In the run, before the script starts: the kernel sends it SIGTERM when
    the sweep dies, however it dies (kill -9 too), and it saves and exits."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    sweep_pid = os.getpid()

    def preexec():
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
        # The sweep died before the line above: no one would stop this run.
        if os.getppid() != sweep_pid:
            os._exit(1)

    return preexec if sys.platform.startswith("linux") else None


def checkpoint_episode(folder):
    """Episodes done by the checkpoint in folder, None if it has none."""
    path = folder / "model_pong.npz"
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return int(data["state/episode"])
    except (OSError, KeyError, ValueError) as error:
        raise SweepError(
            f"{path} cannot be read ({error}): move it away to start that run over"
        ) from None


def folder_locked_by(folder):
    """The pid in folder/.lock if a training run holds it (the script's own lock), else None."""
    if fcntl is None:
        return None
    path = folder / ".lock"
    if not path.exists():
        return None
    with open(path, "a+") as lock:
        try:
            fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError):
            lock.seek(0)
            return lock.read().strip() or "?"
        fcntl.lockf(lock, fcntl.LOCK_UN)
    return None


class Run:
    """The script training one seed of a trial, its output in the seed's folder."""

    def __init__(self, folder, seed_value, setting, done, args, envs):
        self.folder, self.seed = folder, seed_value
        self.stderr_path = folder / "stderr.log"
        self.stderr_start = self.stderr_path.stat().st_size if self.stderr_path.exists() else 0
        command = [
            sys.executable,
            str(SCRIPT),
            "--resume" if done is not None else "--restart",
            "--model-dir",
            str(folder),
            "--seed",
            str(seed_value),
            "--envs",
            str(envs),
            "--learning-rate",
            repr(setting["learning_rate"]),
            "--decay-rate",
            repr(setting["decay_rate"]),
            "--init",
            setting["init"],
            "--network",
            args.network,
            "--save-every",
            str(args.save_every),
            "--episodes",
            str(args.episodes - (done or 0)),
            *args.run_flags,
        ]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(folder / "train.log", "a") as out, open(self.stderr_path, "a") as err:
            self.process = subprocess.Popen(
                command,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
                preexec_fn=exit_with_sweep(),
            )

    def error_line(self):
        with open(self.stderr_path) as f:
            f.seek(self.stderr_start)
            lines = [line.strip() for line in f if line.strip()]
        return lines[-1] if lines else f"exit status {self.process.returncode}"


def stop_runs(active):
    """SIGTERM, as Ctrl-C stops the script: each saves and exits."""
    for run in active:
        if run.process.poll() is None:
            run.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_SECONDS
    for run in active:
        try:
            run.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            run.process.kill()
            run.process.wait()


# --- The objective: the last tenth of the runs' episodes --------------------------


def training_hours(rows):
    return float(pong.hours_trained(rows)[-1]) if rows else 0.0


def last_tenth(rows_by_seed, episodes=None):
    """The objective and what the report shows, over the same episodes of
    every seed: the last tenth of its first `episodes`, by default as many as
    the shortest seed has (a pruned trial's: the episodes the pruner judged;
    its seeds run on for a few more before they stop). The hours are the
    slowest seed's, all its episodes: the seeds train side by side."""
    if episodes is None:
        episodes = min(len(rows) for rows in rows_by_seed)
    tails = [rows[episodes - max(1, episodes // 10) : episodes] for rows in rows_by_seed]
    rewards = [[float(row["reward"]) for row in tail] for tail in tails]
    won = sum(int(row["points_won"]) for tail in tails for row in tail)
    lost = sum(int(row["points_lost"]) for tail in tails for row in tail)
    return {
        "mean_reward": float(np.mean([np.mean(r) for r in rewards])),
        "episodes": episodes,
        "points_won": won,
        "points_played": won + lost,
        "games_won": sum(
            int(row["points_won"]) > int(row["points_lost"]) for tail in tails for row in tail
        ),
        "games": sum(len(tail) for tail in tails),
        "hours": max(training_hours(rows) for rows in rows_by_seed),
    }


# --- One trial --------------------------------------------------------------


def trial_folder(args, trial):
    """A retried trial keeps the first attempt's folder, so its runs resume there."""
    if "folder" not in trial.user_attrs:
        trial.set_user_attr("folder", f"trial-{trial.number:04d}")
    return pathlib.Path(args.runs) / args.study / trial.user_attrs["folder"]


def make_objective(args, stop_requested, current, started):
    """The trial's runs to their end; started() is called once the trial runs."""
    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )
    envs = max(1, cores // args.seeds)

    def objective(trial):
        current["trial"] = trial
        started()
        if stop_requested():  # Ctrl-C came while Optuna handed out this trial
            raise Stopped()
        setting = suggest(trial)
        folder = trial_folder(args, trial)
        trial.set_user_attr("host", socket.gethostname())
        announce(trial, setting, folder, args.seeds)
        done = episodes_done(trial, folder, args.seeds)
        active = []
        try:
            for seed_value, seed_done in done.items():
                if seed_done is None or seed_done < args.episodes:
                    seed_folder = folder / f"seed-{seed_value}"
                    active.append(Run(seed_folder, seed_value, setting, seed_done, args, envs))
            rows_by_seed = watch(trial, folder, active, args, stop_requested)
        except BaseException:
            stop_runs(active)
            raise
        result = last_tenth(rows_by_seed)
        for name, value in result.items():
            trial.set_user_attr(name, value)
        print(
            f"trial {trial.number} complete: objective {result['mean_reward']:+.3f} "
            f"({describe(setting)})",
            flush=True,
        )
        return result["mean_reward"]

    return objective


def announce(trial, setting, folder, seeds):
    """The trial's first line; a retried trial says whose folder it carries on in."""
    retried = ""
    if trial.user_attrs["folder"] != f"trial-{trial.number:04d}":
        first_try = int(trial.user_attrs["folder"].removeprefix("trial-"))
        retried = f" (trial {first_try} tried again)"
    print(
        f"trial {trial.number}: {describe(setting)}, {seeds} runs in {folder}{retried}", flush=True
    )


def episodes_done(trial, folder, seeds):
    """Each seed's episodes done by its checkpoint (None: none yet), its folder
    made; a folder that a training run holds stops the trial."""
    done = {}
    for seed_value in range(1, seeds + 1):
        seed_folder = folder / f"seed-{seed_value}"
        seed_folder.mkdir(parents=True, exist_ok=True)
        holder = folder_locked_by(seed_folder)
        if holder:
            raise SweepError(
                f"another training run (pid {holder}) is using {seed_folder}: "
                f"trial {trial.number} waits in the study until it is free"
            )
        done[seed_value] = checkpoint_episode(seed_folder)
    return done


def watch(trial, folder, active, args, stop_requested):
    """Until the runs end: report the seeds' mean running mean every
    --save-every episodes, stop them if the pruner says so."""
    seed_folders = [folder / f"seed-{s}" for s in range(1, args.seeds + 1)]
    reported = 0
    while True:
        if stop_requested():
            stop_runs(active)
            raise Stopped()
        rows_by_seed = [pong.progress_rows(f, args.episodes) for f in seed_folders]
        reachable = min(len(rows) for rows in rows_by_seed) // args.save_every * args.save_every
        for step in range(
            reported + args.save_every, min(reachable, args.episodes - 1) + 1, args.save_every
        ):
            value = float(np.mean([float(rows[step - 1]["running_mean"]) for rows in rows_by_seed]))
            trial.report(value, step)
            reported = step
            print(
                f"trial {trial.number} episode {step}: the seeds' mean running mean {value:+.3f}",
                flush=True,
            )
            if trial.should_prune():
                stop_runs(active)
                prune(
                    trial,
                    [pong.progress_rows(f, args.episodes) for f in seed_folders],
                    f"pruned at episode {step}: mean running mean {value:+.3f} is below the median",
                    episodes=step,
                )
        for run in active:
            returncode = run.process.poll()
            if returncode is not None and returncode != 0:
                stop_runs(active)
                message = run.error_line()
                # The setting diverged: as hopeless as a pruned one.
                if "NaN or infinity" in message:
                    prune(
                        trial,
                        [pong.progress_rows(f, args.episodes) for f in seed_folders],
                        f"diverged, seed {run.seed}: {message}",
                    )
                raise SweepError(
                    f"trial {trial.number}, seed {run.seed} ({run.folder}): {message}",
                    2 if returncode == 2 else 1,
                )
        if all(run.process.poll() == 0 for run in active):
            rows_by_seed = [pong.progress_rows(f, args.episodes) for f in seed_folders]
            short = [
                f
                for f, rows in zip(seed_folders, rows_by_seed, strict=True)
                if len(rows) < args.episodes
            ]
            if short:
                raise SweepError(
                    f"trial {trial.number}: the run in {short[0]} stopped before its "
                    f"{args.episodes} episodes (stopped by hand?)",
                    1,
                )
            return rows_by_seed
        time.sleep(POLL_SECONDS)


def prune(trial, rows_by_seed, why, episodes=None):
    if all(rows_by_seed):
        for name, value in last_tenth(rows_by_seed, episodes).items():
            trial.set_user_attr(name, value)
    trial.set_user_attr("pruned", why)
    print(f"trial {trial.number} {why}", flush=True)
    raise optuna.TrialPruned(why)


# --- The sweep ----------------------------------------------------------------


def trial_counts(optuna_study):
    """Finished (complete or pruned), running and queued trials."""
    counts = collections.Counter(t.state for t in optuna_study.get_trials(deepcopy=False))
    return (
        counts[TrialState.COMPLETE] + counts[TrialState.PRUNED],
        counts[TrialState.RUNNING],
        counts[TrialState.WAITING],
    )


def sweep(args):
    defaults = script_setting()
    check_search_block(list(pong.INITIALISERS))
    check_run_flags(args.run_flags, args.network)
    for text in args.enqueue:
        parse_setting(text, defaults)
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback()
    url = storage_url(args)
    lock = study_lock(url)
    with lock:
        storage = open_storage(url, must_exist=False, grace_seconds=args.grace_period, retry=retry)
        optuna_study = open_study(args, storage, defaults)
    optuna_study.pruner = make_pruner(args)
    stop_requested = catch_stop_signals()
    current = {}
    objective = make_objective(args, stop_requested, current, started=lock.release)
    waiting_said = False
    while not stop_requested():
        # Held from the count until this sweep's trial runs: two sweeps that count
        # at once would both start the study's last trial.
        lock.acquire()
        try:
            # A dead sweep's trial goes back into the queue.
            optuna.storages.fail_stale_trials(optuna_study)
            finished, running, queued = trial_counts(optuna_study)
            if finished >= args.trials:
                print(
                    f"study {args.study} holds {finished} finished trials "
                    f"(--trials {args.trials}): done"
                )
                return 0
            if finished + running >= args.trials and not queued:
                lock.release()
                waiting_said = wait_for_others(running, args.trials, waiting_said)
                continue
            current.clear()
            # A sweep started at once with other flags may have written its own since.
            check_settings(optuna_study, args, trained=True)
            optuna_study.optimize(objective, n_trials=1)
        except Stopped:
            break
        except SweepError as error:
            retry_later(optuna_study, current, retry)
            raise error
        finally:
            lock.release()
    if retry_later(optuna_study, current, retry):
        print(
            f"stopped: trial {current['trial'].number}'s runs saved; it is queued again, and the "
            "same command carries on"
        )
    else:
        print("stopped between trials")
    return 0


def wait_for_others(running, trials, waiting_said):
    """A while, as the trials elsewhere are enough; says so once. Returns that it has."""
    if not waiting_said:
        print(
            f"{running} trials are running elsewhere, enough for --trials {trials}: "
            "waiting for them (a trial whose sweep has died is taken over here)",
            flush=True,
        )
    time.sleep(WAIT_SECONDS)
    return True


def make_pruner(args):
    if args.no_prune:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(
        n_startup_trials=PRUNE_STARTUP_TRIALS,
        n_warmup_steps=int(args.episodes * PRUNE_WARMUP_FRACTION),
    )


def catch_stop_signals():
    """Ctrl-C and SIGTERM only ask the sweep to stop, so that the trial's runs
    save first; returns the question whether one came."""
    stop = {"requested": False}

    def request_stop(signum, frame):
        stop["requested"] = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    return lambda: stop["requested"]


def retry_later(optuna_study, current, retry):
    """A trial stopped before its end goes back into the queue, same setting,
    same folder (Optuna has marked it failed); True if there was one."""
    if current.get("trial") is None:
        return False
    frozen = next(t for t in optuna_study.get_trials() if t.number == current["trial"].number)
    if frozen.state != TrialState.FAIL:
        return False
    retry(optuna_study, frozen)
    return True


# --- The report ---------------------------------------------------------------


def report(args):
    url = storage_url(args)
    storage = open_storage(url, must_exist=True)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    if args.study not in names:
        raise SweepError(
            f"no study {args.study} in {hide_password(url)} (there: {', '.join(names) or 'none'})"
        )
    optuna_study = optuna.load_study(study_name=args.study, storage=storage)
    all_trials = optuna_study.get_trials()
    retried_as = {}
    for t in all_trials:
        for number in t.system_attrs.get("retry_history", []):
            retried_as[number] = t.number
    order = {
        TrialState.COMPLETE: 0,
        TrialState.PRUNED: 1,
        TrialState.RUNNING: 2,
        TrialState.WAITING: 3,
        TrialState.FAIL: 4,
    }
    ranked = sorted(
        all_trials,
        key=lambda t: (order[t.state], -t.user_attrs.get("mean_reward", -math.inf), t.number),
    )
    attrs = optuna_study.user_attrs
    print(
        f"study {args.study}: --network {study_network(attrs)} {command_line(attrs)}; objective: "
        "mean episode reward over the last tenth of the episodes, averaged over the seeds"
    )
    print(
        f"{'trial':>5}  {'learning_rate':>13}  {'decay_rate':>10}  {'init':<16}  {'state':<18}  "
        f"{'objective':>9}  {'episodes':>8}  {'points won':>19}  {'games won':>13}  {'hours':>6}"
    )
    for t in ranked:
        print(report_line(t, retried_as))
    figure = draw_report(optuna_study, all_trials, pathlib.Path(args.runs) / args.study)
    print(f"figure: {figure}")
    print(study_total(all_trials))
    return 0


def report_line(t, retried_as):
    """One trial's row of the report's table."""
    a = t.user_attrs
    state = t.state.name.lower()
    if t.state == TrialState.FAIL and t.number in retried_as:
        state = f"failed, retried {retried_as[t.number]}"
    points = "-"
    if a.get("points_played"):
        share = a["points_won"] / a["points_played"]
        points = f"{share:6.1%} ({a['points_won']}/{a['points_played']})"
    games = f"{a['games_won']}/{a['games']}" if "games" in a else "-"
    hours = a.get("hours", trial_hours(t))
    objective_text = f"{a['mean_reward']:+.3f}" if "mean_reward" in a else "-"
    # A trial waiting in the queue (--enqueue) has its setting only as Optuna's fixed params.
    params = t.params or t.system_attrs.get("fixed_params", {})
    return (
        f"{t.number:>5}  {params.get('learning_rate', math.nan):>13.3g}  "
        f"{params.get('decay_rate', math.nan):>10.4g}  {params.get('init', '-'):<16}  "
        f"{state:<18}  {objective_text:>9}  {a.get('episodes', '-'):>8}  {points:>19}  "
        f"{games:>13}  {hours:>6.2f}"
    )


def study_total(all_trials):
    """The report's closing line: the finished trials and the sum of their
    hours column, the figure to quote for the study's hours of training."""
    counts = collections.Counter(t.state for t in all_trials)
    finished = [t for t in all_trials if t.state in FINISHED]
    hours = sum(t.user_attrs.get("hours", trial_hours(t)) for t in finished)
    return (
        f"study total: {len(finished)} finished trials ({counts[TrialState.COMPLETE]} complete, "
        f"{counts[TrialState.PRUNED]} pruned), {hours:.2f} hours of training: the sum of their "
        "hours (each its slowest seed's, as the seeds train side by side; a retried trial's "
        "include its failed tries')"
    )


def trial_hours(t):
    if t.datetime_start is None:
        return 0.0
    end = t.datetime_complete or datetime.datetime.now()
    return (end - t.datetime_start).total_seconds() / 3600


def draw_report(optuna_study, all_trials, folder):
    """report.png: objective against learning rate (colour: decay rate,
    marker: initialiser) and each trial's reported running means; beside it
    Optuna's own plots, each in its own file, where the study has enough for them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    figure, (left, right) = plt.subplots(1, 2, figsize=(14, 5.5))
    draw_objective_by_setting(figure, left, all_trials)
    network_name = study_network(optuna_study.user_attrs)
    title = f"study {optuna_study.study_name} (--network {network_name}): objective by setting"
    left.set_title(title)
    draw_reported_means(right, all_trials)
    figure.tight_layout()
    path = folder / "report.png"
    # The title in the file's metadata too: what an image viewer, or a test, reads back.
    figure.savefig(path, dpi=100, metadata={"Title": title})
    plt.close(figure)
    draw_optuna_plots(optuna_study, folder, plt)
    return path


def draw_objective_by_setting(figure, axes, all_trials):
    import matplotlib

    # More markers than initialisers: the search block may name a few more.
    markers = dict(zip(INITIALISERS, "os^Dv<>ph*", strict=False))
    scored = [
        t for t in all_trials if "mean_reward" in t.user_attrs and "learning_rate" in t.params
    ]
    colours = matplotlib.colormaps["viridis"]
    norm = matplotlib.colors.Normalize(*DECAY_RATE)
    for rank, t in enumerate(sorted(scored, key=lambda t: t.params["learning_rate"])):
        pruned = t.state == TrialState.PRUNED
        axes.scatter(
            t.params["learning_rate"],
            t.user_attrs["mean_reward"],
            s=60,
            marker=markers.get(t.params["init"], "x"),
            color=colours(norm(t.params["decay_rate"])),
            alpha=0.4 if pruned else 0.75,
            edgecolors="red" if pruned else "black",
        )
        # Neighbours in learning rate take turns above and below, so that
        # close settings keep legible numbers.
        axes.annotate(
            str(t.number),
            (t.params["learning_rate"], t.user_attrs["mean_reward"]),
            fontsize=7,
            xytext=(5, 5 if rank % 2 == 0 else -11),
            textcoords="offset points",
        )
    axes.set_xscale("log")
    axes.set_xlim(*LEARNING_RATE)
    axes.set_xlabel("learning rate")
    axes.set_ylabel("mean episode reward, last tenth (pruned: faint, red edge)")
    figure.colorbar(matplotlib.cm.ScalarMappable(norm, colours), ax=axes, label="decay rate")
    for name, marker in markers.items():
        axes.scatter([], [], marker=marker, color="grey", label=name)
    axes.legend(title="init", fontsize=8, loc="best")
    axes.grid(alpha=0.3)


def draw_reported_means(axes, all_trials):
    import matplotlib

    for t in all_trials:
        if t.intermediate_values:
            steps = sorted(t.intermediate_values)
            axes.plot(
                steps,
                [t.intermediate_values[s] for s in steps],
                "--" if t.state == TrialState.PRUNED else "-",
                marker=".",
                color=matplotlib.colormaps["tab20"](t.number % 20),
                label=f"{t.number} ({t.state.name.lower()})",
            )
    axes.set_xlabel("episode")
    axes.set_ylabel("the seeds' mean running mean (reported to the pruner)")
    axes.set_title("trials as they trained (pruned: dashed)")
    axes.grid(alpha=0.3)
    if any(t.intermediate_values for t in all_trials):
        axes.legend(fontsize=7, ncol=2)


def draw_optuna_plots(optuna_study, folder, plt):
    from optuna.visualization import matplotlib as optuna_plots

    complete = optuna_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    plots = {
        "history": optuna_plots.plot_optimization_history,
        "slice": optuna_plots.plot_slice,
        "timeline": optuna_plots.plot_timeline,
    }
    if len(complete) >= 2 and len({tuple(sorted(t.params.items())) for t in complete}) >= 2:
        plots["importances"] = optuna_plots.plot_param_importances
    for name, plot in plots.items():
        if not complete and name != "timeline":
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # matplotlib's notes on a study of one or two points
            try:
                axes = plot(optuna_study)
            except (ValueError, RuntimeError, ZeroDivisionError):
                continue  # a study too small for this plot yet
            figure = axes.figure if hasattr(axes, "figure") else np.ravel(axes)[0].figure
            figure.set_size_inches(
                max(figure.get_size_inches()[0], 8), max(figure.get_size_inches()[1], 5)
            )
            figure.tight_layout()
            figure.savefig(folder / f"report-{name}.png", dpi=100)
        plt.close(figure)


# --- Flags --------------------------------------------------------------------


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text}: must be > 0")
    return value


class Parser(argparse.ArgumentParser):
    def error(self, message):
        fail(message)


def parse_args(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    run_flags = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = Parser(
        description=textwrap.fill(
            "Search the tutorial's learning rate, RMSProp decay rate and initialiser with "
            "Optuna, for one --network a study. Each trial trains one setting with seeds 1..S "
            "side by side. The "
            f"objective: {OBJECTIVE}. Flags after -- go to every run of tutorial_atari_pong.py "
            "(e.g. -- --batch-size 5).",
            79,
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  python sweep.py --trials 20 --episodes 3000 --seeds 2\n"
        "  python sweep.py --trials 20 --episodes 3000 "
        "--storage postgresql://user:pw@host/db --study pong\n"
        "  python sweep.py --report",
    )
    add_trial_flags(parser)
    add_sweep_flags(parser)
    args = parser.parse_args(argv)
    if args.grace_period < 5:
        parser.error("--grace-period: at least 5 seconds")
    args.run_flags = run_flags
    return args


def add_trial_flags(parser):
    """What each trial trains, and where the study and its runs live."""
    parser.add_argument(
        "--trials",
        type=positive_int,
        default=trials,
        help="run until the study holds this many finished (complete or pruned) trials "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--episodes",
        type=positive_int,
        default=episodes,
        help="episodes each run trains (default: %(default)s)",
    )
    parser.add_argument(
        "--seeds",
        type=positive_int,
        default=seeds,
        help="runs per trial, seeds 1..S (default: %(default)s)",
    )
    parser.add_argument(
        "--runs",
        default=runs,
        help="folder of the trials' runs (and of the default database) (default: %(default)s)",
    )
    parser.add_argument(
        "--study", default=study, help="the study's name in the database (default: %(default)s)"
    )
    parser.add_argument(
        "--network",
        choices=pong.NETWORKS,
        default=network,
        help="the policy every run trains; a study records its network when it is made and "
        "refuses another (default: %(default)s)",
    )
    parser.add_argument(
        "--storage",
        help="an Optuna database URL (default: sqlite:///RUNS/studies.db); the same "
        "URL and --study on many machines share one study",
    )


def add_sweep_flags(parser):
    """How the sweep looks at, prunes and retries its trials, and what it
    shows instead of training."""
    parser.add_argument("--no-prune", action="store_true", help="train every trial to its end")
    parser.add_argument(
        "--save-every",
        type=positive_int,
        default=save_every,
        help="episodes between the runs' checkpoints and the reports to the median pruner "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--enqueue",
        action="append",
        default=[],
        metavar="SETTING",
        help="try this setting next, e.g. learning_rate=3e-4,decay_rate=0.95,init=he-normal "
        "(left out: the script's default)",
    )
    parser.add_argument(
        "--grace-period",
        type=positive_int,
        default=grace_period,
        help="seconds without a sweep's heartbeat before its trial counts as dead and "
        "another sweep (or the next one) retries it (default: %(default)s)",
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="print the study's trials, best first, and draw RUNS/STUDY/report.png; train nothing",
    )


def main(argv=None):
    args = parse_args(argv)
    try:
        return report(args) if args.report else sweep(args)
    except SweepError as error:
        fail(error, error.status)
    except (optuna.exceptions.StorageInternalError, OSError) as error:
        fail(" ".join(str(error).split())[:300], 1)


if __name__ == "__main__":
    sys.exit(main())
