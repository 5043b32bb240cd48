"""Configuration: a TOML file, ``IDC_SYNC_*`` environment variables over it, command-line
flags over both. Every mistake is reported by key and by where it came from."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from idc_sync.core.errors import ConfigurationError
from idc_sync.core.layout import DEFAULT_TEMPLATE
from idc_sync.core.model import Source
from idc_sync.core.policy import LicensePolicy
from idc_sync.core.schedule import BandwidthSchedule, Window, parse_clock
from idc_sync.core.selection import split_values
from idc_sync.core.shard import Shard
from idc_sync.net.options import NetOptions, parse_proxy
from idc_sync.net.wire import LowSpeed

ENV_PREFIX = "IDC_SYNC_"


class Endpoints(BaseModel):
    """Where each cloud is reached; tests and private mirrors point these at a local server."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    aws: str = "https://s3.amazonaws.com"
    gcs: str = "https://storage.googleapis.com"

    @field_validator("aws", "gcs")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"endpoint must be an http:// or https:// URL, got {value!r}")
        return value.rstrip("/")


class Licenses(BaseModel):
    """License policy: glob patterns over ``license_short_name``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    # pattern -> a separate mirror root, e.g. {"CC BY-NC*" = "/srv/idc-nc"}
    destinations: dict[str, Path] = Field(default_factory=dict)


class HttpSettings(BaseModel):
    """The daemon's status and metrics server."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # host:port; "" turns the server off. Loopback by default: /status tells whoever can
    # reach it what the mirror holds.
    listen: str = "127.0.0.1:9760"

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.strip().rpartition(":")
        if value.strip() and (not sep or not host or not port.isdigit() or int(port) > 65535):
            raise ValueError(f"listen must be host:port (e.g. 127.0.0.1:9760) or empty: {value!r}")
        return value.strip()


class BandwidthWindow(BaseModel):
    """A ``[[bandwidth]]`` table: from ``from`` (included) to ``to`` (excluded), local time
    HH:MM, crossing midnight when ``to`` is earlier, transfers share ``max_bytes_per_second``
    (0 = unlimited) instead of the top-level cap."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    start: str = Field(alias="from")
    end: str = Field(alias="to")
    max_bytes_per_second: int = Field(ge=0)

    @field_validator("start", "end")
    @classmethod
    def _clock(cls, value: str) -> str:
        return f"{parse_clock(value):%H:%M}"

    @model_validator(mode="after")
    def _not_empty(self) -> BandwidthWindow:
        self.window()
        return self

    def window(self) -> Window:
        return Window(parse_clock(self.start), parse_clock(self.end), self.max_bytes_per_second)


class Settings(BaseSettings):
    """Every setting idc-sync reads; field names are the TOML keys."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )
    # key -> "--collection", "IDC_SYNC_COLLECTIONS" or the config file: for messages
    _origins: dict[str, str] = PrivateAttr(default_factory=dict)

    destination: Path | None = None
    state_dir: Path | None = None
    source: Source = "aws"
    endpoints: Endpoints = Field(default_factory=Endpoints)
    dir_template: str = DEFAULT_TEMPLATE

    collections: list[str] = Field(default_factory=list)
    series: list[str] = Field(default_factory=list)
    patient_ids: list[str] = Field(default_factory=list)
    study_instance_uids: list[str] = Field(default_factory=list)
    sql: str | None = None
    manifests: list[Path] = Field(default_factory=list)
    # entries only earlier IDC releases know (removed from IDC) are fatal too, not reported
    strict: bool = False
    # series that leave the selection are retired (rsync --delete); without it a selection
    # adds to what the mirror holds
    prune: bool = False
    # a plan may retire at most this share of the mirror's verified files because they left
    # the selection (any reason, with retired = "delete") unless allow_retire is set
    max_retire_fraction: float = Field(default=0.25, ge=0.0, le=1.0)
    allow_retire: bool = False

    licenses: Licenses = Field(default_factory=Licenses)

    # objects and series in flight, in all event loops together
    concurrency: int = Field(default=256, ge=1, le=4096)
    series_concurrency: int = Field(default=32, ge=1, le=1024)
    # bytes of small objects' bodies (up to 8 MiB, read whole) held in memory at once, in
    # all event loops together: past it, GETs wait for bodies to be written (a larger body
    # than a loop's share goes alone)
    body_memory_bytes: int = Field(default=128 << 20, ge=1 << 20, le=1 << 40)
    # event loops of the data plane: this process and workers - 1 worker processes leasing
    # from the same queue (run/pool.py); 0: one per 1,000 objects to fetch, at most one
    # per core
    workers: int = Field(default=0, ge=0, le=256)
    max_attempts: int = Field(default=6, ge=1, le=100)
    max_integrity_attempts: int = Field(default=3, ge=1, le=20)
    # an object or listing that fails for good on `source` is fetched from the other cloud
    # (aws <-> gcs) and verified against the same checksum
    failover: bool = False
    lease_seconds: float = Field(default=600.0, gt=0)
    # "s5cmd": batches of objects fetched by the s5cmd program, every file verified by us
    engine: Literal["native", "s5cmd"] = "native"
    # "fastest": verify with the cheapest full-object checksum the source publishes
    # (CRC64NVME, CRC32C, CRC32, SHA-256), MD5 only where nothing cheaper exists; "md5":
    # MD5 (or the multipart ETag) wherever there is one
    checksum: Literal["fastest", "md5"] = "fastest"
    # series that leave the selection or the IDC release: move (default), keep or delete
    retired: Literal["move", "keep", "delete"] = "move"
    retired_dir: Path | None = None
    # one CSV row per verified file: where it came from and how it was verified
    provenance_file: Path | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"

    # The daemon (`idc-sync serve`): replan every replan_interval seconds (and on SIGHUP);
    # on SIGTERM let in-flight files finish for up to drain_seconds.
    replan_interval: float = Field(default=86400.0, gt=0)
    drain_seconds: float = Field(default=60.0, ge=0)
    http: HttpSettings = Field(default_factory=HttpSettings)
    # "K/N": mirror only the series whose crdc_series_uuid hashes to K of N (see shard.py)
    shard: str | None = None

    # Following IDC releases (run/follow.py): the package index to look at for a newer
    # idc-index-data (Simple repository API), how often `serve` looks (seconds; 0 = never;
    # it also looks at start and on SIGHUP), whether to fetch that release into the state
    # directory and mirror it, and the most its wheel may take, downloaded or unpacked.
    index_url: str = "https://pypi.org/simple/"
    release_check_interval: float = Field(default=86400.0, ge=0)
    follow_releases: bool = False
    max_release_wheel_bytes: int = Field(default=1_000_000_000, gt=0)

    # Bandwidth cap over all transfers, bytes per second (0 = unlimited); [[bandwidth]]
    # windows of local time override it (see schedule.py).
    max_bytes_per_second: int = Field(default=0, ge=0)
    bandwidth: list[BandwidthWindow] = Field(default_factory=list)

    # The way to the buckets (see net/options.py). proxy: None reads HTTP(S)_PROXY,
    # ALL_PROXY and NO_PROXY; "" is no proxy at all; "http://host:port" overrides them.
    proxy: str | None = None
    # Trust only these CAs (a TLS-inspecting proxy's) instead of the system store.
    ca_bundle: Path | None = None
    connect_timeout: float = Field(default=30.0, gt=0, le=600)
    # An attempt moving slower than this for low_speed_seconds is abandoned and retried
    # (curl's --speed-limit / --speed-time); 0 keeps only "no byte for low_speed_seconds".
    low_speed_bytes_per_second: int = Field(default=1024, ge=0)
    low_speed_seconds: float = Field(default=30.0, gt=0, le=3600)

    @field_validator("proxy")
    @classmethod
    def _proxy_url(cls, value: str | None) -> str | None:
        if value is not None and value.strip():
            try:
                parse_proxy(value, "proxy")
            except ConfigurationError as error:
                raise ValueError(str(error).removeprefix("proxy: ")) from None
        return value

    @field_validator("index_url")
    @classmethod
    def _index_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"index_url must be an http:// or https:// URL, got {value!r}")
        return value

    @field_validator("bandwidth")
    @classmethod
    def _windows_apart(cls, value: list[BandwidthWindow]) -> list[BandwidthWindow]:
        BandwidthSchedule(windows=tuple(w.window() for w in value))  # raises on overlap
        return value

    @model_validator(mode="after")
    def _cap_needs_native_engine(self) -> Settings:
        # s5cmd moves the bytes itself: a cap it cannot honour must not pass silently
        if self.engine != "native" and not self.bandwidth_schedule.always_unlimited:
            raise ValueError('max_bytes_per_second and [[bandwidth]] caps need engine = "native"')
        return self

    @field_validator("shard")
    @classmethod
    def _shard_spec(cls, value: str | None) -> str | None:
        return None if value is None else str(Shard.parse(value))

    @field_validator("destination", "state_dir", "retired_dir", "provenance_file")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        # A relative path means the same place whatever directory the next run starts in.
        return None if value is None else _absolute_path(value)

    @field_validator("manifests")
    @classmethod
    def _absolute_all(cls, value: list[Path]) -> list[Path]:
        return [_absolute_path(path) for path in value]

    @field_validator("collections", "series", "patient_ids", "study_instance_uids")
    @classmethod
    def _comma_separated(cls, value: list[str]) -> list[str]:
        return list(split_values(value))

    @field_validator("licenses")
    @classmethod
    def _absolute_roots(cls, value: Licenses) -> Licenses:
        roots = {pattern: _absolute_path(root) for pattern, root in value.destinations.items()}
        return value.model_copy(update={"destinations": roots})

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Flags (init kwargs) over environment over the TOML file; no .env, no secrets dir.
        return (init_settings, env_settings, _TomlSource(settings_cls))

    @property
    def mirror_root(self) -> Path:
        if self.destination is None:
            raise ConfigurationError(
                "destination is not set: give --destination DIR, "
                f"'destination' in the config file or {ENV_PREFIX}DESTINATION"
            )
        return self.destination

    @property
    def state_path(self) -> Path:
        return self.state_dir if self.state_dir is not None else self.mirror_root / ".idc-sync"

    @property
    def retired_path(self) -> Path:
        """Where retired files go: ``retired_dir``; by default ``retired`` in a state
        directory outside the mirror, else ``<destination>.retired`` beside the mirror, so a
        walk of the mirror finds only the files it holds."""
        if self.retired_dir is not None:
            return self.retired_dir
        if self.state_dir is not None and (
            self.destination is None or not self.state_dir.is_relative_to(self.destination)
        ):
            return self.state_dir / "retired"
        root = self.mirror_root
        return root.with_name(root.name + ".retired")

    def origin(self, key: str) -> str:
        """Where a key's value came from: a flag, an environment variable or the config file."""
        return self._origins.get(key, "the settings")

    @property
    def provenance_path(self) -> Path:
        if self.provenance_file is not None:
            return self.provenance_file
        return self.state_path / "provenance.csv"

    @property
    def endpoint(self) -> str:
        return self.endpoints.aws if self.source == "aws" else self.endpoints.gcs

    @property
    def series_shard(self) -> Shard | None:
        return None if self.shard is None else Shard.parse(self.shard)

    @property
    def bandwidth_schedule(self) -> BandwidthSchedule:
        return BandwidthSchedule(
            self.max_bytes_per_second, tuple(w.window() for w in self.bandwidth)
        )

    @property
    def network(self) -> NetOptions:
        """How bucket requests reach the buckets: proxy, CAs, timeouts, the low-speed rule."""
        return NetOptions(
            proxy=self.proxy,
            ca_bundle=self.ca_bundle,
            connect_timeout=self.connect_timeout,
            low_speed=LowSpeed(self.low_speed_bytes_per_second, self.low_speed_seconds),
        )

    @property
    def license_policy(self) -> LicensePolicy:
        return LicensePolicy(
            include=tuple(self.licenses.include),
            exclude=tuple(self.licenses.exclude),
            destinations=tuple(self.licenses.destinations.items()),
        )


class _TomlSource(PydanticBaseSettingsSource):
    """Feeds the already-parsed TOML table (see ``load_settings``) to pydantic-settings."""

    data: dict[str, Any] = {}  # noqa: RUF012 - replaced per load, read by __call__

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self.data)


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse a TOML config file, naming the file in every error."""
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigurationError(f"config file {path} does not exist") from None
    except OSError as error:
        raise ConfigurationError(f"config file {path} cannot be read: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigurationError(f"config file {path} is not valid TOML: {error}") from None


# The flag each key is given with on the command line, for messages.
FLAGS = {
    "collections": "--collection",
    "series": "--series",
    "patient_ids": "--patient-id",
    "study_instance_uids": "--study-instance-uid",
    "sql": "--sql",
    "manifests": "--manifest",
    "destination": "--destination",
    "state_dir": "--state-dir",
}


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings; ``overrides`` are command-line values (None means "not given")."""
    file_data: dict[str, Any] = {}
    if config_file is not None:
        file_data = _relative_to_file(read_config_file(config_file), config_file)
    given = {key: value for key, value in overrides.items() if value is not None}
    _TomlSource.data = file_data
    try:
        settings = Settings(**given)
    except ValidationError as error:
        raise ConfigurationError(_describe(error, config_file, file_data, given)) from None
    finally:
        _TomlSource.data = {}
    for key in Settings.model_fields:
        origin = _origin(key, config_file, file_data, given)
        if origin is not None:
            settings._origins[key] = origin
    return settings


def _origin(
    key: str, config_file: Path | None, file_data: dict[str, Any], given: dict[str, Any]
) -> str | None:
    if key in given:
        return FLAGS.get(key, "the command line")
    variable = ENV_PREFIX + key.upper()
    if variable in os.environ:
        return variable
    if config_file is not None and key in file_data:
        return str(config_file)
    return None


def _absolute_path(path: Path) -> Path:
    """``path`` made absolute against the working directory, ``~`` expanded; symlinks are
    kept (a mirror root may be a symlink to where the disk is mounted)."""
    return Path(os.path.abspath(path.expanduser()))  # noqa: PTH100


_PATH_KEYS = ("destination", "state_dir", "retired_dir", "provenance_file")


def _relative_to_file(file_data: dict[str, Any], config_file: Path) -> dict[str, Any]:
    """Paths in a config file are relative to that file, as users expect; those from flags
    or the environment are relative to the working directory."""
    base = Path(os.path.abspath(config_file)).parent  # noqa: PTH100
    rebased = dict(file_data)
    for key in _PATH_KEYS:
        if isinstance(rebased.get(key), str):
            rebased[key] = str(base / Path(rebased[key]).expanduser())
    manifests = rebased.get("manifests")
    if isinstance(manifests, list):
        rebased["manifests"] = [
            str(base / path) if isinstance(path, str) else path for path in manifests
        ]
    licenses = rebased.get("licenses")
    if isinstance(licenses, dict) and isinstance(licenses.get("destinations"), dict):
        roots = {
            pattern: str(base / root) if isinstance(root, str) else root
            for pattern, root in licenses["destinations"].items()
        }
        rebased["licenses"] = {**licenses, "destinations": roots}
    return rebased


def default_config_file(environ: dict[str, str] | None = None) -> Path | None:
    """The config file used when no --config is given: ``$IDC_SYNC_CONFIG``, else the
    user's ``~/.config/idc-sync/config.toml`` (``$XDG_CONFIG_HOME``), else the service's
    ``/etc/idc-sync/config.toml``, the first that exists. ``IDC_SYNC_CONFIG=""`` reads none."""
    env = os.environ if environ is None else environ
    if CONFIG_VARIABLE in env:
        named = env[CONFIG_VARIABLE]
        return Path(named) if named else None
    home = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".config")
    for candidate in (Path(home) / "idc-sync" / "config.toml", SERVICE_CONFIG):
        if candidate.is_file():
            return candidate
    return None


CONFIG_VARIABLE = "IDC_SYNC_CONFIG"
SERVICE_CONFIG = Path("/etc/idc-sync/config.toml")


def _describe(
    error: ValidationError,
    config_file: Path | None,
    file_data: dict[str, Any],
    given: dict[str, Any],
) -> str:
    lines = []
    for problem in error.errors():
        location = [str(part) for part in problem["loc"]]
        key = ".".join(location) or "(top level)"
        top = location[0] if location else ""
        env_name = ENV_PREFIX + "__".join(location).upper()
        if top in given:
            origin = "from the command line"
        elif env_name in os.environ or (ENV_PREFIX + top.upper()) in os.environ:
            variable = env_name if env_name in os.environ else ENV_PREFIX + top.upper()
            origin = f"from environment variable {variable}"
        elif config_file is not None and top in file_data:
            origin = f"in {config_file}"
        else:
            origin = f"in {config_file}" if config_file is not None else "in the settings"
        message = problem["msg"]
        if problem["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"config error {origin}: {key}: {message}")
    return "\n".join(lines)
