"""Authentication against a real `manifold serve` (docs/access.md): the master key and virtual keys in every header
the SDKs use, 401/403/404 in OpenAI's envelope (read by the official SDK as its typed errors), model access,
revocation, blocking, expiry, rotation, and no secret anywhere it must not be."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conformance.schema import assert_valid
from tests.e2e.conftest import UPSTREAM_KEY, ManifoldProcess
from tests.fakes.openai_upstream import FakeUpstream

MASTER = "sk-master-0123456789abcdef-secret"
MESSAGES = [{"role": "user", "content": "hi"}]


def access_config(fake: FakeUpstream, data_dir: Path, **auth: Any) -> dict[str, Any]:
    return {
        "model_list": [
            {"model_name": name, "provider": "openai", "api_base": fake.base("echo"), "api_key": UPSTREAM_KEY}
            for name in ("fake-echo", "other-model", "openai/*")
        ],
        "router": {"num_retries": 0, "model_alias": {"fast": "fake-echo"}, "allow_client_fallbacks": True},
        "server": {"log_level": "debug", "access_log": True},
        "storage": {"data_dir": str(data_dir)},
        "auth": {"master_key": MASTER, **auth},
    }


@pytest.fixture(scope="module")
def server(fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManifoldProcess]:
    workdir = tmp_path_factory.mktemp("access")
    proc = ManifoldProcess(access_config(fake, workdir / "data"), workdir)
    yield proc
    proc.stop()


@pytest.fixture
def admin(server: ManifoldProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=20, headers={"authorization": f"Bearer {MASTER}"}) as c:
        yield c


def chat(server: ManifoldProcess, headers: dict[str, str], model: str = "fake-echo") -> httpx.Response:
    return httpx.post(
        server.base_url + "/chat/completions", json={"model": model, "messages": MESSAGES}, headers=headers, timeout=20
    )


def bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


def create_key(http: httpx.Client, **fields: Any) -> dict[str, Any]:
    resp = http.post("/admin/keys", json=fields)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    assert body["key"].startswith("sk-mf-") and len(body["key"]) >= 6 + 43
    assert body["display"] == "sk-mf-..." + body["key"][-4:]
    return body


def assert_invalid_key(resp: httpx.Response) -> dict[str, Any]:
    assert resp.status_code == 401, resp.text
    body: dict[str, Any] = resp.json()
    assert_valid("ErrorResponse", body)
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["code"] == "invalid_api_key"
    return body


def test_no_key_and_a_wrong_key_are_401_showing_only_a_suffix(server: ManifoldProcess) -> None:
    body = assert_invalid_key(chat(server, {}))
    assert "didn't provide an API key" in body["error"]["message"]
    wrong = "sk-mf-thisIsNotAKeyAtAll0123456789abcdefWXYZ"
    body = assert_invalid_key(chat(server, bearer(wrong)))
    assert body["error"]["message"] == "Incorrect API key provided: sk-mf-...WXYZ."
    for headers in ({"api-key": wrong}, {"x-api-key": wrong}, {"authorization": f"Basic {wrong}"}):
        assert_invalid_key(chat(server, headers))
    # A key one character off the master key is refused too, and nothing of a short key is shown.
    assert_invalid_key(chat(server, bearer(MASTER[:-1] + "X")))
    assert assert_invalid_key(chat(server, bearer("short")))["error"]["message"] == ("Incorrect API key provided: ***.")


def test_the_master_key_in_every_header_the_sdks_use(server: ManifoldProcess) -> None:
    for headers in (bearer(MASTER), {"api-key": MASTER}, {"x-api-key": MASTER}):
        resp = chat(server, headers)
        assert resp.status_code == 200, resp.text
    # Health needs no key; the admin API needs one.
    assert httpx.get(server.url + "/health").status_code == 200
    assert httpx.get(server.url + "/health/ready").status_code == 200
    assert_invalid_key(httpx.get(server.url + "/admin/keys"))


def test_a_virtual_key_is_shown_once_and_works(server: ManifoldProcess, admin: httpx.Client) -> None:
    key = create_key(admin, alias="ci", user="alice", metadata={"env": "ci"})
    assert chat(server, bearer(key["key"])).status_code == 200
    assert chat(server, {"x-api-key": key["key"]}).status_code == 200
    shown = admin.get(f"/admin/keys/{key['id']}").json()
    assert "key" not in shown
    assert shown["alias"] == "ci" and shown["user"] == "alice" and shown["metadata"] == {"env": "ci"}
    # A valid key that is not an admin's does not reach the admin API.
    resp = httpx.get(server.url + "/admin/keys", headers=bearer(key["key"]))
    assert resp.status_code == 403
    assert_valid("ErrorResponse", resp.json())
    assert resp.json()["error"]["code"] == "permission_denied"
    # An admin key does.
    boss = create_key(admin, alias="boss", admin=True)
    assert httpx.get(server.url + "/admin/keys", headers=bearer(boss["key"])).status_code == 200


def test_model_access_answers_like_an_unknown_model(server: ManifoldProcess, admin: httpx.Client) -> None:
    key = create_key(admin, models=["fast", "openai/gpt-*"])
    headers = bearer(key["key"])
    # The alias allows its group (by either name); the wildcard entry allows names with its prefix.
    for model in ("fast", "fake-echo", "openai/gpt-4o"):
        assert chat(server, headers, model).status_code == 200, model
    unknown = chat(server, bearer(MASTER), "no-such-model").json()
    for model in ("other-model", "openai/o3"):
        resp = chat(server, headers, model)
        assert resp.status_code == 404
        assert_valid("ErrorResponse", resp.json())
        assert resp.json()["error"] == {
            **unknown["error"],
            "message": unknown["error"]["message"].replace("no-such-model", model),
        }
        assert resp.json()["error"]["code"] == "model_not_found"
    listed = httpx.get(server.base_url + "/models", headers=headers).json()
    assert sorted(m["id"] for m in listed["data"]) == ["fake-echo", "fast"]
    assert httpx.get(server.base_url + "/models/other-model", headers=headers).status_code == 404
    assert httpx.get(server.base_url + "/models/fast", headers=headers).status_code == 200
    every = httpx.get(server.base_url + "/models", headers=bearer(MASTER)).json()
    assert {"other-model", "fake-echo", "fast"} <= {m["id"] for m in every["data"]}
    # The Responses API resolves through the same check.
    resp = httpx.post(
        server.base_url + "/responses", json={"model": "other-model", "input": "hi"}, headers=headers, timeout=20
    )
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "model_not_found"
    # So do the per-model URLs.
    resp = httpx.post(
        server.url + "/v2/models/other-model/infer/chat/completions",
        json={"messages": MESSAGES},
        headers=headers,
        timeout=20,
    )
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "model_not_found"
    # A client fallback may not reach a model the key may not use.
    resp = httpx.post(
        server.base_url + "/chat/completions",
        json={"model": "fast", "messages": MESSAGES, "fallbacks": ["other-model"]},
        headers=headers,
        timeout=20,
    )
    assert resp.status_code in (400, 404) and resp.json()["error"]["code"] == "model_not_found"


def test_a_team_restricts_its_keys_models(server: ManifoldProcess, admin: httpx.Client) -> None:
    team = admin.post("/admin/teams", json={"alias": "research", "models": ["other-model"]}).json()
    assert team["object"] == "team"
    key = create_key(admin, team_id=team["id"])
    assert chat(server, bearer(key["key"]), "other-model").status_code == 200
    assert chat(server, bearer(key["key"]), "fake-echo").status_code == 404
    # Blocking the team blocks its keys at once on this replica.
    assert admin.post(f"/admin/teams/{team['id']}", json={"blocked": True}).status_code == 200
    assert "team is blocked" in assert_invalid_key(chat(server, bearer(key["key"]), "other-model"))["error"]["message"]
    # A team with keys is not deleted; a key naming no team is refused.
    assert admin.delete(f"/admin/teams/{team['id']}").status_code == 400
    resp = admin.post("/admin/keys", json={"team_id": "team_nope"})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "team_id"


def test_revoked_blocked_and_expired_keys_are_refused(server: ManifoldProcess, admin: httpx.Client) -> None:
    key = create_key(admin)
    headers = bearer(key["key"])
    assert chat(server, headers).status_code == 200  # now cached
    assert admin.post(f"/admin/keys/{key['id']}", json={"blocked": True}).json()["blocked"] is True
    assert "blocked" in assert_invalid_key(chat(server, headers))["error"]["message"]
    assert admin.post(f"/admin/keys/{key['id']}", json={"blocked": False}).status_code == 200
    assert chat(server, headers).status_code == 200
    assert admin.delete(f"/admin/keys/{key['id']}").json() == {
        "id": key["id"],
        "object": "key.deleted",
        "deleted": True,
    }
    assert_invalid_key(chat(server, headers))
    assert admin.get(f"/admin/keys/{key['id']}").status_code == 404
    expired = create_key(admin, expires_at=int(time.time()) - 1)
    assert "expired" in assert_invalid_key(chat(server, bearer(expired["key"])))["error"]["message"]


def test_rotation_keeps_the_old_secret_for_its_grace(server: ManifoldProcess, admin: httpx.Client) -> None:
    key = create_key(admin)
    rotated = admin.post(f"/admin/keys/{key['id']}/rotate", json={}).json()
    assert rotated["id"] == key["id"] and rotated["key"] != key["key"]
    assert rotated["previous_expires_at"] >= int(time.time()) + 3000  # auth.rotation_grace_s: 3600 by default
    assert chat(server, bearer(rotated["key"])).status_code == 200
    assert chat(server, bearer(key["key"])).status_code == 200
    again = admin.post(f"/admin/keys/{key['id']}/rotate", json={"grace_s": 0}).json()
    assert chat(server, bearer(again["key"])).status_code == 200
    assert_invalid_key(chat(server, bearer(rotated["key"])))
    assert_invalid_key(chat(server, bearer(key["key"])))


def test_lists_page_with_a_cursor_and_filter(admin: httpx.Client) -> None:
    ids = [admin.post("/admin/teams", json={"alias": "paged", "metadata": {"i": i}}).json()["id"] for i in range(3)]
    page = admin.get("/admin/teams", params={"alias": "paged", "limit": 2}).json()
    assert [t["id"] for t in page["data"]] == ids[:2] and page["has_more"] is True
    assert page["first_id"] == ids[0] and page["last_id"] == ids[1]
    rest = admin.get("/admin/teams", params={"alias": "paged", "limit": 2, "after": page["last_id"]}).json()
    assert [t["id"] for t in rest["data"]] == ids[2:] and rest["has_more"] is False
    keys = admin.get("/admin/keys", params={"user": "nobody-has-this"}).json()
    assert keys == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}
    for params, param in (({"limit": 0}, "limit"), ({"colour": "x"}, "colour"), ({"after": "team_nope"}, "after")):
        resp = admin.get("/admin/teams", params=params)
        assert resp.status_code == 400 and resp.json()["error"]["param"] == param
    resp = admin.post("/admin/keys", json={"rpm": -1})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "rpm"
    resp = admin.post("/admin/keys", json={"colour": "blue"})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "colour"
    # Money in dollars on the API, exact.
    team = admin.post("/admin/teams", json={"max_budget": 12.345678, "budget_duration": "monthly"}).json()
    assert team["max_budget"] == 12.345678 and team["budget_reset_at"] > time.time()


def test_the_python_sdk_reads_401_and_404_as_its_typed_errors(server: ManifoldProcess, admin: httpx.Client) -> None:
    with openai.OpenAI(base_url=server.base_url, api_key="sk-mf-wrong0123456789wrong0123456789", max_retries=0) as c:
        with pytest.raises(openai.AuthenticationError) as auth_error:
            c.chat.completions.create(model="fake-echo", messages=[{"role": "user", "content": "hi"}])
        assert auth_error.value.status_code == 401 and auth_error.value.code == "invalid_api_key"
    key = create_key(admin, models=["fake-echo"])
    with openai.OpenAI(base_url=server.base_url, api_key=key["key"], max_retries=0) as c:
        assert c.chat.completions.create(model="fake-echo", messages=[{"role": "user", "content": "hi"}]).choices
        with pytest.raises(openai.NotFoundError) as not_found:
            c.chat.completions.create(model="other-model", messages=[{"role": "user", "content": "hi"}])
        assert not_found.value.code == "model_not_found"
        with pytest.raises(openai.NotFoundError):
            c.models.retrieve("other-model")
        assert sorted(m.id for m in c.models.list()) == ["fake-echo", "fast"]  # the alias names its group


def test_the_node_sdk_reads_401_and_404_as_its_typed_errors(server: ManifoldProcess, admin: httpx.Client) -> None:
    from tests.fakes.node_openai import node_missing, run_script

    missing = node_missing()
    if missing is not None:
        pytest.skip(missing)
    wrong = run_script(
        'return await caught(client.chat.completions.create({model: "fake-echo", messages: [{role: "user", '
        'content: "hi"}]}));',
        server.base_url,
        "sk-mf-wrong0123456789wrong0123456789",
    )
    assert wrong["name"] == "AuthenticationError" and wrong["isApiError"]
    assert wrong["status"] == 401 and wrong["code"] == "invalid_api_key" and wrong["type"] == "invalid_request_error"
    key = create_key(admin, models=["fake-echo"])
    out = run_script(
        """
        const messages = [{role: "user", content: "hi"}];
        const ok = await client.chat.completions.create({model: "fake-echo", messages});
        const denied = await caught(client.chat.completions.create({model: "other-model", messages}));
        const model = await caught(client.models.retrieve("other-model"));
        return {ok: ok.choices.length, denied, model};
        """,
        server.base_url,
        key["key"],
    )
    assert out["ok"] == 1
    for err in (out["denied"], out["model"]):
        assert err["name"] == "NotFoundError" and err["status"] == 404 and err["code"] == "model_not_found"
