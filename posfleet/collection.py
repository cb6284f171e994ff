"""The collection posfleet.fleet's shared code, for posfleet's control-node tools.

Code that the terminal and the control node share lives once, in the collection's
plugins/module_utils (the terminal has only what a module carries). Inside an Ansible process the
collection loader serves `ansible_collections.posfleet.fleet`; a plain tool (posfleet-release, poslab)
starts that loader once, from the Ansible configuration in force (ansible.cfg's collections_path, where
`make` links the checkout), as ansible-playbook does.
"""

import importlib

from ansible.plugins.loader import init_plugin_loader
from ansible.utils.collection_loader import AnsibleCollectionConfig

PACKAGE = "ansible_collections.posfleet.fleet.plugins.module_utils"


def module_utils(name):
    """The collection's plugins/module_utils/<name>.py, imported."""
    # Ansible's finder first: a plain import would settle `ansible_collections` on the venv's own
    # (where the `ansible` package's collections are) and never find posfleet.fleet afterwards.
    if AnsibleCollectionConfig.collection_finder is None:
        init_plugin_loader()
    try:
        return importlib.import_module(f"{PACKAGE}.{name}")
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            f"the collection posfleet.fleet is not found ({exc}): run `make venv` in the checkout (it links the "
            "collection into collections/), or install it with ansible-galaxy and set collections_path") from exc
