# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Versioned directories with a `current` link: how a terminal keeps its app bundle and each data pack.

    <base>/<version>/          one directory per version kept (the running one and the one before it)
    <base>/current -> <version>
    <base>/<version>.staging   a version being unpacked or rebuilt, never read by posd

A new version is built in its .staging directory, checked, put in place with one rename (place), and
switched to with one rename of the link (switch): posd and a power cut see the old version or the new
one, never a mix. What is kept for the way back is the previous version, so prune removes the others.
pos_package (the bundle), pos_data_sync, pos_restore and the update guard all keep versions this way.

Runs on terminals: standard library only, Python 3.9 or newer.
"""

from __future__ import annotations

import os
import shutil

from ansible_collections.posfleet.fleet.plugins.module_utils.pos_terminal import atomic_symlink

CURRENT = "current"


def current(base):
    """The version `current` points at, or None."""
    try:
        return os.readlink(os.path.join(base, CURRENT))
    except OSError:
        return None


def place(base, version, staged):
    """Rename the built directory `staged` to <base>/<version>, replacing one of that version that is there
    (damaged: an intact version is never built again) by a rename too, so the version is never missing."""
    final = os.path.join(base, version)
    if os.path.lexists(final):
        aside = final + ".old"
        shutil.rmtree(aside, ignore_errors=True)
        os.rename(final, aside)
        os.rename(staged, final)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.rename(staged, final)


def switch(base, version):
    """Point `current` at `version` with one rename."""
    atomic_symlink(version, os.path.join(base, CURRENT))


def prune(base, keep):
    """Remove every directory under `base` but the versions in `keep` (the current one and the one before):
    older versions, and what an interrupted run left (.staging, .old)."""
    try:
        entries = os.listdir(base)
    except FileNotFoundError:
        return
    for entry in entries:
        path = os.path.join(base, entry)
        if entry == CURRENT or entry in keep or os.path.islink(path) or not os.path.isdir(path):
            continue
        shutil.rmtree(path, ignore_errors=True)
