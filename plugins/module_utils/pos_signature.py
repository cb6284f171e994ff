# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Let a terminal check the release signature itself before it installs anything of the release.

The terminal downloads `manifest.yml` and `manifest.yml.sig` from its own distribution point, checks
the ed25519 signature with its own `openssl` against the release public key, then checks that the
manifest is byte for byte the one the control node verified (its sha256). Every artifact sha256 the
terminal is then given comes from a manifest it found signed itself, so a compromised control node
alone cannot make it install an unsigned release.

Read-only: the manifest and its signature are held in memory; openssl reads them from a temporary
directory that is removed before check_signature() returns. Used by M(posfleet.fleet.pos_package)'s
`signature` option, in the install's own round trip.

Runs on terminals: standard library only, Python 3.9 or newer.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import shutil
import tempfile
import urllib.request

from ansible_collections.posfleet.fleet.plugins.module_utils.pos_terminal import CommandTimeout, run_bounded

# The options of the check: pos_package's `signature` suboptions.
SIGNATURE_OPTIONS = {
    "manifest_url": {"type": "str", "required": True},
    "manifest_sha256": {"type": "str", "required": True},
    # The release key is public; said so, as a key-named option would otherwise look like a secret.
    "public_key": {"type": "str", "required": True, "no_log": False},
}
# The modules' `signature` option (documented by the doc fragment posfleet.fleet.pos_signature).
SIGNATURE_OPTION = {"type": "dict", "options": SIGNATURE_OPTIONS}
# A manifest or its signature is a few KB; more than this is not one.
MAX_BYTES = 1 << 20
# openssl checks one signature of a few KB in well under a second, even on a slow terminal; longer is a hang.
OPENSSL_TIMEOUT = 30


class SignatureError(Exception):
    """The terminal cannot trust the release: says why. `manifest_sha256` is the downloaded manifest's
    sha256 once it was downloaded, else None."""

    def __init__(self, msg, manifest_sha256=None):
        super().__init__(msg)
        self.manifest_sha256 = manifest_sha256


def _download(url, timeout):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read(MAX_BYTES)
    except Exception as error:  # any failure: the terminal cannot check, so it must not install
        raise SignatureError("cannot download %s from the terminal: %s" % (url, error)) from error


def check_signature(module, manifest_url, manifest_sha256, public_key, timeout):
    """Check the release manifest at `manifest_url` on the terminal; its sha256 when it can be trusted.

    Raises SignatureError naming what is wrong. `module` (an AnsibleModule) finds openssl.
    """
    openssl = module.get_bin_path("openssl")
    if not openssl:
        raise SignatureError("openssl is not installed on this terminal; set verify_signature: false in its "
                             "model profile if its firmware cannot check signatures")
    try:
        key = public_key.encode("ascii")
    except UnicodeEncodeError:
        raise SignatureError("public_key is not the release public key in PEM (it is not ASCII)") from None
    manifest = _download(manifest_url, timeout)
    signature_text = _download(manifest_url + ".sig", timeout)
    try:
        signature = base64.b64decode(signature_text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("%s.sig is not base64: the signature file is damaged" % manifest_url) from None
    workdir = None
    try:
        workdir = tempfile.mkdtemp(prefix="pos-signature-")
        paths = {}
        for name, data in (("manifest.yml", manifest), ("manifest.sig", signature), ("release.pub", key)):
            paths[name] = os.path.join(workdir, name)
            with open(paths[name], "wb") as handle:
                handle.write(data)
        rc, out, err = run_bounded([openssl, "pkeyutl", "-verify", "-pubin", "-inkey", paths["release.pub"], "-rawin",
                                    "-in", paths["manifest.yml"], "-sigfile", paths["manifest.sig"]],
                                   OPENSSL_TIMEOUT, "nothing is installed", what="openssl pkeyutl -verify")
    except CommandTimeout as error:
        raise SignatureError("the terminal could not check the signature of %s: %s" % (manifest_url, error),
                             hashlib.sha256(manifest).hexdigest()) from error
    except OSError as error:
        raise SignatureError("cannot hand the manifest of %s to openssl in %s: %s; the terminal needs a writable "
                             "temporary directory with a few KB free" % (manifest_url, tempfile.gettempdir(), error)
                             ) from error
    finally:
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    digest = hashlib.sha256(manifest).hexdigest()
    if rc != 0:
        raise SignatureError("the terminal found the signature of %s bad: %s; nothing is installed"
                             % (manifest_url, (err or out).strip()[:300]), digest)
    if digest != manifest_sha256.strip().lower():
        raise SignatureError("the terminal got another manifest than the control node verified (%s, not %s) from %s:"
                             " a signed but different release is on the distribution point; republish it"
                             % (digest, manifest_sha256, manifest_url), digest)
    return digest


def check_release(module):
    """With the module's `signature` option: the terminal's own check of the release, before anything else
    (read-only, so in check mode too). Fails the module, with nothing downloaded or changed, when the release
    cannot be trusted; {"verified": True, "manifest_sha256"} when it can, None without the option."""
    signature = module.params["signature"]
    if not signature:
        return None
    try:
        digest = check_signature(module, signature["manifest_url"], signature["manifest_sha256"],
                                 signature["public_key"], module.params["timeout"])
    except SignatureError as error:
        module.fail_json(msg=str(error), changed=False,
                         signature={"verified": False, "manifest_sha256": error.manifest_sha256})
    return {"verified": True, "manifest_sha256": digest}
