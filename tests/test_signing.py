"""Where the registry's signing key comes from, and that a weak one is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import FleetwatchSettings
from shared.signing import SigningKeyError, sign, signature_matches, signing_key


def test_key_comes_from_the_setting_then_the_file_then_a_local_dev_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEETWATCH_DEV_DIR", str(tmp_path / "dev"))
    key_file = tmp_path / "key"
    key_file.write_text("from-a-mounted-secret-file\n")
    both = FleetwatchSettings(registry_key="from-the-environment-1234", registry_key_file=key_file)  # type: ignore[arg-type]
    assert signing_key(both) == b"from-the-environment-1234"
    assert signing_key(FleetwatchSettings(registry_key_file=key_file)) == b"from-a-mounted-secret-file"
    dev_key = signing_key(FleetwatchSettings())
    assert dev_key == signing_key(FleetwatchSettings()) and len(dev_key) == 64
    assert (tmp_path / "dev" / "registry.key").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("settings", [{"registry_key": "short"}, {"registry_key_file": "/nonexistent/key"}])
def test_unusable_keys_are_refused_with_a_reason(settings: dict[str, str]) -> None:
    with pytest.raises(SigningKeyError):
        signing_key(FleetwatchSettings(**settings))  # type: ignore[arg-type]


def test_signatures_depend_on_key_and_payload() -> None:
    signature = sign(b"k" * 32, b"payload")
    assert signature_matches(b"k" * 32, b"payload", signature)
    assert not signature_matches(b"x" * 32, b"payload", signature)
    assert not signature_matches(b"k" * 32, b"payload!", signature)
