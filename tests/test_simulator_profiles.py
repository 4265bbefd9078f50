"""The simulator's protocol profiles: the same data served with other bodies, paging,
auth, deletions and incremental parameters, read here with plain ``requests``
(tests/support/protocol_client.py), never the loader."""

from __future__ import annotations

import base64
import json
import tomllib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests
from dlt.sources.rest_api.config_setup import create_paginator
from fastapi.testclient import TestClient

from loaders.replica.settings import ENDPOINTS
from simulator import drift as drift_mod
from simulator import profiles, store
from simulator.api import TOKEN_LEEWAY, create_app
from simulator.model import ENTITIES
from simulator.platform import Platform
from tests.support import TOKEN
from tests.support.protocol_client import ProfileClient
from tests.support.simulator import Simulator, start_simulator

OTHERS = [name for name in profiles.PROFILES if name != "native"]
DELETABLE = [name for name, e in ENTITIES.items() if e.deletable]


@pytest.fixture(scope="module")
def changed_platform(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small platform that has deleted and updated records since it was generated."""
    from simulator.generate import generate
    from tests.support import AS_OF

    d = tmp_path_factory.mktemp("profiles") / "sim"
    generate(d, orders=150, seed=5, as_of=AS_OF, days=20)
    with Platform(d) as platform:
        assert platform.delete_records("orders", [10, 120]) == 2
        assert platform.delete_records("customers", [3]) == 1
        platform.touch("products", [1, 2])
        platform.tick(5)
    store.replicate(d)
    return d


def serve(directory: Path, profile: str, *args: str) -> Simulator:
    return start_simulator(directory, "--profile", profile, "--rate-limit", "0", *args)


def key(record: dict) -> str:
    return json.dumps(record, sort_keys=True)


def listings(client: ProfileClient, deletions: bool = False) -> dict[str, list[dict]]:
    out = {entity: client.read(f"v1/{entity}", page_size=40) for entity in ENTITIES}
    if deletions:
        out.update({f"{e}/deletions": client.read(f"v1/{e}/deletions", page_size=3)
                    for e in DELETABLE})
    return out


@pytest.fixture(scope="module")
def native(changed_platform: Path) -> dict[str, list[dict]]:
    sim = serve(changed_platform, "native")
    try:
        return listings(ProfileClient(sim.url, "native", TOKEN))
    finally:
        sim.stop()


def expected(profile: str, native: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """What ``profile`` serves, from what ``native`` serves."""
    p = profiles.get(profile)
    out: dict[str, list[dict]] = {}
    for entity, records in native.items():
        pk = ENTITIES[entity].primary_key
        live = [r for r in records if "deleted_at" not in r]
        dead = [r for r in records if "deleted_at" in r]
        if p.deletions == "tombstones" or not ENTITIES[entity].deletable:
            out[entity] = records
        elif p.deletions == "soft_delete":
            out[entity] = [{**r, "is_deleted": False} for r in live] + [
                {pk: r[pk], "updated_at": r["updated_at"], "is_deleted": True} for r in dead
            ]
        else:
            out[entity] = live
            out[f"{entity}/deletions"] = [{pk: r[pk], "deleted_at": r["deleted_at"]}
                                          for r in dead]
    return out


def test_the_native_listing_has_deletions_and_updates(native: dict[str, list[dict]]) -> None:
    for entity in DELETABLE:
        assert any("deleted_at" in r for r in native[entity]), entity


@pytest.mark.parametrize("profile", OTHERS)
def test_a_profile_serves_the_native_data_each_record_once_and_refuses_strangers(
    changed_platform: Path, native: dict[str, list[dict]], profile: str
) -> None:
    p = profiles.get(profile)
    sim = serve(changed_platform, profile, "--token-ttl", "120")
    try:
        client = ProfileClient(sim.url, profile, TOKEN)
        served = listings(client, deletions=p.deletions == "endpoint")
        want = expected(profile, native)
        assert set(served) == set(want)
        for name, records in served.items():
            assert len({key(r) for r in records}) == len(records), f"{name}: a record twice"
            assert sorted(map(key, records)) == sorted(map(key, want[name])), name

        # the schema endpoint, where served, describes the records as served
        schema = client.get(f"{sim.url}/v1/schema")
        if not p.schema:
            assert schema.status_code == 404
        else:
            orders = schema.json()["entities"]["orders"]
            names = {f["name"] for f in orders["fields"]}
            assert ("is_deleted" in names) == (p.deletions == "soft_delete")
            if p.deletions == "endpoint":
                assert orders["deletions_path"] == "v1/orders/deletions"

        # auth: nothing without the profile's credentials; health stays open
        url = f"{sim.url}/v1/orders"
        wrong = "not-" + TOKEN
        bad: list[dict] = [
            {},
            {"headers": {"Authorization": f"Bearer {wrong}"}},
            {"headers": {profiles.API_KEY_HEADER: wrong}},
            {"params": {profiles.API_KEY_PARAM: wrong}},
            {"auth": (profiles.BASIC_USER, wrong)},
            {"auth": ("someone", TOKEN)},
        ]
        if p.auth != "bearer":
            bad.append({"headers": {"Authorization": f"Bearer {TOKEN}"}})
        if p.auth != "http_basic":
            bad.append({"auth": (profiles.BASIC_USER, TOKEN)})
        for kwargs in bad:
            r = requests.get(url, timeout=10, **kwargs)
            assert r.status_code == 401, (kwargs, r.status_code)
            assert "data" not in r.text and "order_id" not in r.text
            assert r.headers["WWW-Authenticate"]
        assert requests.get(f"{sim.url}/health", timeout=10).status_code == 200
        if p.auth == "oauth2":
            form = {"grant_type": "client_credentials", "client_id": "salesflow"}
            token_url = f"{sim.url}/oauth/token"
            r = requests.post(token_url, data={**form, "client_secret": wrong}, timeout=10)
            assert r.status_code == 401 and r.json()["error"] == "invalid_client"
            r = requests.post(token_url, auth=("salesflow", TOKEN), timeout=10,
                              data={"grant_type": "client_credentials"})
            assert r.status_code == 200 and r.json()["expires_in"] == 120
        else:
            assert requests.post(f"{sim.url}/oauth/token", timeout=10).status_code == 404
    finally:
        sim.stop()


# --- offset and page-number paging while the platform writes -------------------------------


@pytest.mark.parametrize("profile", ["offset", "pages"])
def test_positional_paging_skips_and_repeats_nothing_while_the_platform_writes(
    platform_dir: Path, profile: str
) -> None:
    sim = serve(platform_dir, profile)
    try:
        client = ProfileClient(sim.url, profile, TOKEN)
        live_at_start = {r[0] for r in store.query(platform_dir, "SELECT order_id FROM orders")}
        served: list[dict] = []
        pages = client.pages("v1/orders", page_size=25)
        for _ in range(3):
            served += next(pages)
        read = [r["order_id"] for r in served]
        ahead = sorted(live_at_start - set(read))
        hours_ago = store.utcnow() - timedelta(hours=1)
        with Platform(platform_dir) as platform:
            platform.touch("orders", read[:6])  # read already: their places empty
            platform.touch("orders", ahead[:3])  # not read yet: they come later, newer
            platform.delete_records("orders", [read[10], ahead[5]])
            # a long transaction commits late: its row is older than rows before it
            platform.update("orders", ahead[7], updated_at=hours_ago, status="cancelled")
            platform.tick(4)
        store.replicate(platform_dir)
        for page in pages:
            served += page
    finally:
        sim.stop()

    # a soft-delete profile serves the deletions among the records
    deleted = {r["order_id"] for r in served if r.get("is_deleted")}
    assert deleted == ({read[10], ahead[5]} if profile == "pages" else set())
    versions = [(r["order_id"], r["updated_at"]) for r in served if not r.get("is_deleted")]
    assert len(set(versions)) == len(versions), "a record was served twice"
    final = dict(store.query(platform_dir, "SELECT order_id, updated_at FROM orders"))
    # every record: as it was when read, or newer; none skipped
    assert live_at_start - {ahead[5]} <= {k for k, _ in versions}
    # and the current version of every live record, new ones too
    assert set(final.items()) <= set(versions)
    assert ahead[5] not in {k for k, _ in versions}  # deleted before it was reached


# --- OAuth2 and the other styles in-process ------------------------------------------------


def test_oauth_access_tokens_expire(platform_dir: Path) -> None:
    now = [1000.0]
    app = create_app(platform_dir, TOKEN, profile="links", token_ttl=60, clock=lambda: now[0])
    form = {"grant_type": "client_credentials", "client_id": "salesflow",
            "client_secret": TOKEN}
    with TestClient(app) as c:
        answer = c.post("/oauth/token", data=form).json()
        assert answer["token_type"] == "Bearer" and answer["expires_in"] == 60
        bearer = {"Authorization": f"Bearer {answer['access_token']}"}
        assert c.get("/v1/regions", headers=bearer).status_code == 200
        now[0] += 60 + TOKEN_LEEWAY - 0.5
        assert c.get("/v1/regions", headers=bearer).status_code == 200
        now[0] += 1
        r = c.get("/v1/regions", headers=bearer)
        assert r.status_code == 401 and "expired" in r.json()["detail"]
        # a new token, client credentials in a basic-auth header this time
        again = c.post("/oauth/token", data={"grant_type": "client_credentials"},
                       auth=("salesflow", TOKEN)).json()
        fresh = {"Authorization": f"Bearer {again['access_token']}"}
        assert c.get("/v1/regions", headers=fresh).status_code == 200
        assert c.post("/oauth/token", data={**form, "grant_type": "password"}).status_code == 400
        assert c.get("/v1/regions", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 401


def _client(platform_dir: Path, profile: str, **options) -> TestClient:
    app = create_app(platform_dir, TOKEN, profile=profile, rate_limit=0, **options)
    headers = {"Authorization": f"Bearer {TOKEN}",
               profiles.API_KEY_HEADER: TOKEN}
    if profile == "link-header":
        pair = base64.b64encode(f"salesflow:{TOKEN}".encode()).decode()
        headers["Authorization"] = f"Basic {pair}"
    return TestClient(app, headers=headers)


def test_since_params_take_the_profiles_format_and_unknown_params_are_refused(
    platform_dir: Path,
) -> None:
    since = datetime(2026, 10, 20, tzinfo=timezone.utc)
    iso = since.isoformat().replace("+00:00", "Z")
    with _client(platform_dir, "native") as c:
        want = c.get("/v1/orders", params={"updated_since": iso, "limit": 5000}).json()["data"]
    assert want
    with _client(platform_dir, "link-header") as c:
        r = c.get("/v1/orders", params={"since": int(since.timestamp()), "limit": 5000})
        assert r.json() == want
        assert c.get("/v1/orders", params={"since": iso}).status_code == 400
        assert c.get("/v1/orders", params={"updated_since": iso}).status_code == 400
        # the count takes the profile's epoch as well as ISO
        n_iso = c.get("/v1/orders/count", params={"updated_before": iso}).json()["live"]
        n_epoch = c.get("/v1/orders/count",
                        params={"updated_before": int(since.timestamp())}).json()["live"]
        assert n_iso == n_epoch > 0
    with _client(platform_dir, "envelope") as c:
        r = c.get("/v1/orders", params={"modified_since": iso, "limit": 5000}).json()
        assert [{k: v for k, v in x.items() if k != "is_deleted"} for x in r["data"]] == want


def test_drifts_and_change_seq_work_under_a_profile(platform_dir: Path) -> None:
    drift_mod.add(platform_dir, drift_mod.Drift("rename", "orders", "status", to="state"))
    with _client(platform_dir, "envelope") as c:
        records = c.get("/v1/orders", params={"limit": 5}).json()["data"]
        assert all("state" in r and "status" not in r and r["is_deleted"] is False
                   for r in records)
    [(before,)] = store.query(platform_dir, "SELECT last_seq FROM replication_state")
    with Platform(platform_dir) as platform:
        platform.touch("orders", [3, 1, 2])
    store.replicate(platform_dir)
    with _client(platform_dir, "offset", change_seq=True) as c:
        later = c.get("/v1/orders", params={"since_seq": before, "limit": 50,
                                            "api_key": TOKEN}).json()
        assert later["total"] == 3
        assert [(r["order_id"], r["change_seq"]) for r in later["items"]] == [
            (1, before + 1), (2, before + 1), (3, before + 1)
        ]


# --- the loader configuration per profile --------------------------------------------------


def test_the_endpoint_declarations_copied_are_the_loaders() -> None:
    assert profiles.DEFAULT_ENDPOINTS == ENDPOINTS
    assert {e for e, spec in ENDPOINTS.items() if "deleted_marker" in spec} == set(DELETABLE)


SPEC_KEYS = {"format", "records_path", "paginator", "since_param", "since_format",
             "limit_param", "schema_path", "announcements_path", "count_path", "auth"}
AUTH_KEYS = {"bearer": set(), "api_key": {"name", "location"}, "http_basic": {"username"},
             "oauth2_client_credentials": {"token_url", "client_id"}}


@pytest.mark.parametrize("profile", list(profiles.PROFILES))
def test_loader_configuration_per_profile(profile: str) -> None:
    p = profiles.get(profile)
    settings = profiles.loader_settings(profile)
    assert set(settings) - {"endpoints"} == SPEC_KEYS
    auth = settings["auth"]
    assert set(auth) - {"type"} == AUTH_KEYS[auth["type"]]
    create_paginator(dict(settings["paginator"]))  # dlt builds it
    assert tomllib.loads(profiles.loader_toml(profile))["sources"]["replica"] == {
        "base_url": "http://127.0.0.1:8765", **settings
    }
    env = profiles.loader_env(profile, "http://127.0.0.1:1", "secret")
    assert env["SOURCES__REPLICA__TOKEN"] == "secret"
    assert env["SOURCES__REPLICA__BASE_URL"] == "http://127.0.0.1:1"
    assert json.loads(env["SOURCES__REPLICA__AUTH"]) == auth
    assert json.loads(env["SOURCES__REPLICA__PAGINATOR"]) == settings["paginator"]
    endpoints = env.get("SOURCES__REPLICA__ENDPOINTS")
    assert (endpoints is None) == (p.deletions == "tombstones")
    if endpoints:
        declared = json.loads(endpoints)
        assert set(declared) == set(ENDPOINTS)
        for entity in DELETABLE:
            extra = {"soft_delete_field": "is_deleted"} if p.deletions == "soft_delete" else {
                "deletions_path": f"v1/{entity}/deletions"}
            assert declared[entity] == {**ENDPOINTS[entity], **extra}


def test_serve_help_lists_the_profiles(capsys: pytest.CaptureFixture[str]) -> None:
    from loaders.cli import main

    with pytest.raises(SystemExit):
        main(["sim", "serve", "--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in profiles.PROFILES) and "--token-ttl" in out
