"""posfleet: tools that run on the control node (release build, signing, verification, publishing).

Everything here runs where Ansible runs, never on a terminal, so it may use the control node's
virtualenv (PyYAML, cryptography, jsonschema). Terminal code lives in plugins/modules and
plugins/module_utils and stays on the standard library.
"""
