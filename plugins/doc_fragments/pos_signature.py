# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The `signature` option of the modules that install a release's software (pos_os_packages, pos_package)."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  signature:
    description:
      - Check the release's signature on the terminal before anything else (see the description), for models whose
        profile sets C(verify_signature) and whose firmware has C(openssl) 3 (C(pkeyutl -rawin) for ed25519).
      - Omit it to rely on the control node's check alone.
      - The manifest and its signature are downloaded with O(timeout).
    type: dict
    suboptions:
      manifest_url:
        description: URL of the release's C(manifest.yml) on the distribution point; the signature is at the same URL
          plus C(.sig).
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
"""
