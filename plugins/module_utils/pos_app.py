# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How a model installs its payment app: the one place where a terminal's package style is looked up.

A model profile's `package_style` names one of the styles below; every terminal-side module asks the
style (`app(style)`) instead of branching on its name:

- `bundle` (vendor bundle): one directory per version in /opt/pos/app, `current` a link switched by one
  rename; the previous version's directory stays for the way back; deltas apply to the installed tree.
- `dpkg`: the Debian package `posd`; the way back is the previous version's .deb, kept in
  /var/lib/pos/rollback (downloaded, or rebuilt from the installed files); no deltas.

A further style (an OS package set, say) is a further class here, not a branch in the modules.

Runs on terminals: standard library only, Python 3.9 or newer.
"""

from __future__ import annotations

import os

from ansible_collections.posfleet.fleet.plugins.module_utils import pos_versions as versions
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_archive import bundle_problems
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_terminal import (
    APP_DIR,
    ROLLBACK_DIR,
    CommandTimeout,
    dpkg_argv,
    read_text,
    run_bounded,
    sha256_file,
    terminal_path,
)

# How long each package command may run on a terminal before it is stopped (seconds):
# dpkg-query and dpkg-deb --field read the package database or one control file, seconds even on slow flash.
DPKG_READ_TIMEOUT = 30
# dpkg --verify reads and hashes every file of the installed app from slow flash.
DPKG_VERIFY_TIMEOUT = 120
# dpkg-deb --build compresses the whole installed app again on a terminal's slow CPU.
DPKG_BUILD_TIMEOUT = 300
# dpkg -i unpacks the app onto slow flash and runs posd's maintainer scripts (which stop posd): minutes.
DPKG_INSTALL_TIMEOUT = 600


def deb_name(version):
    """The file name of posd `version`'s package as kept in the rollback directory."""
    return "posd_%s_all.deb" % version


def run_dpkg(command, *args, timeout, leaves, merge_output=False):
    """Run dpkg or dpkg-query on the terminal's package database; (rc, stdout, stderr).

    CommandTimeout after `timeout` (one of the constants above) names the command and `leaves`.
    """
    return run_bounded(dpkg_argv(command, *args), timeout, leaves, what=" ".join((command, *args)),
                       merge_output=merge_output)


def dpkg_query(*args):
    """dpkg-query `args` (read-only); (rc, stdout, stderr)."""
    return run_dpkg("dpkg-query", *args, timeout=DPKG_READ_TIMEOUT, leaves="nothing was changed")


def dpkg_install(deb, leaves):
    """dpkg -i `deb`; OSError saying why when it fails, CommandTimeout (with `leaves`) when it hangs."""
    rc, out, err = run_dpkg("dpkg", "-i", deb, timeout=DPKG_INSTALL_TIMEOUT, leaves=leaves, merge_output=True)
    if rc != 0:
        raise OSError("dpkg -i %s failed (exit %d): %s" % (deb, rc, (out + err).strip()[-800:]))


class BundleApp:
    """The app as a vendor bundle: a directory per version and a `current` link."""

    style = "bundle"
    # Free space an install needs, in multiples of the artifact: the download, the unpacked tree, margin.
    disk_factor = 3
    has_deltas = True
    # The download is unpacked into its version's directory before the switch, which is a rename.
    unpacked = True

    def version(self):
        """The installed version (what `current` points at), or None."""
        version = versions.current(terminal_path(APP_DIR))
        return os.path.basename(version) if version else None

    def present(self):
        """Whether the app is installed this way now."""
        return os.path.islink(terminal_path(os.path.join(APP_DIR, "current")))

    def intact(self, version):
        """Whether `version` is on the flash, unpacked and matching its MANIFEST.json."""
        final = terminal_path(os.path.join(APP_DIR, version))
        return os.path.isdir(final) and not os.path.islink(final) and not bundle_problems(final, version)

    def kept_problem(self, version):
        """Why the terminal cannot switch back to `version` by itself (what is gone or damaged), or None."""
        path = os.path.join(APP_DIR, version)
        if not os.path.isdir(terminal_path(path)):
            return "%s is gone (pos_package keeps the previous version; was it removed by hand?)" % path
        problem = bundle_problems(terminal_path(path), version)
        return None if problem is None else "%s is damaged (%s)" % (path, problem)

    def switch_back(self, version):
        """Make the kept `version` the running app's files again (posd still has to restart)."""
        versions.switch(terminal_path(APP_DIR), version)

    def kept_download(self, version, sha256, size):
        """What an earlier run left that makes the download unnecessary (the version unpacked, intact)."""
        del sha256, size  # a bundle kept is checked against its own MANIFEST.json instead
        return {"path": None} if self.intact(version) else None

    def snapshot_files(self, version):
        """{name in a backup snapshot: path} that a restore needs beyond the data: none, the tree stays."""
        del version
        return {}

    def restore_from_snapshot(self, version, extract):
        raise OSError("a bundle's version %s cannot come from a snapshot (snapshots hold no app tree)" % version)

    def check_files(self):
        """(ok, detail): every file of the running version as its MANIFEST.json lists it."""
        base = os.path.realpath(terminal_path(os.path.join(APP_DIR, "current")))
        problem = bundle_problems(base, os.path.basename(base))
        if problem:
            return False, "%s/current: %s" % (APP_DIR, problem)
        return True, "every file of %s matches its MANIFEST.json" % os.path.basename(base)


class DebApp:
    """The app as the Debian package posd, with the previous version's .deb kept for the way back."""

    style = "dpkg"
    # The download and the unpacked package.
    disk_factor = 2
    has_deltas = False
    # The package manager installs the downloaded file at the switch.
    unpacked = False

    def version(self):
        """The installed version of posd, or None."""
        if os.environ.get("POS_ROOT"):
            return read_text("/usr/share/posd/VERSION")
        rc, out = dpkg_query("-W", "-f", "${Version}", "posd")[:2]
        return out.strip() if rc == 0 and out.strip() else None

    def present(self):
        try:
            return bool(self.version())
        except CommandTimeout:
            raise  # dpkg-query is there but hung: that says nothing about the app
        except OSError:
            return False  # no dpkg-query on this firmware: not a dpkg terminal

    def kept(self, version):
        """The path of `version`'s kept .deb on the terminal (it may not exist)."""
        return terminal_path(os.path.join(ROLLBACK_DIR, deb_name(version)))

    def kept_problem(self, version):
        deb = os.path.join(ROLLBACK_DIR, deb_name(version))
        return None if os.path.isfile(self.kept(version)) else "its kept package %s is gone" % deb

    def restore_from_snapshot(self, version, extract):
        """Put `version`'s kept package back from a snapshot; `extract(dest)` writes the snapshot's copy."""
        deb = self.kept(version)
        os.makedirs(os.path.dirname(deb), mode=0o755, exist_ok=True)
        extract(deb + ".tmp")
        os.rename(deb + ".tmp", deb)

    def switch_back(self, version):
        deb = self.kept(version)
        dpkg_install(deb, "posd may be left half-installed; rollback.yml reinstalls %s" % deb)

    def kept_download(self, version, sha256, size):
        """The verified .deb an interrupted earlier run already moved into the rollback directory."""
        path = self.kept(version)
        if os.path.isfile(path) and os.path.getsize(path) == size and sha256_file(path) == sha256:
            return {"path": path}
        return None

    def snapshot_files(self, version):
        """The kept .deb of the running version, so that a restore can reinstall it."""
        kept = self.kept(version)
        return {"rollback/%s" % deb_name(version): kept} if os.path.isfile(kept) else {}

    def file_differences(self):
        """What `dpkg --verify posd` finds changed in posd's installed files ("" when nothing)."""
        rc, out, err = run_dpkg("dpkg", "--verify", "posd", timeout=DPKG_VERIFY_TIMEOUT, leaves="nothing was changed")
        if rc != 0 or out.strip():
            return (out or err).strip() or "exit %d" % rc
        return ""

    def check_files(self):
        try:
            differences = self.file_differences()
        except CommandTimeout as error:
            return False, str(error)
        if differences:
            return False, "dpkg --verify posd: %s" % differences[:600]
        return True, "dpkg --verify posd found no difference"


STYLES = {app.style: app for app in (BundleApp(), DebApp())}


def app(style):
    """The package style `style` of a model profile."""
    try:
        return STYLES[style]
    except KeyError:
        raise ValueError("unknown package style %r (expected %s)" % (style, " or ".join(sorted(STYLES)))) from None


def app_version(style):
    """The installed payment app version, read the way the model's package style records it."""
    return app(style).version()


def installed_style():
    """How the payment app is installed now: a style's name, or None when no app is installed."""
    for name in ("bundle", "dpkg"):  # a bundle's link is the cheaper look, and decides alone
        if STYLES[name].present():
            return name
    return None
