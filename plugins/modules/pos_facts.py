#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pos_facts
short_description: Gather what an update needs to know about a POS terminal, in one round trip
description:
  - Reads the terminal's identity, installed payment app version, data pack versions, free storage,
    battery, the payment app's state (idle, in-transaction, maintenance), pending offline
    transactions and health, and optionally probes the region's distribution point.
  - Returns them as the fact C(pos_terminal). Read-only; never reports a change.
  - When O(release) is given, also says whether the terminal already runs that release, so that an
    up-to-date terminal costs one module call and nothing more.
version_added: "0.1.0"
author: posfleet contributors (@posfleet)
options:
  package_style:
    description:
      - How the model installs its payment app, from the model profile (C(pos_model_profile.package_style)).
      - V(dpkg) reads the version of the C(posd) package; V(bundle) reads the C(current) link in C(/opt/pos/app).
    type: str
    required: true
    choices: [dpkg, bundle]
  probe_url:
    description:
      - A small file on the region's distribution point; it is downloaded once to check that the terminal
        reaches the distribution point and to measure the link.
      - Omit it to skip the probe.
    type: str
  probe_timeout:
    description: Seconds the probe may take before the distribution point counts as unreachable.
    type: float
    default: 10
  release:
    description:
      - What this model should run, from the release manifest, as C(app_version) and C(packs) (a dict of
        pack name to version), and C(os_packages) (Debian package name to version) when the release pins OS
        packages for the model. When given, C(pos_terminal.current) says whether the terminal runs it.
      - With C(os_packages), C(pos_terminal.os_packages) holds the installed version of each of them (null when
        not fully installed).
    type: dict
extends_documentation_fragment:
  - posfleet.fleet.attributes
attributes:
  check_mode:
    support: full
    details:
      - It only reads; it reports no change in any mode.
  diff_mode:
    support: N/A
    details:
      - It changes nothing.
  platform:
    platforms: posix
    details:
      - Runs on the terminal with the Python standard library only (Python 3.9 or newer).
"""

EXAMPLES = r"""
- name: Gather terminal facts
  posfleet.fleet.pos_facts:
    package_style: "{{ pos_model_profile.package_style }}"

- name: Gather terminal facts and probe the distribution point
  posfleet.fleet.pos_facts:
    package_style: "{{ pos_model_profile.package_style }}"
    probe_url: "{{ pos_region_settings.distribution_point }}/probe"
    release: "{{ pos_release.models[pos_model] }}"
"""

RETURN = r"""
ansible_facts:
  description: Facts about the terminal.
  returned: always
  type: complex
  contains:
    pos_terminal:
      description: Everything an update decides on.
      returned: always
      type: dict
      sample:
        serial: KST00002
        model: kestrel_k200
        region: eu_west
        app_version: 1.0.0
        packs: {params: 2026.01.0, catalog: 2026.01.0, merchant: "1"}
        os_packages: {libssl3: 3.0.20-1~deb12u2, tzdata: 2026b-0+deb12u1}
        storage_free_mb: 80
        battery_pct: null
        charging: null
        posd: {state: idle, pending: 3, healthy: true, health_detail: ok, counters: {stan: 41, batch: 1, invoice: 41}}
        boot_id: 0b0f6f5e-2d3c-4a8f-9d65-4f8b8a2b6c1e
        python: 3.11.2
        probe: {reachable: true, bytes: 4096, seconds: 0.01, kbps: 3200}
        current: false
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_terminal import CommandTimeout
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_terminal_state import NotATerminal, terminal_state


def main():
    module = AnsibleModule(
        argument_spec=dict(
            package_style=dict(type="str", required=True, choices=["dpkg", "bundle"]),
            probe_url=dict(type="str"),
            probe_timeout=dict(type="float", default=10.0),
            release=dict(type="dict"),
        ),
        supports_check_mode=True,
    )
    try:
        facts = terminal_state(module.params["package_style"], module.params["probe_url"],
                               module.params["probe_timeout"], module.params["release"])
    except NotATerminal as error:
        module.fail_json(msg=str(error))
    except CommandTimeout as error:
        module.fail_json(msg="cannot read the terminal's state: %s" % error)
    module.exit_json(changed=False, ansible_facts={"pos_terminal": facts})


if __name__ == "__main__":
    main()
