"""Every test process imports the collection's code as Ansible does: through Ansible's collection loader,
from this checkout, which `make` links as collections/ansible_collections/posfleet/fleet."""

from pathlib import Path

from ansible.plugins.loader import init_plugin_loader

init_plugin_loader([str(Path(__file__).resolve().parents[1] / "collections")])
