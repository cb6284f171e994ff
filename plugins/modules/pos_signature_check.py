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
  - M(pos_package) runs the same check (C(module_utils/pos_signature.py)) with its C(signature)
    option, in the same round trip as the install; C(roles/pos_package) uses that. This module is for a check on
    its own.
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
  returned: success, and on a failed check once the manifest was downloaded
  type: str
verified:
  description: Whether openssl found the signature good and the manifest equal to the control node's.
  returned: success
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.pos_signature import SignatureError, check_signature


def main():
    module = AnsibleModule(
        argument_spec=dict(
            manifest_url=dict(type="str", required=True),
            manifest_sha256=dict(type="str", required=True),
            public_key=dict(type="str", required=True, no_log=False),
            timeout=dict(type="float", default=30.0),
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        digest = check_signature(module, params["manifest_url"], params["manifest_sha256"], params["public_key"],
                                 params["timeout"])
    except SignatureError as error:
        found = {"manifest_sha256": error.manifest_sha256} if error.manifest_sha256 else {}
        module.fail_json(msg=str(error), **found)
    module.exit_json(changed=False, verified=True, manifest_sha256=digest)


if __name__ == "__main__":
    main()
