#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pos_signature_check
short_description: Let a POS terminal check the release signature itself before it installs anything
description:
  - Downloads the release manifest and its signature from the terminal's own distribution point and
    checks the ed25519 signature with the terminal's C(openssl), against the release public key.
  - Then checks that the manifest is byte for byte the one the control node verified (its sha256), so that
    every artifact sha256 the terminal is given comes from a manifest the terminal itself found signed.
  - For models whose profile sets C(verify_signature); the others rely on the control node's check.
  - Read-only; never reports a change.
version_added: "0.1.0"
author: posfleet contributors
options:
  manifest_url:
    description: URL of C(manifest.yml) on the distribution point; the signature is at the same URL plus C(.sig).
    type: str
    required: true
  manifest_sha256:
    description: sha256 of the manifest bytes the control node verified.
    type: str
    required: true
  public_key:
    description: The release public key, PEM text.
    type: str
    required: true
  timeout:
    description: Seconds each download may take.
    type: float
    default: 30
requirements:
  - openssl 3 on the terminal (C(pkeyutl -rawin) for ed25519)
notes:
  - Supports check mode; the module changes nothing in any mode.
"""

EXAMPLES = r"""
- name: Check the release signature on the terminal
  pos_signature_check:
    manifest_url: "{{ pos_region_settings.distribution_point }}/releases/{{ update_release }}/manifest.yml"
    manifest_sha256: "{{ update_release_check.manifest_sha256 }}"
    public_key: "{{ update_release_check.public_key_pem }}"
  when: pos_model_profile.verify_signature
"""

RETURN = r"""
manifest_sha256:
  description: sha256 of the manifest the terminal downloaded.
  returned: always
  type: str
verified:
  description: Whether openssl found the signature good and the manifest equal to the control node's.
  returned: success
  type: bool
"""

import base64
import binascii
import hashlib
import os
import shutil
import tempfile
import urllib.request

from ansible.module_utils.basic import AnsibleModule


def download(module, url, timeout):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read(1 << 20)
    except Exception as error:  # any failure: the terminal cannot check, so it must not install
        module.fail_json(msg="cannot download %s from the terminal: %s" % (url, error))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            manifest_url=dict(type="str", required=True),
            manifest_sha256=dict(type="str", required=True),
            public_key=dict(type="str", required=True),
            timeout=dict(type="float", default=30.0),
        ),
        supports_check_mode=True,
    )
    openssl = module.get_bin_path("openssl")
    if not openssl:
        module.fail_json(msg="openssl is not installed on this terminal; set verify_signature: false in its "
                             "model profile if its firmware cannot check signatures")
    url = module.params["manifest_url"]
    manifest = download(module, url, module.params["timeout"])
    signature_text = download(module, url + ".sig", module.params["timeout"])
    try:
        signature = base64.b64decode(signature_text.strip(), validate=True)
    except (binascii.Error, ValueError):
        module.fail_json(msg="%s.sig is not base64: the signature file is damaged" % url)
    workdir = tempfile.mkdtemp(prefix="pos-signature-")
    try:
        paths = {}
        for name, data in (("manifest.yml", manifest), ("manifest.sig", signature),
                           ("release.pub", module.params["public_key"].encode("ascii"))):
            paths[name] = os.path.join(workdir, name)
            with open(paths[name], "wb") as handle:
                handle.write(data)
        rc, out, err = module.run_command([openssl, "pkeyutl", "-verify", "-pubin", "-inkey", paths["release.pub"],
                                           "-rawin", "-in", paths["manifest.yml"], "-sigfile", paths["manifest.sig"]])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    digest = hashlib.sha256(manifest).hexdigest()
    if rc != 0:
        module.fail_json(msg="the terminal found the signature of %s bad: %s; nothing is installed"
                         % (url, (err or out).strip()[:300]), manifest_sha256=digest)
    if digest != module.params["manifest_sha256"]:
        module.fail_json(msg="the terminal got another manifest than the control node verified (%s, not %s) from %s:"
                         " a signed but different release is on the distribution point; republish it"
                         % (digest, module.params["manifest_sha256"], url), manifest_sha256=digest)
    module.exit_json(changed=False, verified=True, manifest_sha256=digest)


if __name__ == "__main__":
    main()
