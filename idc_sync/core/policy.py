"""License policy: which series may be mirrored, judged by ``license_short_name``, and
under which mirror root each license goes. A value with a pure decision function."""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from idc_sync.core.errors import ConfigurationError


@dataclass(frozen=True, slots=True)
class LicenseDecision:
    """What the policy says about one series: admitted or not, why not, and where it goes."""

    admitted: bool
    root: Path
    reason: str | None  # None when admitted


def _matches(license_short_name: str, pattern: str) -> bool:
    # fnmatch.fnmatch is case-sensitive on POSIX (it only normcases on Windows), so fold
    # both sides ourselves: "cc by-nc*" in a config file should mean what it says.
    return fnmatchcase(license_short_name.casefold(), pattern.casefold())


@dataclass(frozen=True, slots=True)
class LicensePolicy:
    """Glob patterns (fnmatch, case-insensitive) over ``license_short_name``.

    ``exclude`` wins over ``include``; a non-empty ``include`` admits only what it
    matches. ``destinations`` pairs a pattern with a mirror root; the first match wins.
    Note that "CC BY*" also matches "CC BY-NC 4.0"; "CC BY-NC*" matches only NC licenses.
    """

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    destinations: tuple[tuple[str, Path], ...] = ()

    def __post_init__(self) -> None:
        patterns = [*self.include, *self.exclude, *(pattern for pattern, _ in self.destinations)]
        for pattern in patterns:
            if not pattern.strip():
                raise ConfigurationError("license patterns must not be empty")

    def decide(self, license_short_name: str | None, default_root: Path) -> LicenseDecision:
        """Admit or refuse one series and choose its mirror root.

        A series with no license (only earlier releases lack one) is admitted only when
        ``include`` is empty: an include list is a promise about what lands on disk.
        """
        root = self._root_for(license_short_name, default_root)
        if license_short_name is None:
            if self.include:
                return LicenseDecision(
                    admitted=False,
                    root=root,
                    reason="license unknown; the include list admits only "
                    + ", ".join(repr(pattern) for pattern in self.include),
                )
            return LicenseDecision(admitted=True, root=root, reason=None)
        for pattern in self.exclude:
            if _matches(license_short_name, pattern):
                return LicenseDecision(
                    admitted=False,
                    root=root,
                    reason=f"license {license_short_name!r} matches exclude pattern {pattern!r}",
                )
        if self.include and not any(
            _matches(license_short_name, pattern) for pattern in self.include
        ):
            return LicenseDecision(
                admitted=False,
                root=root,
                reason=f"license {license_short_name!r} is not in include ("
                + ", ".join(repr(pattern) for pattern in self.include)
                + ")",
            )
        return LicenseDecision(admitted=True, root=root, reason=None)

    def _root_for(self, license_short_name: str | None, default_root: Path) -> Path:
        if license_short_name is not None:
            for pattern, root in self.destinations:
                if _matches(license_short_name, pattern):
                    return root
        return default_root
