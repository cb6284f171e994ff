"""pos_signature_check: the terminal refuses a release whose signature or manifest it cannot trust."""

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

MANIFEST = b"schema: 1\nrelease: '2026.12.0'\nmodels: {}\n"


def public_pem(key):
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@pytest.fixture
def signed(dist):
    key = Ed25519PrivateKey.generate()
    dist.publish("/releases/r/manifest.yml", MANIFEST)
    dist.publish("/releases/r/manifest.yml.sig", base64.b64encode(key.sign(MANIFEST)) + b"\n")
    return {"manifest_url": dist.url + "/releases/r/manifest.yml", "public_key": public_pem(key),
            "manifest_sha256": hashlib.sha256(MANIFEST).hexdigest()}


def test_good_signature_and_same_manifest(signed, run_module, tmp_path):
    result = run_module("pos_signature_check", signed, root=tmp_path)
    assert result["verified"] is True and result["changed"] is False


def test_manifest_changed_after_signing_is_refused(signed, dist, run_module, tmp_path):
    dist.publish("/releases/r/manifest.yml", MANIFEST.replace(b"2026.12.0", b"2026.12.9"))
    result = run_module("pos_signature_check", signed, root=tmp_path)
    assert result["failed"] and "signature" in result["msg"] and "nothing is installed" in result["msg"]


def test_another_key_is_refused(signed, run_module, tmp_path):
    other = dict(signed, public_key=public_pem(Ed25519PrivateKey.generate()))
    result = run_module("pos_signature_check", other, root=tmp_path)
    assert result["failed"] and "bad" in result["msg"]


def test_signed_but_different_manifest_is_refused(signed, run_module, tmp_path):
    result = run_module("pos_signature_check", dict(signed, manifest_sha256="0" * 64), root=tmp_path)
    assert result["failed"] and "another manifest" in result["msg"]


def test_missing_signature_is_refused(signed, dist, run_module, tmp_path):
    dist.server.files.pop("/releases/r/manifest.yml.sig")
    result = run_module("pos_signature_check", signed, root=tmp_path)
    assert result["failed"] and "manifest.yml.sig" in result["msg"]
