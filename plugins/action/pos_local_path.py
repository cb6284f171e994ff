# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pos_local_path: a directory made private, or a file removed, on the control node, in-process.

What `ansible.builtin.file` with `delegate_to: localhost` does for pos_backup's staging of a snapshot,
without starting a Python module process on the control node for every terminal (two of them per
backup cost more control-node CPU than any step that runs on the terminal; docs/performance.md).
Only the two cases the backup needs:

- state: directory  -> the directory exists (parents made as needed) with exactly `mode`;
- state: absent     -> the file is gone (a directory is refused: this never removes a tree).
"""

from __future__ import annotations

import os
import stat

from ansible.plugins.action import ActionBase

ARGUMENT_SPEC = {
    "path": {"type": "path", "required": True},
    "state": {"type": "str", "required": True, "choices": ["directory", "absent"]},
    "mode": {"type": "str", "default": "0700"},
}


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False
    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        _, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        path = args["path"]
        result.update(path=path, changed=False)
        try:
            if args["state"] == "directory":
                mode = int(args["mode"], 8)
                if not os.path.isdir(path):
                    result["changed"] = True
                    if not self._task.check_mode:
                        os.makedirs(path, mode=mode)
                if os.path.isdir(path) and stat.S_IMODE(os.stat(path).st_mode) != mode:
                    result["changed"] = True
                    if not self._task.check_mode:
                        os.chmod(path, mode)
            else:
                if os.path.isdir(path) and not os.path.islink(path):
                    result.update(failed=True, msg=f"{path} is a directory: pos_local_path removes files only")
                    return result
                if os.path.lexists(path):
                    result["changed"] = True
                    if not self._task.check_mode:
                        os.unlink(path)
        except (OSError, ValueError) as exc:
            result.update(failed=True, msg=f"{path}: {exc}")
        return result
