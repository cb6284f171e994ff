# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The OS packages a release pins, on the terminal: what is installed, the way back, and the switch.

A release may pin Debian packages for a model (its manifest entry's `os_packages`). They are installed as
one change: one `dpkg --install` of the whole set, after the installed version of every package the set
changes has been kept in /var/lib/pos/rollback/os as a .deb (the one an earlier update installed, or one
rebuilt from the installed files, as dpkg-repack would, once `dpkg --verify` found them as shipped). The
way back (`switch_back`) is one `dpkg --install` of the kept .debs of what ran before; it is what the
update's rollback, rollback.yml and the update guard all use, so that an interruption at any moment ends
with every package at its old version or its new one.

Runs on terminals: standard library only, Python 3.9 or newer.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import tempfile

from ansible_collections.posfleet.fleet.plugins.module_utils.pos_app import (
    DPKG_BUILD_TIMEOUT,
    DPKG_VERIFY_TIMEOUT,
    dpkg_query,
    run_dpkg,
)
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_terminal import (
    ROLLBACK_DIR,
    run_bounded,
    terminal_path,
)

KEPT_DIR = ROLLBACK_DIR + "/os"
DPKG_INFO = "/var/lib/dpkg/info"
# Debian's own signal that an installed package wants the system restarted (written by maintainer scripts).
REBOOT_REQUIRED = "/run/reboot-required"
# dpkg --install of a whole set on slow flash, each package's maintainer scripts included (tzdata's and
# ca-certificates' rebuild their databases).
DPKG_SET_TIMEOUT = 900
# The files of a package's control area that dpkg keeps in its info directory, and so can be put back
# into a rebuilt package (md5sums lets dpkg --verify check the reinstalled files).
CONTROL_FILES = ("preinst", "postinst", "prerm", "postrm", "config", "templates", "triggers", "shlibs", "symbols",
                 "conffiles", "md5sums")
# Fields of an installed package's status that belong to the dpkg database, not to its control file.
DATABASE_FIELDS = ("Status", "Conffiles", "Config-Version")
# "ii": wanted installed, installed, no error. Anything else is a package half-way (unpacked, half-configured).
INSTALLED_OK = "ii"
# A Debian package name, as dpkg and the release manifests write it.
PACKAGE_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")


def _environment():
    # Maintainer scripts ask their debconf questions only of an operator at a console; a terminal has none.
    os.environ["DEBIAN_FRONTEND"] = "noninteractive"


def kept_name(name, version, arch):
    """The file name of a kept .deb: Debian's NAME_VERSION_ARCH.deb, its epoch colon written as %3a (as apt does)."""
    return "%s_%s_%s.deb" % (name, version.replace(":", "%3a"), arch)


def kept_path(name, version, arch):
    return terminal_path(os.path.join(KEPT_DIR, kept_name(name, version, arch)))


def installed(names=None):
    """{name: {"version", "arch", "ok"}} of the packages of `names` (None: of every package) dpkg knows; `ok` only
    when fully installed.

    A package dpkg has never seen is left out; one it knows but has removed has no version.
    """
    if names is not None and not names:
        return {}
    rc, out, err = dpkg_query("-W", "-f", "${Package}\t${Version}\t${Architecture}\t${db:Status-Abbrev}\n",
                              *(names or ()))
    if rc not in (0, 1):  # 1: some name is not known to dpkg, which its output then leaves out
        raise OSError("dpkg-query -W %s failed (exit %d): %s" % (" ".join(names or ()), rc, err.strip()[-400:]))
    found = {}
    for line in out.splitlines():
        fields = line.split("\t")
        if len(fields) != 4 or (names is not None and fields[0] not in names):
            continue
        name, version, arch, status = fields
        if not version or status[1:2] in ("n", "c"):  # not installed, or only its conffiles are left
            continue
        found[name] = {"version": version, "arch": arch, "ok": status[:2] == INSTALLED_OK and status[2:3] == " "}
    return found


def versions(names):
    """{name: version or None}: the version of each package of `names` that is fully installed, else None."""
    found = installed(names)
    return {name: found[name]["version"] if name in found and found[name]["ok"] else None for name in names}


def every_version():
    """{name: version} of every fully installed package: what a terminal's check-in reports of its OS."""
    return {name: item["version"] for name, item in installed().items() if item["ok"]}


def recorded(names):
    """{name: version or None}: what a way back must restore, the installed version of each package of `names`
    whatever its state (a half-installed one is put back from its kept .deb), None for one not installed."""
    found = installed(names)
    return {name: found[name]["version"] if name in found else None for name in names}


def audit():
    """What `dpkg --audit` finds wrong with the package database ("" when it is consistent)."""
    rc, out, err = run_dpkg("dpkg", "--audit", timeout=DPKG_VERIFY_TIMEOUT, leaves="nothing was changed")
    if rc != 0 or out.strip():
        return (out or err).strip() or "exit %d" % rc
    return ""


def file_differences(names, conffiles=False):
    """What `dpkg --verify` finds changed in the installed files of `names` ("" when nothing).

    A conffile an operator changed on purpose (` c ` in dpkg's report) is not a difference unless
    `conffiles`: a rebuilt package takes the configuration as it is.
    """
    rc, out, err = run_dpkg("dpkg", "--verify", *names, timeout=DPKG_VERIFY_TIMEOUT, leaves="nothing was changed")
    # Each line is "??5?????? [c] PATH": the checks, the attribute (c: a conffile) when there is one, the path.
    lines = [line for line in out.splitlines()
             if line.strip() and (conffiles or line.split(None, 2)[1:2] != ["c"])]
    if rc != 0 and not out.strip():
        return err.strip() or "exit %d" % rc
    return "\n".join(lines)


def _control_text(status):
    """The control file of an installed package, from its `dpkg-query -s` status."""
    control, keep = [], False
    for line in status.splitlines():
        if line[:1] in (" ", "\t"):
            if keep:
                control.append(line)
            continue
        keep = bool(line.strip()) and line.split(":", 1)[0] not in DATABASE_FIELDS
        if keep:
            control.append(line)
    return "\n".join(control) + "\n"


def _info_file(name, arch, kind):
    """The info file `kind` dpkg keeps for the package (named NAME:ARCH.kind for Multi-Arch: same packages)."""
    for candidate in ("%s:%s.%s" % (name, arch, kind), "%s.%s" % (name, kind)):
        path = terminal_path(os.path.join(DPKG_INFO, candidate))
        if os.path.isfile(path):
            return path
    return None


def repack(name, dest):
    """Rebuild the installed package `name` as a .deb at `dest`, from its installed files, as dpkg-repack would.

    Only when `dpkg --verify` finds its files as the package shipped them: a way back must not bring back
    a tampered file. OSError names what stands in the way; nothing is written at `dest` then.
    """
    differences = file_differences([name])
    if differences:
        raise OSError("its installed files differ from the package (dpkg --verify %s: %s); reinstall %s"
                      % (name, differences[:400], name))
    rc, status, err = dpkg_query("-s", name)
    if rc != 0:
        raise OSError("dpkg-query -s %s failed: %s" % (name, err.strip()[-400:]))
    arch = next((line.split(":", 1)[1].strip() for line in status.splitlines() if line.startswith("Architecture:")),
                "all")
    rc, listing, err = dpkg_query("-L", name)
    if rc != 0:
        raise OSError("dpkg-query -L %s failed: %s" % (name, err.strip()[-400:]))
    work = tempfile.mkdtemp(prefix=".repack-", dir=os.path.dirname(dest))
    try:
        tree = os.path.join(work, "root")
        control_dir = os.path.join(tree, "DEBIAN")
        os.makedirs(control_dir)
        with open(os.path.join(control_dir, "control"), "w", encoding="utf-8") as handle:
            handle.write(_control_text(status))
        for kind in CONTROL_FILES:
            source = _info_file(name, arch, kind)
            if source:
                shutil.copy2(source, os.path.join(control_dir, kind))
                os.chmod(os.path.join(control_dir, kind), 0o755 if kind in ("preinst", "postinst", "prerm",
                                                                            "postrm", "config") else 0o644)
        for line in listing.splitlines():
            path = line.strip()
            if not path.startswith("/") or path == "/.":
                continue  # "diverted by ..." and the like
            source, target = terminal_path(path), os.path.join(tree, path.lstrip("/"))
            if os.path.islink(source):
                os.makedirs(os.path.dirname(target), exist_ok=True)
                os.symlink(os.readlink(source), target)
            elif os.path.isdir(source):
                os.makedirs(target, exist_ok=True)
                os.chmod(target, os.stat(source).st_mode & 0o7777)
            elif os.path.isfile(source):
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copy2(source, target)
        # dpkg-deb works on files, not on a package database: no --root (run_dpkg's) for it. gzip at its fastest:
        # a copy kept on the flash for a way back, made while the terminal is out of service, where xz (dpkg-deb's
        # default) takes seconds of a terminal's CPU per package.
        rc, out, err = run_bounded(["dpkg-deb", "-Zgzip", "-z1", "--build", "--root-owner-group", tree,
                                    dest + ".tmp"],
                                   DPKG_BUILD_TIMEOUT, "nothing is installed yet; the next run rebuilds it")
        if rc != 0:
            raise OSError("dpkg-deb --build of %s failed (exit %d): %s" % (name, rc, (err or out).strip()[-400:]))
        os.rename(dest + ".tmp", dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def keep(found):
    """Make sure the installed version of every package of `found` (installed()) has its .deb kept.

    {name: "kept" or "repacked"}; OSError names the package whose way back cannot be kept.
    """
    how = {}
    os.makedirs(terminal_path(KEPT_DIR), mode=0o755, exist_ok=True)
    for name, package in sorted(found.items()):
        path = kept_path(name, package["version"], package["arch"])
        if os.path.isfile(path):
            how[name] = "kept"
            continue
        if not package["ok"]:
            raise OSError("%s %s is not fully installed and no .deb of it is kept in %s, so there would be no way "
                          "back to it; repair it first (dpkg --configure -a)" % (name, package["version"], KEPT_DIR))
        try:
            repack(name, path)
        except OSError as error:
            raise OSError("cannot keep a way back to %s %s: %s" % (name, package["version"], error)) from error
        how[name] = "repacked"
    return how


def install(debs, leaves):
    """Install the .debs `debs` with one dpkg call; OSError saying why when dpkg fails (CommandTimeout: hangs)."""
    _environment()
    rc, out, err = run_dpkg("dpkg", "--install", *debs, timeout=DPKG_SET_TIMEOUT, leaves=leaves, merge_output=True)
    if rc != 0:
        raise OSError("dpkg --install of %d package(s) failed (exit %d): %s"
                      % (len(debs), rc, (out + err).strip()[-800:]))


def find_kept(name, version):
    """The kept .deb of `name` at `version` (any architecture), or None."""
    pattern = os.path.join(terminal_path(KEPT_DIR), "%s_%s_*.deb" % (glob.escape(name),
                                                                     glob.escape(version.replace(":", "%3a"))))
    return next(iter(sorted(glob.glob(pattern))), None)


def plan_back(before):
    """(debs, removals, problems): how to bring the packages of `before` ({name: version or None}) back.

    A package at its `before` version and fully installed needs nothing; one that was not installed before
    is removed; any other is reinstalled from its kept .deb, and a missing one is a problem.
    """
    found = installed(sorted(before))
    debs, removals, problems = [], [], []
    for name, version in sorted(before.items()):
        now = found.get(name)
        if version is None:
            if now:
                removals.append(name)
            continue
        if now and now["ok"] and now["version"] == version:
            continue
        deb = find_kept(name, version)
        if deb:
            debs.append(deb)
        else:
            problems.append("the kept .deb of %s %s is gone from %s" % (name, version, KEPT_DIR))
    return debs, removals, problems


def switch_back(before):
    """Put the packages of `before` back at their versions; the list of what was switched.

    OSError when a kept .deb is missing (nothing switched), dpkg fails, or the database is not consistent
    afterwards.
    """
    debs, removals, problems = plan_back(before)
    if problems:
        raise OSError("; ".join(problems))
    leaves = "the OS packages may be left half-installed; rollback.yml installs the kept .debs again"
    if debs:
        install(debs, leaves)
    if removals:
        _environment()
        rc, out, err = run_dpkg("dpkg", "--remove", *removals, timeout=DPKG_SET_TIMEOUT, leaves=leaves,
                                merge_output=True)
        if rc != 0:
            raise OSError("dpkg --remove %s failed (exit %d): %s"
                          % (" ".join(removals), rc, (out + err).strip()[-400:]))
    wrong = audit()
    if wrong:
        raise OSError("the OS packages were put back but dpkg --audit finds: %s" % wrong[:400])
    return ["%s %s" % (os.path.basename(deb).split("_")[0], before[os.path.basename(deb).split("_")[0]])
            for deb in debs] + ["%s removed" % name for name in removals]


def prune(keep_versions):
    """Remove kept .debs of the packages of `keep_versions` ({name: set of versions}) at any other version."""
    directory = terminal_path(KEPT_DIR)
    for name, wanted in keep_versions.items():
        for path in glob.glob(os.path.join(directory, "%s_*.deb" % glob.escape(name))):
            version = os.path.basename(path)[len(name) + 1:].rsplit("_", 1)[0].replace("%3a", ":")
            if version not in wanted:
                os.unlink(path)


def reboot_required():
    """True when an installed package asked for a restart of the system (Debian's /run/reboot-required)."""
    return os.path.exists(terminal_path(REBOOT_REQUIRED))
