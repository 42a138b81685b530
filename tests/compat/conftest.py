"""Compatibility suite: drives a running `keel dev` with the real, unmodified Marathon, Chronos and Metronome
clients from PyPI (pinned in requirements.txt; `.ci/compat` provisions them and runs this suite).

One `keel dev` serves every test: it is started once per session from KEEL_BIN (default: target/debug/keel
under the repository root) on a free loopback port, with its own data directory and without Docker.

Every API of `keel dev` needs a credential (only /health and /ping are public). On start it writes its admin
token to DATA_DIR/admin.token (mode 0600, the token on the first line; its principal is `admin`), which the
`keel` fixture reads into `Keel.token`. The clients present it the way each supports (see their fixtures); a
raw `requests` call sends `keel.headers` (`Authorization: Bearer <token>`).
"""

import collections
import collections.abc
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

# marathon-python 0.13.0 still uses the ABC aliases that Python 3.10 removed from `collections`
# (marathon/util.py: `collections.Iterable`). Restore them before any test module imports it.
for _name in ("Iterable", "Mapping", "MutableMapping", "Sequence", "MutableSequence", "Callable"):
    if not hasattr(collections, _name):
        setattr(collections, _name, getattr(collections.abc, _name))

# Loopback traffic never goes through a proxy (httplib2, used by chronos-python, honours http_proxy).
for _var in ("NO_PROXY", "no_proxy"):
    os.environ[_var] = ",".join(filter(None, [os.environ.get(_var), "127.0.0.1", "localhost"]))

REPO_ROOT = Path(__file__).resolve().parents[2]
LOG_TAIL_LINES = 200
STARTUP_TIMEOUT = 90.0
# The principal of the admin token `keel dev` makes; HTTP Basic credentials are this name and the token.
ADMIN_USER = "admin"


@dataclass
class Keel:
    url: str  # e.g. http://127.0.0.1:41234
    host: str
    port: int
    log_path: Path
    process: subprocess.Popen
    data_dir: Path
    token: str = ""  # the admin token from data_dir/admin.token, read once keel dev is healthy

    @property
    def hostport(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def user(self) -> str:
        """The token's principal: the user name of HTTP Basic credentials (the password is the token)."""
        return ADMIN_USER

    @property
    def headers(self) -> dict:
        """What a raw `requests` call sends to authenticate."""
        return {"Authorization": f"Bearer {self.token}"}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"(cannot read {path}: {e})"
    return "\n".join(text.splitlines()[-lines:])


def _keel_bin() -> Path:
    configured = os.environ.get("KEEL_BIN")
    return Path(configured).resolve() if configured else REPO_ROOT / "target" / "debug" / "keel"


@pytest.fixture(scope="session")
def keel(tmp_path_factory, request):
    """A running `keel dev`; yields a Keel with its base URL. Fails (never skips) when it cannot start."""
    binary = _keel_bin()
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        pytest.fail(f"keel binary not found or not executable: {binary} (build it, or set KEEL_BIN)")
    workdir = tmp_path_factory.mktemp("keel")
    data_dir = workdir / "data"
    log_path = workdir / "keel.log"
    request.config._keel_log_path = log_path
    host = "127.0.0.1"
    port = _free_port()
    url = f"http://{host}:{port}"
    env = dict(os.environ)
    env.setdefault("KEEL_LOG", "info")
    env.setdefault("NO_COLOR", "1")  # plain text in the log file
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(binary), "dev", "--listen", f"{host}:{port}", "--data-dir", str(data_dir), "--no-docker"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=workdir,
            env=env,
        )
    instance = Keel(url=url, host=host, port=port, log_path=log_path, process=process, data_dir=data_dir)
    try:
        _wait_healthy(instance)
        instance.token = _read_admin_token(instance)
        yield instance
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        if request.session.testsfailed:
            _print_log_tail(request.config, log_path)
            request.config._keel_log_printed = True


def _wait_healthy(instance: Keel) -> None:
    """Polls GET /health until it answers 200 (any other answer, or none, means not yet ready)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    last = "no answer"
    while time.monotonic() < deadline:
        code = instance.process.poll()
        if code is not None:
            pytest.fail(f"keel dev exited with {code} before it was healthy; log:\n{_tail(instance.log_path)}")
        try:
            r = requests.get(f"{instance.url}/health", timeout=2)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}: {r.text[:200]}"
        except requests.RequestException as e:
            last = str(e)
        time.sleep(0.2)
    pytest.fail(f"keel dev not healthy within {STARTUP_TIMEOUT:.0f}s (last: {last}); log:\n{_tail(instance.log_path)}")


def _read_admin_token(instance: Keel) -> str:
    """The admin token `keel dev` wrote to DATA_DIR/admin.token (first line); fails when there is none."""
    path = instance.data_dir / "admin.token"
    deadline = time.monotonic() + 10
    while True:
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            lines = []
        token = lines[0].strip() if lines else ""
        if token:
            break
        if time.monotonic() >= deadline:
            pytest.fail(f"keel dev is healthy but wrote no admin token to {path}; log:\n{_tail(instance.log_path)}")
        time.sleep(0.2)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        pytest.fail(f"{path} has mode {mode:04o}: the admin token must be readable by its owner only (0600)")
    return token


def _print_log_tail(config, log_path: Path) -> None:
    text = f"last {LOG_TAIL_LINES} lines of {log_path}:\n{_tail(log_path)}\n"
    capman = config.pluginmanager.getplugin("capturemanager")
    reporter = config.pluginmanager.getplugin("terminalreporter")
    if capman is not None and reporter is not None:
        with capman.global_and_fixture_disabled():
            reporter.write_sep("=", "keel dev log (a test failed)")
            reporter.write_line(text)
    else:  # pragma: no cover - plugins disabled
        print(text)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Fallback: shows the log tail if the fixture's teardown could not print it."""
    log_path = getattr(config, "_keel_log_path", None)
    if log_path and terminalreporter.stats.get("failed") and not getattr(config, "_keel_log_printed", False):
        terminalreporter.write_sep("=", "keel dev log (a test failed)")
        terminalreporter.write_line(_tail(log_path))


@pytest.fixture(scope="session")
def base_url(keel) -> str:
    return keel.url


@pytest.fixture(scope="session")
def token(keel) -> str:
    """keel dev's admin token."""
    return keel.token
