"""One reading of each request, through real Envoy: no Content-Type label, escape or encoding
makes a stage read a request differently from the others, JSON-RPC ids come back as sent, and the
tools/list filter decides on the same facts as tools/call (the source address included)."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from authz.dev.stack import REFERENCE_CONFIG
from tests.e2e.conftest import Running, running_stack

ACCEPT = {"accept": "application/json, text/event-stream"}
MISSING = None
TWO = ("application/json", "text/plain")
LABELS = ["application/json", "application/json, text/plain", "application/json,x", "text/plain",
          "application/x-www-form-urlencoded", MISSING, TWO]
LABEL_IDS = ["json", "json-and-text", "json-comma-x", "text", "form", "missing", "two-headers"]


def variant(tmp: Path) -> Path:
    """The reference config, plus: a plain path (/echo/*) with a redaction rule, get_calendar
    callable from loopback only, whoami from 10.0.0.0/8 only (never from this machine)."""
    cfg = yaml.safe_load(REFERENCE_CONFIG.read_text())
    rules = cfg["policy"]["rules"]
    for rule in rules:
        if rule["id"] == "calendar":
            rule["require"]["source_cidrs"] = ["127.0.0.0/8", "::1/128"]
        if rule["id"] == "whoami":
            rule["require"] = {"source_cidrs": ["10.0.0.0/8"]}
    rules.append({"id": "echo", "match": {"paths": ["/echo/*"]}})
    cfg["redaction"]["rules"].append({"id": "plain", "match": {"paths": ["/echo/*"]},
                                      "actions": {"secret": "block", "default": "mask"}})
    path = tmp / "authz.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Running]:
    with running_stack(variant(tmp_path_factory.mktemp("one-reading"))) as running:
        yield running


def labelled(label: str | tuple[str, ...] | None) -> list[tuple[str, str]]:
    if label is None:
        return []
    if isinstance(label, tuple):
        return [("content-type", v) for v in label]
    return [("content-type", label)]


def post(stack: Running, path: str, body: str, label: str | tuple[str, ...] | None, token: str,
         **extra: str) -> httpx.Response:
    headers = [("authorization", f"Bearer {token}"), *ACCEPT.items(), *labelled(label), *extra.items()]
    return stack.http.post(path, content=body.encode(), headers=headers)


# --- every label, plain and \u-escaped ----------------------------------------------------------

AWS_KEY = {"plain": "AKIAQWERTYUIOPASDFGH", "escaped": "\\u0041KIAQWERTYUIOPASDFGH"}
SSN = {"plain": "536-22-1234", "escaped": "\\u0035\\u0033\\u0036-22-1234"}
EMAIL = {"plain": "alice@example.com", "escaped": "alice\\u0040example.com"}


@pytest.mark.parametrize("form", ["plain", "escaped"])
@pytest.mark.parametrize("label", LABELS, ids=LABEL_IDS)
def test_a_secret_in_tool_arguments_never_reaches_the_tool(stack, label, form):
    token = stack.token("oscar", roles=["accounting"], scopes=["tools:calendar"])
    body = ('{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"get_calendar",'
            f'"arguments":{{"day":"mon {AWS_KEY[form]}"}}}}}}')
    r = post(stack, "/mcp", body, label, token)
    if label == "application/json":
        assert (r.status_code, r.headers["x-authz-reason"]) == (403, "redaction.blocked"), r.text
    else:  # MCP messages are JSON: any other label, none, or two are refused (README)
        assert (r.status_code, r.headers["x-authz-reason"]) == (415, "mcp.unsupported_media_type"), r.text
        assert r.json()["error"]["code"] == -32600  # a JSON-RPC error the client can read
    assert "QWERTYUIOPASDFGH" not in r.text


@pytest.mark.parametrize("form", ["plain", "escaped"])
@pytest.mark.parametrize("label", LABELS, ids=LABEL_IDS)
def test_an_ssn_in_a_prompt_is_held_whatever_the_label(stack, label, form):
    token = stack.token("oscar", roles=["accounting"])
    body = f'{{"model":"gpt-general","messages":[{{"role":"user","content":"Employee SSN {SSN[form]}"}}]}}'
    r = post(stack, "/v1/chat/completions", body, label, token)
    assert (r.status_code, r.headers["x-authz-reason"]) == (403, "redaction.approval_required"), r.text


@pytest.mark.parametrize("form", ["plain", "escaped"])
@pytest.mark.parametrize("label", LABELS, ids=LABEL_IDS)
def test_an_email_in_a_prompt_reaches_the_model_masked_whatever_the_label(stack, label, form):
    token = stack.token("oscar", roles=["accounting"])
    body = f'{{"model":"gpt-general","messages":[{{"role":"user","content":"mail {EMAIL[form]} today"}}]}}'
    r = post(stack, "/v1/chat/completions", body, label, token)
    assert r.status_code == 200, r.text
    forwarded = r.json()["echo"]["body"]  # what the upstream parsed
    assert forwarded["messages"][0]["content"] == "mail ***@example.com today"
    assert "alice" not in r.text


@pytest.mark.parametrize("label", ["application/json", "text/plain", MISSING], ids=["json", "text", "missing"])
def test_a_plain_path_reads_json_as_json_whatever_the_label(stack, label):
    token = stack.token("oscar", roles=["accounting"])
    r = post(stack, "/echo/notes", '{"note":"mail alice\\u0040example.com","n":7}', label, token)
    assert r.status_code == 200, r.text
    assert json.loads(r.json()["body"]) == {"note": "mail ***@example.com", "n": 7}
    r = post(stack, "/echo/notes", f'{{"key":"{AWS_KEY["escaped"]}"}}', label, token)
    assert (r.status_code, r.headers["x-authz-reason"]) == (403, "redaction.blocked")


def test_form_and_multipart_bodies_are_read_into_names_and_values(stack):
    token = stack.token("oscar", roles=["accounting"])
    form = "to=alice%40example.com&keep=%E2%9C%93+as+is&n=7"
    r = post(stack, "/echo/form", form, "application/x-www-form-urlencoded", token)
    assert r.status_code == 200, r.text
    # Only the value with a finding is written anew; every other byte as the client sent it.
    assert r.json()["body"] == "to=%2A%2A%2A%40example.com&keep=%E2%9C%93+as+is&n=7"

    import base64

    boundary = "XyZ"
    secret_b64 = base64.b64encode(f"key {AWS_KEY['plain']}".encode()).decode()
    multipart = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nmail alice@example.com\r\n"
                 f"--{boundary}\r\nContent-Disposition: form-data; name=\"b\"\r\n\r\nnothing here\r\n"
                 f"--{boundary}--\r\n")
    r = post(stack, "/echo/multi", multipart, f"multipart/form-data; boundary={boundary}", token)
    assert r.status_code == 200, r.text
    assert r.json()["body"] == multipart.replace("alice@example.com", "***@example.com")
    encoded = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"f\"; filename=\"k.txt\"\r\n"
               f"Content-Transfer-Encoding: base64\r\n\r\n{secret_b64}\r\n--{boundary}--\r\n")
    r = post(stack, "/echo/multi", encoded, f"multipart/form-data; boundary={boundary}", token)
    assert (r.status_code, r.headers["x-authz-reason"]) == (403, "redaction.blocked")


# --- encoded bodies -------------------------------------------------------------------------------

def _deflate(data: bytes) -> bytes:
    return zlib.compress(data)


ENCODINGS = {"gzip": gzip.compress, "deflate": _deflate, "br": lambda data: b"\x1b\x00\x00" + data}
PATHS = {
    "/mcp": '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_calendar",'
            '"arguments":{"day":"AKIAQWERTYUIOPASDFGH"}}}',
    "/v1/chat/completions": '{"model":"gpt-general","messages":[{"role":"user","content":"SSN 536-22-1234"}]}',
    "/v1/files": "mail alice@example.com",
    "/echo/upload": "AKIAQWERTYUIOPASDFGH",
}


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("path", PATHS)
def test_an_encoded_body_where_a_rule_reads_it_is_refused(stack, path, encoding):
    token = stack.token("oscar", roles=["accounting"], scopes=["tools:calendar"])
    headers = {"authorization": f"Bearer {token}", "content-encoding": encoding,
               "content-type": "application/json", **ACCEPT}
    r = stack.http.post(path, content=ENCODINGS[encoding](PATHS[path].encode()), headers=headers)
    assert (r.status_code, r.headers["x-authz-reason"]) == (415, "body.encoded"), r.text


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def _bomb() -> bytes:
    """About 2 KB that inflates (gzip, then gzip again) to 1 GiB of zeros."""
    inner = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk, parts = b"\0" * (1 << 20), []
    for _ in range(1024):
        parts.append(inner.compress(chunk))
    parts.append(inner.flush())
    return gzip.compress(b"".join(parts), 9)


def test_a_decompression_bomb_costs_bounded_memory(stack):
    bomb = _bomb()
    assert len(bomb) < 8 * 1024
    pid = stack.stack.procs["authz"].proc.pid
    token = stack.token("oscar", roles=["accounting"])
    before = _peak_rss_kib(pid)
    for path in ("/v1/chat/completions", "/echo/upload"):
        r = stack.http.post(path, content=bomb, headers={"authorization": f"Bearer {token}",
                                                         "content-encoding": "gzip, gzip",
                                                         "content-type": "application/json"})
        assert (r.status_code, r.headers["x-authz-reason"]) == (415, "body.encoded")
    assert _peak_rss_kib(pid) - before < 16 * 1024  # never inflated: not a page of the 1 GiB


# --- JSON-RPC ids ----------------------------------------------------------------------------------

@pytest.mark.parametrize("raw_id", ["7", "-3", "1180591620717411303424", '"req-é"', "0"])
def test_jsonrpc_ids_come_back_exactly_as_sent(stack, raw_id):
    token = stack.token("oscar", roles=["accounting"])
    body = ('{"jsonrpc":"2.0","id":' + raw_id +
            ',"method":"tools/call","params":{"name":"delete_invoice","arguments":{"invoice_id":"7"}}}')
    r = post(stack, "/mcp", body, "application/json", token)
    assert r.status_code == 403
    assert r.text.startswith('{"jsonrpc":"2.0","id":' + raw_id + ","), r.text


# --- tools/list decides as tools/call does ----------------------------------------------------------

def _mcp(stack: Running, token: str, method: str, params: dict | None = None) -> httpx.Response:
    msg = {"jsonrpc": "2.0", "id": 1, "method": method, **({"params": params} if params else {})}
    return stack.http.post("/mcp", json=msg, headers={"authorization": f"Bearer {token}",
                                                      "content-type": "application/json", **ACCEPT})


def _result(r: httpx.Response) -> dict:
    text = r.text
    if r.headers["content-type"].startswith("text/event-stream"):
        text = next(line[5:] for line in text.splitlines() if line.startswith("data:"))
    return json.loads(text)


def test_source_cidrs_decide_tools_list_as_they_decide_tools_call(stack):
    """get_calendar is callable from loopback only, whoami from 10.0.0.0/8 only: this client is on
    loopback, so the list shows the first and hides the second, as the calls are decided."""
    from mcp.types import LATEST_PROTOCOL_VERSION

    token = stack.token("oscar", roles=["accounting"], scopes=["tools:calendar"])
    init = _mcp(stack, token, "initialize", {"protocolVersion": LATEST_PROTOCOL_VERSION, "capabilities": {},
                                             "clientInfo": {"name": "t", "version": "1"}})
    assert init.status_code == 200, init.text
    call = _mcp(stack, token, "tools/call", {"name": "get_calendar", "arguments": {"day": "mon"}})
    assert call.status_code == 200, call.text
    denied = _mcp(stack, token, "tools/call", {"name": "whoami", "arguments": {}})
    assert (denied.status_code, denied.headers["x-authz-reason"]) == (403, "policy.source_not_allowed")
    listed = {t["name"] for t in _result(_mcp(stack, token, "tools/list"))["result"]["tools"]}
    assert "get_calendar" in listed and "whoami" not in listed
