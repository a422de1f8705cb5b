"""Settings (SPEC §6, §10): tokens that would open the API are refused, with an error that
names the entry but never a token; RAYBEAM_FSYNC."""

from __future__ import annotations

import pytest

from raybeam import config
from raybeam.config import Settings
from raybeam.errors import InvalidConfiguration


@pytest.fixture(autouse=True)
def clean_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "_overrides", {})
    for env in config._ENV.values():
        monkeypatch.delenv(env, raising=False)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (",", "token 1 of 2 is empty"),
        ("a-secret,,b-secret", "token 2 of 3 is empty"),
        (" ", "token 1 of 1 is empty"),
        ("a-secret, ", "token 2 of 2 is empty"),
        ("CHANGE-ME", "placeholder 'CHANGE-ME'"),
        ("a-secret,change-me", "token 2 of 2 is the placeholder"),
    ],
)
def test_tokens_that_would_open_the_api_are_refused(
    monkeypatch: pytest.MonkeyPatch, value: str, problem: str
) -> None:
    monkeypatch.setenv("RAYBEAM_AUTH_TOKENS", value)
    with pytest.raises(InvalidConfiguration, match=problem) as raised:
        config.settings()
    assert "a-secret" not in str(raised.value)  # a token never appears in an error


@pytest.mark.parametrize("tokens", [[""], ["ok-token", " "], ["CHANGE-ME"], ("x", "")])
def test_configure_refuses_them_and_changes_nothing(tokens: list[str]) -> None:
    config.configure(auth_tokens=["before"])
    with pytest.raises(InvalidConfiguration, match="auth token"):
        config.configure(auth_tokens=tokens, public_url="https://changed.example")
    assert config.settings().auth_tokens == ("before",)
    assert config.settings().public_url == ""


def test_open_mode_is_unset_or_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    assert config.settings().auth_tokens == ()
    monkeypatch.setenv("RAYBEAM_AUTH_TOKENS", "")
    assert config.settings().auth_tokens == ()
    assert config.configure(auth_tokens="").auth_tokens == ()
    assert config.configure(auth_tokens=[]).auth_tokens == ()
    assert config.configure(auth_tokens=" one , two ").auth_tokens == ("one", "two")
    assert config.configure(auth_tokens=["three"]).auth_tokens == ("three",)


def test_tokens_of_the_wrong_type_are_refused() -> None:
    with pytest.raises(InvalidConfiguration, match="not a string"):
        config.configure(auth_tokens=[b"bytes"])
    with pytest.raises(InvalidConfiguration, match="comma-separated string or a list"):
        config.configure(auth_tokens=42)
    with pytest.raises(InvalidConfiguration, match="empty"):
        Settings(auth_tokens=("",))


def test_fsync_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert config.settings().fsync is True
    monkeypatch.setenv("RAYBEAM_FSYNC", "0")
    assert config.settings().fsync is False
    monkeypatch.setenv("RAYBEAM_FSYNC", "1")
    assert config.settings().fsync is True
    assert config.configure(fsync=False).fsync is False
    monkeypatch.setenv("RAYBEAM_FSYNC", "sometimes")
    config._overrides.clear()
    with pytest.raises(InvalidConfiguration, match="RAYBEAM_FSYNC must be 1"):
        config.settings()
