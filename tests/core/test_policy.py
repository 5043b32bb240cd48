"""Tests of idc_sync.core.policy over the license values of the installed IDC release."""

from __future__ import annotations

from pathlib import Path

import duckdb
import idc_index_data
import pytest
from hypothesis import given
from hypothesis import strategies as st

from idc_sync.core.errors import ConfigurationError
from idc_sync.core.policy import LicenseDecision, LicensePolicy

DEFAULT_ROOT = Path("/srv/idc")
NC_ROOT = Path("/srv/idc-nc")


@pytest.fixture(scope="module")
def real_licenses() -> list[str]:
    """Every distinct license_short_name in the installed idc-index-data release."""
    parquet = idc_index_data.IDC_INDEX_PARQUET_FILEPATH
    rows = duckdb.sql(
        f"SELECT DISTINCT license_short_name FROM read_parquet('{parquet}') "
        "WHERE license_short_name IS NOT NULL ORDER BY 1"
    ).fetchall()
    return [row[0] for row in rows]


def test_the_release_has_the_licenses_these_tests_rely_on(real_licenses: list[str]) -> None:
    # Measured on idc-index-data 25.0.5; the NLM one is spelled out in full in the index.
    assert {"CC BY 3.0", "CC BY 4.0", "CC BY-NC 3.0", "CC BY-NC 4.0"} <= set(real_licenses)
    assert any(name.startswith("National Library of Medicine") for name in real_licenses)


def test_excluding_nc_removes_exactly_the_nc_licenses(real_licenses: list[str]) -> None:
    policy = LicensePolicy(exclude=("CC BY-NC*",))
    refused = {name for name in real_licenses if not policy.decide(name, DEFAULT_ROOT).admitted}
    assert refused == {"CC BY-NC 3.0", "CC BY-NC 4.0"}


def test_exclusion_reason_names_the_license_and_pattern() -> None:
    decision = LicensePolicy(exclude=("CC BY-NC*",)).decide("CC BY-NC 4.0", DEFAULT_ROOT)
    assert decision.admitted is False
    assert decision.reason is not None
    assert "'CC BY-NC 4.0'" in decision.reason
    assert "'CC BY-NC*'" in decision.reason


def test_destinations_route_nc_to_a_separate_root(real_licenses: list[str]) -> None:
    policy = LicensePolicy(destinations=(("CC BY-NC*", NC_ROOT),))
    roots = {name: policy.decide(name, DEFAULT_ROOT).root for name in real_licenses}
    assert {name for name, root in roots.items() if root == NC_ROOT} == {
        "CC BY-NC 3.0",
        "CC BY-NC 4.0",
    }
    assert all(root in (NC_ROOT, DEFAULT_ROOT) for root in roots.values())
    assert all(policy.decide(name, DEFAULT_ROOT).admitted for name in real_licenses)


def test_first_matching_destination_wins() -> None:
    policy = LicensePolicy(destinations=(("CC BY-NC 4.0", Path("/nc4")), ("CC BY-NC*", NC_ROOT)))
    assert policy.decide("CC BY-NC 4.0", DEFAULT_ROOT).root == Path("/nc4")
    assert policy.decide("CC BY-NC 3.0", DEFAULT_ROOT).root == NC_ROOT


def test_include_admits_only_matches(real_licenses: list[str]) -> None:
    policy = LicensePolicy(include=("CC BY [0-9]*",))
    admitted = {name for name in real_licenses if policy.decide(name, DEFAULT_ROOT).admitted}
    assert admitted == {"CC BY 3.0", "CC BY 4.0"}
    refused = policy.decide("CC BY-NC 3.0", DEFAULT_ROOT)
    assert refused.reason is not None
    assert "not in include" in refused.reason


def test_a_broad_cc_by_glob_also_matches_nc() -> None:
    # Documented surprise: "CC BY*" is a prefix of every Creative Commons short name.
    policy = LicensePolicy(include=("CC BY*",))
    assert policy.decide("CC BY-NC 4.0", DEFAULT_ROOT).admitted


def test_exclude_wins_over_include() -> None:
    policy = LicensePolicy(include=("CC*",), exclude=("*NC*",))
    decision = policy.decide("CC BY-NC 3.0", DEFAULT_ROOT)
    assert decision == LicenseDecision(
        admitted=False,
        root=DEFAULT_ROOT,
        reason="license 'CC BY-NC 3.0' matches exclude pattern '*NC*'",
    )
    assert policy.decide("CC BY 4.0", DEFAULT_ROOT) == LicenseDecision(True, DEFAULT_ROOT, None)


def test_patterns_are_case_insensitive() -> None:
    policy = LicensePolicy(exclude=("cc by-nc*",), destinations=(("national library*", NC_ROOT),))
    assert not policy.decide("CC BY-NC 4.0", DEFAULT_ROOT).admitted
    nlm = "National Library of Medicine Terms and Conditions; May 21, 2019"
    assert policy.decide(nlm, DEFAULT_ROOT).root == NC_ROOT


def test_unknown_license_is_admitted_only_without_an_include_list() -> None:
    assert LicensePolicy().decide(None, DEFAULT_ROOT) == LicenseDecision(True, DEFAULT_ROOT, None)
    assert LicensePolicy(exclude=("*",)).decide(None, DEFAULT_ROOT).admitted
    refused = LicensePolicy(include=("*",)).decide(None, DEFAULT_ROOT)
    assert not refused.admitted
    assert refused.reason is not None
    assert "unknown" in refused.reason


def test_unknown_license_goes_to_the_default_root() -> None:
    policy = LicensePolicy(destinations=(("*", NC_ROOT),))
    assert policy.decide(None, DEFAULT_ROOT).root == DEFAULT_ROOT


@pytest.mark.parametrize("field", ["include", "exclude"])
def test_empty_patterns_are_configuration_errors(field: str) -> None:
    with pytest.raises(ConfigurationError):
        LicensePolicy(**{field: ("CC BY 4.0", " ")})  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        LicensePolicy(destinations=(("", NC_ROOT),))


@given(
    name=st.text(),
    include=st.lists(st.text(min_size=1).filter(str.strip), max_size=3).map(tuple),
    exclude=st.lists(st.text(min_size=1).filter(str.strip), max_size=3).map(tuple),
)
def test_decision_is_consistent_with_the_patterns(
    name: str, include: tuple[str, ...], exclude: tuple[str, ...]
) -> None:
    policy = LicensePolicy(include=include, exclude=exclude)
    decision = policy.decide(name, DEFAULT_ROOT)
    # A pattern always matches itself literally unless it holds glob metacharacters.
    literal = not any(char in name for char in "*?[]")
    if literal and name in exclude:
        assert not decision.admitted
    if literal and name in include and not exclude:
        assert decision.admitted
    if not include and not exclude:
        assert decision.admitted
    assert decision.admitted == (decision.reason is None)
    assert decision.root == DEFAULT_ROOT
