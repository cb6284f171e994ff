"""OS packages on a terminal (pos_os, pos_os_packages): what is installed, the way back kept, the switch and back.

Every test runs the real dpkg with --root on a scratch package database in tmp_path (POS_ROOT), on tiny .debs
built here with dpkg-deb: each has a file under /usr/share and a conffile under /etc. The scratch root has no
shell, so a maintainer script cannot run there: a package with a postinst is one whose configuration fails,
as a broken maintainer script fails on a terminal. What the tests assert is read back with dpkg-query and
dpkg itself, not with the code under test.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess

import pytest
from ansible_collections.posfleet.fleet.plugins.module_utils import pos_os
from conftest import tree_state

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None or os.geteuid() != 0,
                                reason="needs dpkg-deb and root (dpkg --root)")

KEPT = "var/lib/pos/rollback/os"
CONF = "level=1\n"


def build_deb(directory, name, version, postinst=None):
    """NAME_VERSION_all.deb in `directory`: /usr/share/fleet-os/NAME/VERSION and the conffile /etc/fleet-os/NAME.conf,
    with md5sums as Debian builds them (conffiles left out); `postinst` is the script's text, if any."""
    tree = directory / ".trees" / f"{name}_{version}"
    control = tree / "DEBIAN"
    control.mkdir(parents=True)
    payload = tree / "usr" / "share" / "fleet-os" / name
    payload.mkdir(parents=True)
    (payload / "VERSION").write_text(f"{name} {version}\n")
    (tree / "etc" / "fleet-os").mkdir(parents=True)
    (tree / "etc" / "fleet-os" / f"{name}.conf").write_text(CONF)
    (control / "control").write_text(f"Package: {name}\nVersion: {version}\nArchitecture: all\n"
                                     f"Maintainer: posfleet tests <tests@posfleet.invalid>\n"
                                     f"Description: synthetic {name} for posfleet's OS package tests\n")
    (control / "conffiles").write_text(f"/etc/fleet-os/{name}.conf\n")
    digest = hashlib.md5((payload / "VERSION").read_bytes()).hexdigest()
    (control / "md5sums").write_text(f"{digest}  usr/share/fleet-os/{name}/VERSION\n")
    if postinst is not None:
        (control / "postinst").write_text(postinst)
        (control / "postinst").chmod(0o755)
    path = directory / f"{name}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(tree), str(path)], check=True,
                   capture_output=True, timeout=60)
    return path


@pytest.fixture(scope="module")
def debs(tmp_path_factory):
    """{(name, version): .deb} for alpha and beta 1.0 and 2.0; ("beta", "2.0", "broken") is a beta 2.0 whose
    postinst fails, in a directory of its own (the same file name as the good one)."""
    directory = tmp_path_factory.mktemp("os-debs")
    built = {(name, version): build_deb(directory, name, version)
             for name in ("alpha", "beta") for version in ("1.0", "2.0")}
    (directory / "broken").mkdir()
    built["beta", "2.0", "broken"] = build_deb(directory / "broken", "beta", "2.0", postinst="#!/bin/sh\nexit 1\n")
    return built


def make_root(path):
    """An empty package database under `path`, as dpkg --root needs it."""
    admin = path / "var" / "lib" / "dpkg"
    for directory in ("info", "updates", "triggers"):
        (admin / directory).mkdir(parents=True)
    (admin / "status").touch()
    (admin / "available").touch()
    return path


def shim_dpkg_deb(directory, monkeypatch):
    """Put a dpkg-deb on PATH that drops a leading --root=...: pos_os runs dpkg-deb through run_dpkg, which gives
    every command dpkg's --root under POS_ROOT, and dpkg-deb has no such option (see
    test_dpkg_deb_runs_without_dpkg_root_option). On a terminal (no POS_ROOT) the shim changes nothing."""
    directory.mkdir()
    shim = directory / "dpkg-deb"
    shim.write_text('#!/bin/sh\ncase "$1" in --root=*) shift ;; esac\nexec %s "$@"\n' % shutil.which("dpkg-deb"))
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", "%s%s%s" % (directory, os.pathsep, os.environ["PATH"]))


@pytest.fixture
def bare_root(tmp_path, monkeypatch):
    """A terminal root with an empty package database; POS_ROOT points at it for the in-process calls."""
    terminal = make_root(tmp_path / "root")
    monkeypatch.setenv("POS_ROOT", str(terminal))
    monkeypatch.setenv("DEBIAN_FRONTEND", "noninteractive")  # pos_os sets it; monkeypatch puts it back
    return terminal


@pytest.fixture
def root(bare_root, tmp_path, monkeypatch):
    """bare_root, with dpkg-deb shimmed (shim_dpkg_deb) for the module and the in-process calls."""
    shim_dpkg_deb(tmp_path / "bin", monkeypatch)
    return bare_root


def dpkg(root, *args, check=True):
    proc = subprocess.run(["dpkg", f"--root={root}", *args], capture_output=True, text=True, timeout=60,
                          check=False)
    if check:
        assert proc.returncode == 0, f"dpkg {' '.join(args)}: {proc.stdout}{proc.stderr}"
    return proc


def packages(root):
    """{name: "VERSION STATUS"} of every package the database knows and has not removed (dpkg-query's view)."""
    out = subprocess.run(["dpkg-query", f"--root={root}", "-W", "-f", "${Package} ${Version} ${db:Status-Abbrev}\n"],
                         capture_output=True, text=True, timeout=60, check=False).stdout
    found = {}
    for line in out.splitlines():
        name, version, status = line.split(" ", 2)
        if status[1] not in "nc":
            found[name] = "%s %s" % (version, status.strip())
    return found


def audit(root):
    return dpkg(root, "--audit", check=False).stdout.strip()


def verify(root, *names):
    return dpkg(root, "--verify", *names, check=False).stdout.strip()


def kept(root):
    directory = root / KEPT
    return sorted(os.listdir(directory)) if directory.is_dir() else []


# --- installed() and versions() ----------------------------------------------------------------------------------


def test_installed_and_versions_tell_installed_half_installed_removed_and_unknown_apart(root, debs):
    dpkg(root, "--install", str(debs["alpha", "1.0"]))
    assert dpkg(root, "--install", str(debs["beta", "2.0", "broken"]), check=False).returncode != 0
    assert packages(root) == {"alpha": "1.0 ii", "beta": "2.0 iF"}  # beta's configuration failed

    assert pos_os.installed(["alpha", "beta", "gamma"]) == {
        "alpha": {"version": "1.0", "arch": "all", "ok": True},
        "beta": {"version": "2.0", "arch": "all", "ok": False},
    }
    assert pos_os.versions(["alpha", "beta", "gamma"]) == {"alpha": "1.0", "beta": None, "gamma": None}
    # What a check-in reports: every fully installed package, the half-configured beta left out.
    assert pos_os.every_version() == {"alpha": "1.0"}
    assert pos_os.audit()  # the half-configured beta

    dpkg(root, "--remove", "alpha")  # its conffile stays: "rc"
    assert pos_os.installed(["alpha"]) == {}
    assert pos_os.versions(["alpha"]) == {"alpha": None}


# --- keep() and repack() -----------------------------------------------------------------------------------------


def test_keep_rebuilds_an_intact_package_that_reinstalls_as_shipped(root, debs, tmp_path):
    dpkg(root, "--install", str(debs["alpha", "1.0"]))

    assert pos_os.keep(pos_os.installed(["alpha"])) == {"alpha": "repacked"}

    rebuilt = root / KEPT / "alpha_1.0_all.deb"
    assert kept(root) == ["alpha_1.0_all.deb"]  # no .tmp or work directory left beside it
    fields = subprocess.run(["dpkg-deb", "--field", str(rebuilt), "Package", "Version", "Architecture"],
                            capture_output=True, text=True, check=True, timeout=60).stdout
    assert fields == "Package: alpha\nVersion: 1.0\nArchitecture: all\n"
    # On another terminal the rebuilt package installs the same files, which dpkg --verify finds as shipped.
    other = make_root(tmp_path / "other")
    dpkg(other, "--install", str(rebuilt))
    assert packages(other) == {"alpha": "1.0 ii"} and verify(other) == "" and audit(other) == ""
    assert (other / "usr/share/fleet-os/alpha/VERSION").read_text() == "alpha 1.0\n"
    assert (other / "etc/fleet-os/alpha.conf").read_text() == CONF
    # A second update finds it kept.
    assert pos_os.keep(pos_os.installed(["alpha"])) == {"alpha": "kept"}


def test_keep_refuses_a_package_whose_installed_files_were_changed(root, debs):
    dpkg(root, "--install", str(debs["alpha", "1.0"]), str(debs["beta", "1.0"]))
    (root / "usr/share/fleet-os/beta/VERSION").write_text("tampered\n")

    with pytest.raises(OSError) as refused:
        pos_os.keep(pos_os.installed(["alpha", "beta"]))

    assert "beta 1.0" in str(refused.value) and "/usr/share/fleet-os/beta/VERSION" in str(refused.value)
    assert "alpha" not in str(refused.value)
    # alpha (sorted first) was kept; nothing of beta, not even a half-built file.
    assert kept(root) == ["alpha_1.0_all.deb"]


def test_keep_accepts_a_conffile_the_operator_changed(root, debs, tmp_path):
    dpkg(root, "--install", str(debs["alpha", "1.0"]))
    (root / "etc/fleet-os/alpha.conf").write_text("level=9\n")
    assert verify(root, "alpha").endswith(" c /etc/fleet-os/alpha.conf")

    assert pos_os.keep(pos_os.installed(["alpha"])) == {"alpha": "repacked"}

    other = make_root(tmp_path / "other")
    dpkg(other, "--install", str(root / KEPT / "alpha_1.0_all.deb"))
    assert (other / "etc/fleet-os/alpha.conf").read_text() == "level=9\n"  # the configuration as it was


def test_keep_refuses_a_half_installed_package_without_a_kept_deb(root, debs):
    dpkg(root, "--install", str(debs["beta", "2.0", "broken"]), check=False)

    with pytest.raises(OSError, match=r"beta 2\.0 is not fully installed"):
        pos_os.keep(pos_os.installed(["beta"]))
    assert kept(root) == []


def test_keep_repacks_with_dpkg_deb_which_takes_no_root_option(bare_root, debs):
    dpkg(bare_root, "--install", str(debs["alpha", "1.0"]))

    assert pos_os.keep(pos_os.installed(["alpha"])) == {"alpha": "repacked"}


# --- switch_back() -----------------------------------------------------------------------------------------------


@pytest.fixture
def upgraded(root, debs):
    """alpha and beta 1.0 installed and kept (repacked), then 2.0 of both installed over them."""
    dpkg(root, "--install", str(debs["alpha", "1.0"]), str(debs["beta", "1.0"]))
    pos_os.keep(pos_os.installed(["alpha", "beta"]))
    dpkg(root, "--install", str(debs["alpha", "2.0"]), str(debs["beta", "2.0"]))
    assert packages(root) == {"alpha": "2.0 ii", "beta": "2.0 ii"}
    return root


def test_switch_back_puts_the_kept_versions_back(upgraded):
    assert pos_os.switch_back({"alpha": "1.0", "beta": "1.0"}) == ["alpha 1.0", "beta 1.0"]

    assert packages(upgraded) == {"alpha": "1.0 ii", "beta": "1.0 ii"}
    assert audit(upgraded) == "" and verify(upgraded) == ""
    assert (upgraded / "usr/share/fleet-os/alpha/VERSION").read_text() == "alpha 1.0\n"


def test_switch_back_leaves_a_package_already_back_alone_and_removes_one_that_was_not_installed(upgraded):
    assert pos_os.switch_back({"alpha": "2.0", "beta": None}) == ["beta removed"]

    assert packages(upgraded) == {"alpha": "2.0 ii"}
    assert not (upgraded / "usr/share/fleet-os/beta/VERSION").exists()
    assert audit(upgraded) == ""


def test_switch_back_without_a_kept_deb_changes_nothing(upgraded):
    (upgraded / KEPT / "beta_1.0_all.deb").unlink()
    database = (upgraded / "var/lib/dpkg/status").read_bytes()

    with pytest.raises(OSError, match=r"the kept \.deb of beta 1\.0 is gone"):
        pos_os.switch_back({"alpha": "1.0", "beta": "1.0"})

    # Not even alpha, whose .deb is there: the switch is all or nothing.
    assert packages(upgraded) == {"alpha": "2.0 ii", "beta": "2.0 ii"}
    assert (upgraded / "var/lib/dpkg/status").read_bytes() == database


# --- the module, end to end --------------------------------------------------------------------------------------


def publish(dist, *debs):
    """Serve `debs` on the distribution point; their entries as a release manifest's os_packages lists them."""
    entries = []
    for deb in debs:
        name, version = deb.name.split("_")[:2]
        data = deb.read_bytes()
        dist.publish(f"/pool/{deb.parent.name}/{deb.name}", data)
        entries.append({"name": name, "version": version, "arch": "all", "url": f"pool/{deb.parent.name}/{deb.name}",
                        "sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "installed_size_kb": 4})
    return entries


def module_args(dist, entries):
    return {"packages": entries, "base_url": dist.url, "restart": False, "timeout": 10, "retries": 0,
            "retry_delay": 0.1}


@pytest.fixture
def terminal_v1(root, debs):
    """A terminal with alpha and beta 1.0 installed by its image (no .deb of them kept)."""
    dpkg(root, "--install", str(debs["alpha", "1.0"]), str(debs["beta", "1.0"]))
    return root


def test_module_installs_the_set_keeps_the_way_back_and_then_has_nothing_to_do(terminal_v1, run_module, dist, debs):
    args = module_args(dist, publish(dist, debs["alpha", "2.0"], debs["beta", "2.0"]))

    result = run_module("pos_os_packages", args, terminal_v1)

    assert not result.get("failed"), result.get("msg")
    assert result["changed"] and result["installed"] == ["alpha", "beta"]
    assert result["before"] == {"alpha": "1.0", "beta": "1.0"} and result["after"] == {"alpha": "2.0", "beta": "2.0"}
    assert result["kept"] == {"alpha": "repacked", "beta": "repacked"}
    assert result["bytes_downloaded"] == sum(entry["size"] for entry in args["packages"])
    assert packages(terminal_v1) == {"alpha": "2.0 ii", "beta": "2.0 ii"}
    assert audit(terminal_v1) == "" and verify(terminal_v1) == ""
    assert kept(terminal_v1) == ["alpha_1.0_all.deb", "alpha_2.0_all.deb", "beta_1.0_all.deb", "beta_2.0_all.deb"]
    requests = len(dist.requests)

    again = run_module("pos_os_packages", args, terminal_v1)

    assert not again.get("failed") and not again["changed"], again
    assert again["installed"] == [] and again["before"] == again["after"] == {"alpha": "2.0", "beta": "2.0"}
    assert len(dist.requests) == requests  # nothing downloaded


def test_module_installs_again_from_the_kept_debs_after_a_rollback_without_downloading(terminal_v1, run_module,
                                                                                        dist, debs):
    args = module_args(dist, publish(dist, debs["alpha", "2.0"], debs["beta", "2.0"]))
    assert run_module("pos_os_packages", args, terminal_v1)["installed"] == ["alpha", "beta"]
    assert pos_os.switch_back({"alpha": "1.0", "beta": "1.0"}) == ["alpha 1.0", "beta 1.0"]  # the rollback
    # A file by that name that is not the manifest's (a repack) must not pass for it: beta is fetched again.
    beta = terminal_v1 / "var/lib/pos/rollback/os/beta_2.0_all.deb"
    beta.write_bytes(beta.read_bytes() + b"\0")
    requests = len(dist.requests)

    check = run_module("pos_os_packages", args, terminal_v1, check=True)
    again = run_module("pos_os_packages", args, terminal_v1)

    assert check["reused"] == again["reused"] == ["alpha"], again
    assert check["would_download"] == again["bytes_downloaded"] == args["packages"][1]["size"]
    assert [path for path, _range in dist.requests[requests:] if "alpha" in path] == []
    assert not again.get("failed") and again["installed"] == ["alpha", "beta"], again.get("msg")
    assert packages(terminal_v1) == {"alpha": "2.0 ii", "beta": "2.0 ii"}
    assert audit(terminal_v1) == "" and verify(terminal_v1) == ""


def test_module_check_mode_says_what_it_would_do_and_changes_nothing(terminal_v1, run_module, dist, debs):
    args = module_args(dist, publish(dist, debs["alpha", "2.0"], debs["beta", "2.0"]))
    before = tree_state(terminal_v1)

    result = run_module("pos_os_packages", args, terminal_v1, check=True)

    assert not result.get("failed") and result["changed"], result
    assert result["after"] == {"alpha": "2.0", "beta": "2.0"} and result["installed"] == ["alpha", "beta"]
    assert result["would_download"] == sum(entry["size"] for entry in args["packages"]) > 0
    assert result["diff"]["before"] == {"os_packages": {"alpha": "1.0", "beta": "1.0"}}
    assert dist.requests == [] and tree_state(terminal_v1) == before
    assert packages(terminal_v1) == {"alpha": "1.0 ii", "beta": "1.0 ii"}


def test_module_puts_every_package_back_when_one_fails_to_install(terminal_v1, run_module, dist, debs):
    # alpha 2.0 installs; beta 2.0's postinst fails, which leaves it half-configured.
    args = module_args(dist, publish(dist, debs["alpha", "2.0"], debs["beta", "2.0", "broken"]))

    result = run_module("pos_os_packages", args, terminal_v1)

    assert result["failed"] and result["changed"], result
    assert "beta" in result["msg"] and "put back" in result["msg"]
    assert result["put_back"] == ["alpha 1.0", "beta 1.0"]
    assert packages(terminal_v1) == {"alpha": "1.0 ii", "beta": "1.0 ii"}  # all or none
    assert audit(terminal_v1) == "" and verify(terminal_v1) == ""
    assert (terminal_v1 / "usr/share/fleet-os/alpha/VERSION").read_text() == "alpha 1.0\n"


def test_module_with_a_wrong_sha256_installs_and_keeps_nothing(terminal_v1, run_module, dist, debs):
    entries = publish(dist, debs["alpha", "2.0"], debs["beta", "2.0"])
    entries[1]["sha256"] = hashlib.sha256(b"another file").hexdigest()
    database = (terminal_v1 / "var/lib/dpkg/status").read_bytes()

    result = run_module("pos_os_packages", module_args(dist, entries), terminal_v1)

    assert result["failed"] and not result.get("changed"), result
    assert "sha256 mismatch" in result["msg"] and "beta 2.0" in result["msg"]
    assert "nothing was installed" in result["msg"]
    assert packages(terminal_v1) == {"alpha": "1.0 ii", "beta": "1.0 ii"}
    assert (terminal_v1 / "var/lib/dpkg/status").read_bytes() == database and kept(terminal_v1) == []


def test_module_refuses_a_set_whose_way_back_cannot_be_kept(terminal_v1, run_module, dist, debs):
    (terminal_v1 / "usr/share/fleet-os/beta/VERSION").write_text("tampered\n")
    args = module_args(dist, publish(dist, debs["alpha", "2.0"], debs["beta", "2.0"]))

    result = run_module("pos_os_packages", args, terminal_v1)

    assert result["failed"] and not result.get("changed"), result
    assert "cannot keep a way back to beta 1.0" in result["msg"] and "nothing was installed" in result["msg"]
    assert packages(terminal_v1) == {"alpha": "1.0 ii", "beta": "1.0 ii"}

