"""Tests of idc_sync.config: the README's example file, the order file < environment <
command line, and errors that name the key and where it came from; plus the CLI's exit
code for a bad config file."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from idc_sync.config import ENV_PREFIX, Settings, load_settings
from idc_sync.core.errors import ConfigurationError

REPO = Path(__file__).resolve().parents[1]
IDC_SYNC = Path(sys.executable).with_name("idc-sync")

# The example of README.md's "Configuration" section, as written there.
README_EXAMPLE = """\
destination = "/srv/idc"
state_dir = "/var/lib/idc-sync"
source = "aws"
dir_template = "%collection_id/%PatientID/%StudyInstanceUID/%Modality_%SeriesInstanceUID"
collections = ["qin_pet_phantom"]
series = []
manifests = []
concurrency = 128

[endpoints]
aws = "https://s3.amazonaws.com"
gcs = "https://storage.googleapis.com"

[licenses]
exclude = ["CC BY-NC*"]
"""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the variables a test sets itself may reach the settings."""
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def readme_toml_blocks() -> list[str]:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```toml\n(.*?)```", readme, flags=re.DOTALL)


def test_the_readme_still_shows_the_example_these_tests_load() -> None:
    assert README_EXAMPLE in readme_toml_blocks()


def test_the_readme_example_loads_as_written(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path / "idc-sync.toml", README_EXAMPLE))
    assert settings.destination == Path("/srv/idc")
    assert settings.state_path == Path("/var/lib/idc-sync")
    assert settings.source == "aws"
    assert settings.endpoint == "https://s3.amazonaws.com"
    assert settings.endpoints.gcs == "https://storage.googleapis.com"
    assert settings.dir_template == (
        "%collection_id/%PatientID/%StudyInstanceUID/%Modality_%SeriesInstanceUID"
    )
    assert settings.collections == ["qin_pet_phantom"]
    assert (settings.series, settings.manifests) == ([], [])
    assert settings.concurrency == 128
    assert settings.series_concurrency == 32
    policy = settings.license_policy
    assert policy.exclude == ("CC BY-NC*",)
    assert not policy.decide("CC BY-NC 4.0", settings.mirror_root).admitted
    assert policy.decide("CC BY 4.0", settings.mirror_root).admitted


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write(tmp_path / "idc-sync.toml", README_EXAMPLE)
    monkeypatch.setenv("IDC_SYNC_CONCURRENCY", "8")
    monkeypatch.setenv("IDC_SYNC_ENDPOINTS__AWS", "http://127.0.0.1:9000/")
    settings = load_settings(config)
    assert settings.concurrency == 8
    assert settings.endpoint == "http://127.0.0.1:9000"
    # the file's other endpoint and the rest of the file still apply
    assert settings.endpoints.gcs == "https://storage.googleapis.com"
    assert settings.collections == ["qin_pet_phantom"]


def test_command_line_overrides_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write(tmp_path / "idc-sync.toml", README_EXAMPLE)
    monkeypatch.setenv("IDC_SYNC_CONCURRENCY", "8")
    monkeypatch.setenv("IDC_SYNC_DESTINATION", str(tmp_path / "from-env"))
    settings = load_settings(config, concurrency=3, destination=None, source="gcs")
    assert settings.concurrency == 3
    assert settings.source == "gcs"
    assert settings.endpoint == "https://storage.googleapis.com"
    # None means "flag not given": the environment still decides
    assert settings.destination == tmp_path / "from-env"


def test_unknown_key_names_the_key_and_the_file(tmp_path: Path) -> None:
    config = write(tmp_path / "idc-sync.toml", 'destination = "/srv/idc"\ncolections = ["x"]\n')
    with pytest.raises(ConfigurationError) as caught:
        load_settings(config)
    message = str(caught.value)
    assert "colections" in message
    assert "unknown key" in message
    assert str(config) in message


def test_unknown_nested_key_names_its_table(tmp_path: Path) -> None:
    config = write(tmp_path / "idc-sync.toml", '[licenses]\nexlude = ["CC BY-NC*"]\n')
    with pytest.raises(ConfigurationError, match=r"licenses\.exlude: unknown key") as caught:
        load_settings(config)
    assert str(config) in str(caught.value)


def test_wrong_type_names_the_key_and_the_file(tmp_path: Path) -> None:
    config = write(tmp_path / "idc-sync.toml", 'concurrency = "many"\n')
    with pytest.raises(ConfigurationError) as caught:
        load_settings(config)
    assert "concurrency" in str(caught.value)
    assert str(config) in str(caught.value)


def test_a_body_memory_below_one_mebibyte_names_the_key(tmp_path: Path) -> None:
    config = write(tmp_path / "idc-sync.toml", "body_memory_bytes = 65536\n")
    with pytest.raises(ConfigurationError) as caught:
        load_settings(config)
    assert "body_memory_bytes" in str(caught.value)
    assert load_settings(None).body_memory_bytes == 128 << 20


@pytest.mark.parametrize(
    "text",
    [
        pytest.param('destination = "/srv/idc\n', id="unterminated-string"),
        pytest.param("[licenses\nexclude = []\n", id="bad-table"),
        pytest.param("concurrency = 64\nconcurrency = 65\n", id="duplicate-key"),
    ],
)
def test_invalid_toml_names_the_file(tmp_path: Path, text: str) -> None:
    config = write(tmp_path / "idc-sync.toml", text)
    with pytest.raises(ConfigurationError, match="not valid TOML") as caught:
        load_settings(config)
    assert str(config) in str(caught.value)


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "nowhere" / "idc-sync.toml"
    with pytest.raises(ConfigurationError, match="does not exist") as caught:
        load_settings(config)
    assert str(config) in str(caught.value)


@pytest.mark.parametrize(
    ("variable", "value", "key"),
    [
        ("IDC_SYNC_CONCURRENCY", "lots", "concurrency"),
        ("IDC_SYNC_CONCURRENCY", "0", "concurrency"),
        ("IDC_SYNC_SOURCE", "azure", "source"),
        ("IDC_SYNC_ENDPOINTS__AWS", "s3.amazonaws.com", "endpoints.aws"),
    ],
)
def test_bad_environment_value_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, key: str
) -> None:
    config = write(tmp_path / "idc-sync.toml", README_EXAMPLE)
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as caught:
        load_settings(config)
    message = str(caught.value)
    assert f"environment variable {variable}" in message
    assert f"{key}:" in message


def test_bad_command_line_value_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="from the command line: concurrency"):
        load_settings(None, concurrency=0)


def test_manifests_in_the_file_are_relative_to_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_dir = tmp_path / "etc" / "idc-sync"
    config_dir.mkdir(parents=True)
    config = write(
        config_dir / "idc-sync.toml",
        'manifests = ["cohort.s5cmd", "lists/more.txt", "/srv/manifests/abs.txt"]\n',
    )
    monkeypatch.chdir(tmp_path)
    settings = load_settings(config)
    assert settings.manifests == [
        config_dir / "cohort.s5cmd",
        config_dir / "lists" / "more.txt",
        Path("/srv/manifests/abs.txt"),
    ]


def test_manifests_given_on_the_command_line_are_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    config = write(config_dir / "idc-sync.toml", README_EXAMPLE)
    monkeypatch.chdir(tmp_path)
    settings = load_settings(config, manifests=[Path("cohort.s5cmd")])
    assert [path.resolve() for path in settings.manifests] == [tmp_path / "cohort.s5cmd"]


def test_state_path_defaults_to_a_directory_in_the_destination(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path / "c.toml", 'destination = "/srv/idc"\n'))
    assert settings.state_path == Path("/srv/idc/.idc-sync")


def test_a_missing_destination_is_reported_when_it_is_needed() -> None:
    settings = Settings()
    with pytest.raises(ConfigurationError, match="destination is not set"):
        _ = settings.state_path


def test_license_policy_is_built_from_the_licenses_table(tmp_path: Path) -> None:
    config = write(
        tmp_path / "c.toml",
        'destination = "/srv/idc"\n'
        "[licenses]\n"
        'include = ["CC BY*"]\n'
        'exclude = ["CC BY-NC 3.0"]\n'
        'destinations = { "CC BY-NC*" = "/srv/idc-nc" }\n',
    )
    settings = load_settings(config)
    policy = settings.license_policy
    assert policy.include == ("CC BY*",)
    assert policy.exclude == ("CC BY-NC 3.0",)
    assert policy.destinations == (("CC BY-NC*", Path("/srv/idc-nc")),)
    nc4 = policy.decide("CC BY-NC 4.0", settings.mirror_root)
    assert (nc4.admitted, nc4.root) == (True, Path("/srv/idc-nc"))
    assert not policy.decide("CC BY-NC 3.0", settings.mirror_root).admitted
    assert policy.decide("CC BY 4.0", settings.mirror_root).root == Path("/srv/idc")
    assert not policy.decide(
        "National Library of Medicine Terms and Conditions", settings.mirror_root
    ).admitted


@pytest.mark.slow
@pytest.mark.parametrize(
    ("text", "named"),
    [
        pytest.param('colections = ["qin_pet_phantom"]\n', "colections", id="unknown-key"),
        pytest.param('collections = ["qin_pet_phantom"\n', "not valid TOML", id="invalid-toml"),
    ],
)
def test_cli_plan_with_a_bad_config_exits_2_and_touches_nothing(
    tmp_path: Path, text: str, named: str
) -> None:
    destination = tmp_path / "mirror"
    config = write(tmp_path / "bad.toml", f'destination = "{destination}"\n{text}')
    environment = {
        name: value for name, value in os.environ.items() if not name.startswith(ENV_PREFIX)
    }
    environment["COLUMNS"] = "500"  # keep the error message on one line
    result = subprocess.run(
        [str(IDC_SYNC), "plan", "--config", str(config)],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert named in result.stderr
    assert "bad.toml" in result.stderr
    assert not destination.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bad.toml"]
