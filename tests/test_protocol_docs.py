"""README's configuration example per kind of API reads the simulator's profile of that
kind: the listing, auth and paths it configures are the ones the profile's loader
settings (which the conformance suite loads with) configure, and so are the deletion keys
of the endpoint it declares."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from loaders.replica.protocol import api_from_settings
from simulator import profiles

README = Path(__file__).resolve().parent.parent / "README.md"
DELETION_KEYS = ("deleted_marker", "soft_delete_field", "deletions_path")


def examples() -> dict[str, str]:
    """Profile name -> the TOML block after its bold name in README (native: none)."""
    text = README.read_text()
    start = text.index("#### Configuration per kind of API")
    section = text[start:text.index("\n## ", start)]
    block = re.compile(r"\*\*([a-z-]+)\*\* — (?:(?!\*\*).)*?```toml\n(.*?)```", re.S)
    return dict(block.findall(section))


def test_every_profile_has_an_example():
    assert set(examples()) | {"native"} == set(profiles.PROFILES)


def _api(config: dict):
    api = api_from_settings("http://127.0.0.1:8765", "secret", config)
    paginator = dict(api.listing.paginator)
    paginator.pop("limit", None)  # the page size, when the example leaves it to page_size
    return api.listing.__class__(**{**api.listing.__dict__, "paginator": paginator}), api


@pytest.mark.parametrize("profile", sorted(set(profiles.PROFILES) - {"native"}))
def test_the_example_reads_its_profile(profile):
    documented = tomllib.loads(examples()[profile])["sources"]["replica"]
    expected = profiles.loader_settings(profile)
    (doc_listing, doc_api), (exp_listing, exp_api) = _api(documented), _api(expected)
    assert doc_listing == exp_listing
    assert dict(doc_api.auth) == dict(exp_api.auth)
    assert (doc_api.schema_path, doc_api.announcements_path, doc_api.count_path) == (
        exp_api.schema_path, exp_api.announcements_path, exp_api.count_path)
    for entity, endpoint in documented.get("endpoints", {}).items():
        want = expected["endpoints"][entity]
        for key in ("path", "primary_key", "cursor"):
            assert endpoint[key] == want[key], (entity, key)
        for key in DELETION_KEYS:
            if key in endpoint or key != "deleted_marker":
                assert endpoint.get(key) == want.get(key), (entity, key)
    if "endpoints" in expected:
        assert documented.get("endpoints"), "the profile's deletion style is not shown"
