#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pos_release
short_description: Load a signed release manifest on the control node and check it
description:
  - Reads a release's C(manifest.yml) and C(manifest.yml.sig) from a path or a distribution point URL,
    checks the ed25519 signature against O(public_key) B(before) anything else, then validates the
    manifest against schema 1 (unknown fields and wrong types are refused, naming the field) and the
    model profiles given in O(profiles).
  - Returns the manifest as C(release), for the tasks that update terminals.
  - Runs on the control node as an action plugin (C(plugins/action/pos_release.py)); it never
    connects to the play's hosts, so it is usually run once with C(run_once) or on C(localhost).
  - The checks are those of C(bin/posfleet-release verify); see C(docs/releases.md).
version_added: "0.1.0"
author: posfleet contributors (@posfleet)
options:
  manifest:
    description:
      - The release manifest, as a local path or an C(http(s)) URL, for example
        C(http://10.231.0.11:8080/releases/2026.11.0/manifest.yml). The signature is read from the same
        place with C(.sig) appended.
    type: str
    required: true
  public_key:
    description:
      - The ed25519 public key (PEM) that must have signed the manifest, usually C(pos_release_public_key).
    type: path
    required: true
  models:
    description:
      - Models the play's terminals are. Each must have an entry in the manifest, else the task fails
        naming the missing models.
    type: list
    elements: str
    default: []
  profiles:
    description:
      - The model profiles of the play's terminals (each C(pos_model_profile), with its C(name)), as the inventory
        attaches them. Their models must have an entry in the manifest, as with O(models), and each entry's app
        style must be the profile's C(package_style).
      - Without them, the manifest's models are not checked against any profile.
    type: list
    elements: dict
    default: []
  timeout:
    description: Seconds a download may take.
    type: int
    default: 30
  validate_certs:
    description: Check the TLS certificate of an C(https) URL.
    type: bool
    default: true
extends_documentation_fragment:
  - posfleet.fleet.attributes
  - posfleet.fleet.attributes.action
attributes:
  action:
    support: full
    details:
      - It runs entirely in the action on the control node; the module file only documents it.
  check_mode:
    support: full
    details:
      - It only reads the manifest, its signature and the key, and reports no change, in every mode.
  diff_mode:
    support: N/A
    details:
      - It changes nothing.
  platform:
    platforms: all
    details:
      - It never connects to the host, so any host will do (C(run_once), or C(localhost)); the work is done on the
        control node.
notes:
  - Needs the C(cryptography), C(PyYAML) and C(jsonschema) Python packages on the control node
    (C(requirements.txt)).
"""

EXAMPLES = r"""
- name: Load the release the terminals should run
  posfleet.fleet.pos_release:
    manifest: "{{ pos_region_settings.distribution_point }}/releases/{{ pos_release_id }}/manifest.yml"
    public_key: "{{ pos_release_public_key }}"
    profiles: "{{ ansible_play_hosts | map('extract', hostvars, 'pos_model_profile') | unique }}"
  run_once: true
  register: release_manifest

- name: Check a release in the build directory
  posfleet.fleet.pos_release:
    manifest: /var/lib/posfleet/build/releases/2026.11.0/manifest.yml
    public_key: /var/lib/poslab/release-key/release.pub
  delegate_to: localhost
"""

RETURN = r"""
release:
  description: The manifest, parsed and validated (schema 1, docs/update-pipeline.md).
  returned: success
  type: dict
  sample:
    schema: 1
    release: "2026.11.0"
    created: "2026-11-01T01:00:00Z"
    description: posd 1.0.0, November packs
    models:
      kestrel_k200:
        app: {version: 1.0.0, style: dpkg, url: pool/0701ec.../posd_1.0.0_all.deb, sha256: 0701ec...,
              size: 14940}
        packs:
          params: {version: 2026.11.0, url: pool/681e25.../params-2026.11.0.tar.gz, sha256: 681e25...,
                   size: 611}
          catalog: {version: 2026.11.0, url: pool/aecc28.../catalog-2026.11.0.tar.gz, sha256: aecc28...,
                    size: 1981}
        reboot: false
        storage_mb: 2
release_id:
  description: The release id, C(release.release).
  returned: success
  type: str
  sample: "2026.11.0"
"""

from ansible.module_utils.basic import AnsibleModule


def main():
    # Only reached when the action plugin is not found (plugins/action missing from ansible.cfg):
    # the argument spec is here for documentation and linters.
    module = AnsibleModule(
        argument_spec={
            "manifest": {"type": "str", "required": True},
            "public_key": {"type": "path", "required": True},
            "models": {"type": "list", "elements": "str", "default": []},
            "profiles": {"type": "list", "elements": "dict", "default": []},
            "timeout": {"type": "int", "default": 30},
            "validate_certs": {"type": "bool", "default": True},
        },
        supports_check_mode=True,
    )
    module.fail_json(msg="pos_release runs on the control node as an action plugin: call it by its full name, "
                         "posfleet.fleet.pos_release, with the collection posfleet.fleet installed")


if __name__ == "__main__":
    main()
