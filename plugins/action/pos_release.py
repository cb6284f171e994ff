# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pos_release: load a release manifest on the control node, trusting nothing before its signature.

An action plugin rather than a module: it runs in the controller's process, where the posfleet
package (repository root) and cryptography are, and it never touches the play's hosts. The module
file of the same name holds the documentation. Which checks make a release acceptable is decided in
posfleet.release, the same code `posfleet-release verify` runs.
"""

from __future__ import annotations

import hashlib
from urllib.parse import urlsplit

from ansible.errors import AnsibleError
from ansible.module_utils.urls import open_url
from ansible.plugins.action import ActionBase

from posfleet import release as posrelease

ARGUMENT_SPEC = {
    "manifest": {"type": "str", "required": True},
    "public_key": {"type": "path", "required": True},
    "models": {"type": "list", "elements": "str", "default": []},
    "profiles": {"type": "list", "elements": "dict", "default": []},
    "timeout": {"type": "int", "default": 30},
    "validate_certs": {"type": "bool", "default": True},
}


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def _read(self, location, timeout, validate_certs, missing_ok=False):
        """Bytes at a URL or a local path; None when missing_ok and it does not exist."""
        if urlsplit(location).scheme in ("http", "https"):
            try:
                with open_url(location, timeout=timeout, validate_certs=validate_certs) as response:
                    return response.read()
            except Exception as exc:  # open_url raises HTTPError, URLError, socket and SSL errors alike
                if missing_ok and getattr(exc, "code", None) == 404:
                    return None
                raise posrelease.ReleaseError(f"cannot download {location}: {exc}") from None
        path = location
        try:
            with open(path, "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            if missing_ok:
                return None
            raise posrelease.ReleaseError(f"cannot read {path}: no such file") from None
        except OSError as exc:
            raise posrelease.ReleaseError(f"cannot read {path}: {exc.strerror}") from None

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        _, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        result["changed"] = False
        manifest = args["manifest"]
        if urlsplit(manifest).scheme not in ("http", "https"):
            manifest = self._loader.path_dwim(manifest)
        try:
            public_key = posrelease.load_public_key(self._loader.path_dwim(args["public_key"]))
            data = self._read(manifest, args["timeout"], args["validate_certs"])
            sig = self._read(manifest + ".sig", args["timeout"], args["validate_certs"], missing_ok=True)
            sig_text = None if sig is None else sig.decode("ascii", errors="replace")
            # The model profiles of the play's terminals, as their inventory gives them (an installed collection
            # has no models file of its own to read).
            profiles = {profile.get("name"): profile for profile in args["profiles"]} or None
            release = posrelease.check_release(data, sig_text, public_key, profiles, manifest, partial=True)
            posrelease.check_location(release, manifest, manifest)
        except posrelease.ReleaseError as exc:
            result.update(failed=True, msg=f"pos_release: {exc}")
            return result
        except AnsibleError as exc:
            result.update(failed=True, msg=f"pos_release: {manifest}: {exc}")
            return result
        wanted = list(dict.fromkeys([*args["models"], *(profiles or {})]))
        missing = [model for model in wanted if model not in release["models"]]
        if missing:
            result.update(failed=True, msg=(
                f"pos_release: {manifest}: release {release['release']} has no entry for model(s) "
                f"{', '.join(missing)}, which the play's terminals are; build the release for them or "
                "limit the play to the models it covers"))
            return result
        # For terminals that check the signature themselves (pos_package's signature): the exact bytes the
        # control node verified, and the key, so the terminal needs no configuration of its own.
        with open(self._loader.path_dwim(args["public_key"]), encoding="ascii") as handle:
            result["public_key_pem"] = handle.read()
        result["manifest_sha256"] = hashlib.sha256(data).hexdigest()
        result["manifest_url"] = manifest if urlsplit(manifest).scheme in ("http", "https") else None
        result.update(release=release, release_id=release["release"],
                      msg=f"release {release['release']} verified ({len(release['models'])} models)")
        return result
