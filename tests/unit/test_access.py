"""Graded access (grader/web/access.py, GRADING.md section 7): the tokens file, callers by
the digest of their tokens, and who sees what (customerview.tier_scope)."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grader.core.customerview import TIER_SCOPE_POLICY_FIELDS, customer_document, tier_scope
from grader.core.grading import apply_event, new_state
from grader.web.access import (
    ANONYMOUS,
    API_TOKEN_CALLER,
    Access,
    Caller,
    Entry,
    TokensFileError,
    access_record,
    may_see_detail,
    parse_tokens,
    read_tokens_file,
    render,
    write_tokens_file,
)
from tests.conftest import at, event, grading

TIERS = ("A", "B", "C")
SHA = hashlib.sha256(b"token-1").hexdigest()
SHA2 = hashlib.sha256(b"token-2").hexdigest()


def caller_toml(name: str = "desk", sha: str = SHA, scope: str = "tier", extra: str = "") -> str:
    return f'[callers.{name}]\nsha256 = "{sha}"\nscope = "{scope}"\n{extra}'


def test_a_valid_file_gives_its_callers() -> None:
    text = caller_toml() + caller_toml("audit", SHA2, "detail", 'detail_up_to = "B"\n')
    assert parse_tokens(text, "f.toml", TIERS) == [
        Entry(Caller("desk", "tier"), SHA), Entry(Caller("audit", "detail", "B"), SHA2)]
    assert parse_tokens("", "f.toml", TIERS) == []


@pytest.mark.parametrize(("text", "needle"), [
    ("callers = 1", "callers must be a table"),
    ("[other]\n", "'other' is not a key of a tokens file"),
    ("[callers.desk\n", "not TOML"),
    (caller_toml() + caller_toml(), "not TOML"),  # a name twice: a table defined twice
    (caller_toml() + caller_toml("desk2"), "the same sha256 as another caller"),
    (caller_toml(extra='token = "s3cret-value"\n'), "'token' is not a key"),
    (caller_toml(sha=SHA.upper()), "sha256 must be 64 lowercase hex digits"),
    (caller_toml(sha=SHA[:-1]), "sha256 must be 64 lowercase hex digits"),
    (caller_toml(scope="admin"), "scope must be tier or detail, not 'admin'"),
    (caller_toml(extra='detail_up_to = "B"\n'), "detail_up_to is only for scope detail"),
    (caller_toml(scope="detail", extra='detail_up_to = "Z"\n'),
     "detail_up_to 'Z' is not a tier (the support policy's tiers: A, B, C)"),
    (caller_toml(scope="detail", extra="detail_up_to = 1\n"), "detail_up_to 1 is not a tier"),
    (caller_toml(name='"bad name"'), "a name is 1..64 chars"),
    (caller_toml(name=API_TOKEN_CALLER), "the name is reserved"),
    ("[callers]\ndesk = 1\n", "must be a table"),
])
def test_a_bad_file_is_one_line_naming_the_file_and_the_problem(text: str, needle: str) -> None:
    with pytest.raises(TokensFileError) as caught:
        parse_tokens(text, "/etc/grader/tokens.toml", TIERS)
    message = str(caught.value)
    assert message.startswith("tokens file /etc/grader/tokens.toml: ") and needle in message
    assert "\n" not in message and "s3cret-value" not in message


names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True).filter(
    lambda n: n not in (API_TOKEN_CALLER, ANONYMOUS))
callers = st.builds(
    lambda name, scope, up_to, token: Entry(
        Caller(name, scope, up_to if scope == "detail" else None),
        hashlib.sha256(token).hexdigest()),
    names, st.sampled_from(("tier", "detail")), st.none() | st.sampled_from(TIERS),
    st.binary(min_size=1, max_size=40))


@settings(max_examples=200, deadline=None)
@given(st.lists(callers, max_size=6, unique_by=(lambda e: e.caller.name, lambda e: e.sha256)))
def test_render_then_parse_gives_the_same_callers(entries: list[Entry]) -> None:
    assert parse_tokens(render(entries), "f", TIERS) == entries


def _mutations() -> st.SearchStrategy[str]:
    base = render([Entry(Caller("desk", "tier"), SHA), Entry(Caller("au", "detail", "B"), SHA2)])
    return st.builds(lambda i, j, junk: base[:i] + junk + base[j:],
                     st.integers(0, len(base)), st.integers(0, len(base)),
                     st.text(max_size=30))


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=300), _mutations()))
def test_any_text_is_callers_or_one_line_naming_the_file(text: str) -> None:
    """Never another exception, never a caller that breaks the rules."""
    try:
        entries = parse_tokens(text, "tokens.toml", TIERS)
    except TokensFileError as exc:
        assert str(exc).startswith("tokens file tokens.toml: ") and "\n" not in str(exc)
        return
    assert len({e.sha256 for e in entries}) == len(entries)
    for entry in entries:
        assert entry.caller.scope in ("tier", "detail") and len(entry.sha256) == 64
        assert entry.caller.detail_up_to in (None, *TIERS)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o660, 0o644])
def test_a_file_others_may_read_or_write_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(caller_toml())
    path.chmod(mode)
    with pytest.raises(TokensFileError, match=f"tokens file {path}: group or others may read "
                                              rf"or write it \(mode 0{mode:o}\): chmod 600"):
        read_tokens_file(path, TIERS)
    path.chmod(0o600)
    assert read_tokens_file(path, TIERS) == [Entry(Caller("desk", "tier"), SHA)]


def test_a_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(TokensFileError, match=r"tokens file .*nope\.toml: cannot read it"):
        read_tokens_file(tmp_path / "nope.toml", TIERS)


def test_written_files_are_private_from_the_start(tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    old = os.umask(0)  # even with a umask that lets everyone read
    try:
        write_tokens_file(path, [Entry(Caller("desk", "tier"), SHA)])
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_tokens_file(path, TIERS) == [Entry(Caller("desk", "tier"), SHA)]
    assert [p.name for p in tmp_path.iterdir()] == ["tokens.toml"]


def test_callers_are_known_by_the_digest_of_their_token() -> None:
    access = Access([Entry(Caller("desk", "tier"), SHA)], api_token="the-api-token")
    assert access.caller(b"token-1") == Caller("desk", "tier")
    assert access.caller(b"the-api-token") == Caller(API_TOKEN_CALLER, "detail")
    assert access.caller(b"token-2") is None and access.caller(b"") is None
    assert access.caller(SHA.encode()) is None  # the digest is not a token
    assert "token-1" not in repr(vars(access)) and "the-api-token" not in repr(vars(access))
    assert Access([]).caller(b"") == Caller(ANONYMOUS, "detail") and Access([]).open


def test_the_api_token_may_not_also_be_a_callers_token() -> None:
    with pytest.raises(TokensFileError, match="same token as GRADER_API_TOKEN"):
        Access([Entry(Caller("desk", "tier"), SHA)], api_token="token-1")


@pytest.mark.parametrize(("caller", "tier", "sees"), [
    (Caller("t", "tier"), "C", False),
    (Caller("d", "detail"), "A", True),
    (Caller("b", "detail", "B"), "A", False),
    (Caller("b", "detail", "B"), "B", True),
    (Caller("b", "detail", "B"), "C", True),
    (Caller("b", "detail", "B"), None, True),  # not graded: below every tier
    (Caller("b", "detail", "B"), "S", False),  # a tier the policy does not have
    (Caller("a", "detail", "A"), "A", True),
    (Caller("c", "detail", "C"), "B", False),
])
def test_who_sees_a_customers_detail(caller: Caller, tier: str | None, sees: bool) -> None:
    assert may_see_detail(caller, tier, TIERS) is sees


def test_a_tier_caller_sees_tiers_and_flags_only() -> None:
    g = grading("abc-100", "stars")
    state = new_state("C1")
    now = at("2026-12-02T10:00:00+08:00")
    apply_event(state, event("sale", "2026-11-15", grading_=g, amount="240000"), g, now)
    apply_event(state, event("override", "2026-11-20", grading_=g, action="blacklist",
                             reason="fraud", actor="kam"), g, now)
    document = customer_document(state, g)
    shown = tier_scope(document)
    assert set(shown) == {"customer_id", "graded", "blacklisted", "as_of", "policies"}
    assert shown["blacklisted"] is True
    for name, grade in shown["policies"].items():
        policy = document["policies"][name]
        assert grade == {"tier": policy["tier"], "pinned": policy["pinned"],
                         "drops_on": policy["drops_on"], "to_tier": policy["to_tier"]}
    with_risk = {**document, "policies": {"abc-100": {**document["policies"]["abc-100"],
                                                      "drops_on": "2027-01-01",
                                                      "to_tier": "B"}}}
    assert tier_scope(with_risk)["policies"]["abc-100"] == {
        "tier": "A", "pinned": False, "drops_on": "2027-01-01", "to_tier": "B"}
    assert {"drops_on", "to_tier"} <= set(TIER_SCOPE_POLICY_FIELDS)


def test_an_access_record_has_the_spec_fields_and_no_more() -> None:
    record = access_record("2026-12-01T00:00:00Z", Caller("desk", "tier"), "C1", 200, "w")
    assert record == {"at": "2026-12-01T00:00:00Z", "caller": "desk", "customer_id": "C1",
                      "scope": "tier", "status": 200, "worker": "w"}
