"""The fault cases of the rolling update: one terminal each, the moment its fault strikes, what must follow.

A case names the terminal it takes by model and region (the 18-terminal fleet of seed 1 has every
model in every region twice), the faults set before the run (`before`), the steps the watcher takes
during it (`steps`: a moment seen on the terminal's flash, then an action) and what lifts the fault
afterwards (`after`). Two faults act on a region's distribution point, so the terminals that share
that distribution point and model are given cases that stop before the package step.
"""

import shutil
from dataclasses import dataclass, field

from faultkit import KIT, UPGRADE, fault, labfleet, release_manifest
from labkit import flash

BASELINE = "2026.11.0"
# The update guard's lease (pos_quiesce_lease) of the runs whose control node goes away on purpose: long
# enough for every step of the lab's batches, short enough for the suite to see each terminal's guard put
# it back in service once it runs out (docs/faults.md). The reboot that never comes back is powered on
# only after its run has given up on it, well over 150 s after its last renewal.
SHORT_LEASE = 150
KILLED_LEASE = 60
APP = "1.0.0"
# Only the catalog pack (about 160 KB) is big enough to be caught half-way through its download.
CATALOG_THIRD = 48 * 1024


@dataclass
class Step:
    what: str
    when: object  # predicate(serial) -> bool, or None: `delay` seconds after the step before
    act: object
    delay: float = 0.0


@dataclass
class Case:
    name: str
    title: str
    model: str
    region: str
    expect_status: tuple
    expect_reason: tuple = ()
    expect_deferred_by: object = None
    before: list = field(default_factory=list)
    steps: list = field(default_factory=list)
    after: list = field(default_factory=list)
    nth: int = 0
    # Known bugs of the pipeline this case shows: pytest.mark.xfail(strict=True) on the named test.
    own_run: bool = False
    bug_outcome: object = None
    bug_whole: object = None
    serial: str = ""
    fired: list = field(default_factory=list)
    errors: list = field(default_factory=list)

    @property
    def moment(self):
        return "; then ".join(s.what for s in self.steps) or "before the run"


# --- what the watcher looks for on a terminal's flash ---------------------------------------------

def in_maintenance(serial):
    """pos_quiesce is done: posd wrote its maintenance flag."""
    return flash(serial, "/var/lib/pos/maintenance").exists()


def backing_up(serial):
    """pos_backup started: its snapshot work directory exists (or the snapshot is being fetched)."""
    backup = flash(serial, "/var/lib/pos/backup")
    return backup.is_dir() and (any(backup.glob(".snapshot-*")) or (backup / "snapshot.tar").exists())


def downloading(min_bytes):
    def seen(serial):
        staging = flash(serial, "/var/lib/pos/staging")
        return staging.is_dir() and any(p.stat().st_size >= min_bytes for p in staging.glob("*.part"))
    return seen


def installing(serial):
    """pos_package has the verified artifact and is installing it: the .deb moved into the rollback
    directory just before `dpkg -i`, or the bundle being unpacked."""
    return (flash(serial, f"/var/lib/pos/rollback/posd_{APP}_all.deb").exists()
            or flash(serial, f"/opt/pos/app/{APP}.staging").exists()
            or flash(serial, f"/opt/pos/app/{APP}").exists())


def bundle_installed(serial):
    """pos_package has unpacked the new bundle: the data sync comes next."""
    return flash(serial, f"/opt/pos/app/{APP}").is_dir()


def switching(serial):
    """pos_data_sync is moving the verified packs into place: the first (params) is there; the
    `current` links follow."""
    return flash(serial, f"/var/lib/pos/packs/params/{BASELINE}").is_dir()


class Rebooting:
    """The terminal's reboot command ran: one more `requested` line in its boot log than at the start."""

    def __init__(self):
        self.start = {}

    def count(self, serial):
        try:
            return flash(serial, "/var/log/boot.log").read_text().count("requested")
        except OSError:
            return 0

    def __call__(self, serial):
        if serial not in self.start:
            self.start[serial] = self.count(serial)
        return self.count(serial) > self.start[serial]


# --- faults on a region's distribution point --------------------------------------------------------

def dp(action, what):
    def act(serial):
        row = fleet_row(serial)
        if action == "corrupt":
            manifest = release_manifest(BASELINE)
            target = manifest["models"][row["model"]]["app"]["url"]
        else:
            target = BASELINE
        KIT.poslab("dp", row["region"], action, target)
    act.__doc__ = f"poslab dp REGION {action} {what}"
    return act


def dp_restore(serial):
    KIT.poslab("dp", fleet_row(serial)["region"], "restore")


dp_restore.__doc__ = "poslab dp REGION restore"


def fleet_row(serial):
    return labfleet.find(serial)


f = fault


NET_BACK = [f("net-up")]

CASES = [
    # Network cuts: short ones (SSH rides them out) at each step; the terminal must finish updated.
    Case("net-cut-download", "network cut during the catalog download (3 s, slow link)", "heron_h5", "eu_west",
         ("updated",),
         steps=[Step("bundle installed", bundle_installed, f("slow", "256kbit")),
                Step("catalog download a third done", downloading(CATALOG_THIRD), f("net-down")),
                Step("3 s later", None, f("net-up"), delay=3)],
         after=NET_BACK),
    Case("slow-link-resume", "slow link (tbf 256kbit) and a 10 s cut: the download resumes with Range",
         "petrel_p9", "us_east", ("updated",),
         steps=[Step("bundle installed", bundle_installed, f("slow", "256kbit")),
                Step("catalog download a third done", downloading(CATALOG_THIRD), f("net-down")),
                Step("10 s later", None, f("net-up"), delay=10)],
         after=NET_BACK),
    Case("net-cut-install", "network cut while the package installs (6 s)", "kestrel_k200", "eu_central",
         ("updated",), nth=1,
         steps=[Step("package installing", installing, f("net-down")),
                Step("6 s later", None, f("net-up"), delay=6)],
         after=NET_BACK),
    Case("net-cut-switch", "network cut during the data switch (6 s)", "petrel_p9", "us_east", ("updated",), nth=1,
         steps=[Step("packs moving into place", switching, f("net-down")),
                Step("6 s later", None, f("net-up"), delay=6)],
         after=NET_BACK),
    Case("net-cut-reboot", "network cut during the reboot wait (20 s)", "petrel_p9", "eu_west", ("updated",),
         steps=[Step("reboot requested", Rebooting(), f("net-down")),
                Step("20 s later", None, f("net-up"), delay=20)],
         after=NET_BACK),
    # Power cuts (3 s off, no shutdown) at each step.
    # The link is slow from the start, so that the snapshot is still on its way to the control node
    # when the watcher sees it: on a fast link the whole backup can end between two looks, and the
    # cut would land in the next step.
    Case("power-cut-backup", "power cut mid-backup (slow link)", "heron_h5", "eu_central", ("failed",),
         ("backup failed",), nth=1, before=[f("slow", "256kbit")],
         steps=[Step("backup being taken", backing_up, f("power-cut", 3))], after=NET_BACK),
    # A terminal that comes back after a power cut mid-change is either rolled back or, where the steps
    # after the cut completed the update and verification passed, updated: whole either way.
    Case("power-cut-download", "power cut mid-download (slow link)", "heron_h5", "eu_west",
         ("rolled_back", "updated"), nth=1,
         steps=[Step("bundle installed", bundle_installed, f("slow", "256kbit")),
                Step("catalog download a third done", downloading(CATALOG_THIRD), f("power-cut", 3))],
         after=NET_BACK),
    Case("power-cut-install", "power cut while dpkg installs the package", "kestrel_k200", "eu_central",
         ("rolled_back", "updated"),
         steps=[Step("package installing", installing, f("power-cut", 3))]),
    Case("power-cut-switch", "power cut mid-switch of the data packs", "petrel_p9", "eu_central",
         ("rolled_back", "updated"),
         steps=[Step("packs moving into place", switching, f("power-cut", 3))]),
    Case("power-cut-reboot", "power cut during the update's reboot", "petrel_p9", "eu_west", ("updated",), nth=1,
         steps=[Step("reboot requested", Rebooting(), f("power-cut", 3))]),
    # The distribution point serves damaged files.
    Case("corrupt-artifact", "the package corrupted on the distribution point (eu_west kestrel .deb)",
         "kestrel_k200", "eu_west", ("rolled_back", "failed"), ("sha256 mismatch",),
         before=[dp("corrupt", "the model's app artifact")], after=[dp_restore]),
    Case("tampered-dp-manifest", "the manifest tampered on the distribution point (us_east): heron refuses",
         "heron_h5", "us_east", ("rolled_back", "failed"), ("signature",),
         before=[dp("tamper", "the release manifest")], after=[dp_restore]),
    Case("tampered-dp-manifest-kestrel", "the same tampered manifest: kestrel refuses too", "kestrel_k200",
         "us_east", ("rolled_back", "failed"), ("signature",)),
    # Storage.
    Case("no-room", "artifact larger than the free flash (3 MiB left)", "heron_h5", "us_east", ("deferred",),
         ("free flash",), "preflight", nth=1, before=[f("disk-full", 3072)], after=[f("disk-ok")]),
    Case("disk-full-install", "the flash fills up in the middle of the install (data pack download)", "petrel_p9",
         "eu_central",
         ("rolled_back", "failed"), ("space",), nth=1,
         steps=[Step("bundle installed", bundle_installed, f("slow", "256kbit")),
                Step("catalog download a third done", downloading(CATALOG_THIRD), f("disk-full", 0))],
         after=[f("disk-ok"), f("net-up")]),
    # Sales.
    Case("sale-never-ends", "a sale in progress that never finishes", "kestrel_k200", "eu_west", ("deferred",),
         ("in-transaction",), "quiesce", nth=1, before=[f("txn-inflight", 0)], after=[f("txn-release")]),
    # Reachability.
    Case("unreachable-at-start", "cable pulled before the run", "kestrel_k200", "us_east", ("unreachable",),
         ("reached over ssh",), nth=1, before=[f("net-down")], after=NET_BACK),
    Case("reboot-never-returns", "the update's reboot never comes back (heron, reboot_timeout 120 s)", "heron_h5",
         "eu_central", ("failed",), ("reboot",),
         before=[f("power-hold", 3600)], after=[f("power-on")], own_run=True),
]


# --- the OS packages' own faults (issue 18) ------------------------------------------------------------------
# Run in a round of their own at the end (fixture os_round): the upgrades before it leave their terminals on the
# baseline and the image's OS packages (fixture os_terminals), and the round updates them to the upgrade, whose OS
# packages (bookworm-security's) go first. A case takes the nth terminal of its model in its region; the corrupted
# package reaches its whole region, so no other case is in us_east.

def os_package_url(model, name):
    return next(item["url"] for item in release_manifest(UPGRADE)["models"][model]["os_packages"]
                if item["name"] == name)


def dpkg_states(serial):
    """The texts of the terminal's dpkg database: its status file and its journal (/var/lib/dpkg/updates/NNNN),
    where dpkg records each state change before it folds them into the status file now and then."""
    database = flash(serial, "/var/lib/dpkg")
    texts = []
    for path in [database / "status", *sorted((database / "updates").glob("[0-9]*"))]:
        try:
            texts.append(path.read_text())
        except OSError:
            continue
    return texts


def os_installing(serial):
    """dpkg is installing the OS set: a package of it is unpacked but not configured yet, the moment a power cut
    is most likely to leave a package half-way."""
    return any(f"Package: {name}\nStatus: install ok {state}" in text for text in dpkg_states(serial)
               for name in ("libssl3", "openssl", "tzdata", "ca-certificates")
               for state in ("unpacked", "half-configured", "half-installed"))


def os_configuring(serial):
    """dpkg is in the configure phase of the OS set: ca-certificates half-configured, its postinst running (slowed
    down by `poslab fault postinst-slow`, so that the moment lasts)."""
    return any("Package: ca-certificates\nStatus: install ok half-configured" in text for text in dpkg_states(serial))


class BackupTaken:
    """pos_backup has written this update's snapshot (its MANIFEST.json newer than at the first look): the package
    step, OS packages first, comes next."""

    def __init__(self):
        self.start = {}

    def written(self, serial):
        try:
            return flash(serial, "/var/lib/pos/backup/MANIFEST.json").stat().st_mtime_ns
        except OSError:
            return None

    def __call__(self, serial):
        if serial not in self.start:
            self.start[serial] = self.written(serial)
        return self.written(serial) not in (None, self.start[serial])


def dp_corrupt_os(serial):
    row = fleet_row(serial)
    KIT.poslab("dp", row["region"], "corrupt", os_package_url(row["model"], "libssl3"))


dp_corrupt_os.__doc__ = "poslab dp REGION corrupt <libssl3's .deb>"

OS_CASES = [
    Case("power-cut-os-install", "power cut while dpkg installs the OS packages", "kestrel_k200", "eu_central",
         ("rolled_back", "updated"), steps=[Step("an OS package unpacked, not configured", os_installing,
                                                 f("power-cut", 3))]),
    Case("power-cut-os-configure", "power cut while dpkg configures the OS packages (a postinst running)",
         "kestrel_k200", "eu_west", ("rolled_back", "updated"), nth=1, before=[f("postinst-slow", 60)],
         steps=[Step("ca-certificates half-configured", os_configuring, f("power-cut", 3))],
         after=[f("postinst-slow", "off")]),
    Case("net-cut-os-download", "network cut while an OS package downloads (10 s, slow link)", "heron_h5",
         "eu_central", ("updated",), before=[f("slow", "2mbit")],
         steps=[Step("OS package download under way", downloading(256 * 1024), f("net-down")),
                Step("10 s later", None, f("net-up"), delay=10)],
         after=NET_BACK),
    Case("dpkg-fails-os", "dpkg fails at the end of the OS install (after unpack and configure)", "kestrel_k200",
         "eu_west", ("rolled_back",), ("put back",), before=[f("dpkg-fail")], after=[f("dpkg-fail", "off")]),
    Case("postinst-fails-os", "ca-certificates' postinst fails while dpkg configures the OS packages", "heron_h5",
         "eu_central", ("rolled_back",), ("put back", "ca-certificates"), nth=1, before=[f("postinst-fail")],
         after=[f("postinst-fail", "off")]),
    # 2 MiB left: the set (about 15 MB downloaded and unpacked) does not fit, the way back does.
    Case("no-room-os", "the flash fills up after the backup, too full for the OS packages", "heron_h5", "eu_west",
         ("rolled_back",), ("space",), steps=[Step("backup taken", BackupTaken(), f("disk-full", 2048))],
         after=[f("disk-ok")]),
    Case("corrupt-os-package", "libssl3's .deb corrupted on the distribution point (us_east)", "kestrel_k200",
         "us_east", ("rolled_back", "failed"), ("sha256 mismatch",), before=[dp_corrupt_os], after=[dp_restore]),
]


def assign(cases, fleet_status):
    """Give each case its terminal: the nth of its model in its region, by serial."""
    taken = set()
    for case in cases:
        matching = sorted(s for s, row in fleet_status.items()
                          if row["model"] == case.model and row["region"] == case.region)
        assert len(matching) > case.nth, f"{case.name}: the fleet has no {case.model} #{case.nth} in {case.region}"
        case.serial = matching[case.nth]
        assert case.serial not in taken, f"{case.name}: {case.serial} is already another case's terminal"
        taken.add(case.serial)
    # A damaged distribution point reaches every terminal of that model in that region: the others
    # must stop before the package step, or be the case that shows the damage.
    for damage in (c for c in cases if c.before and c.before[0].__doc__.startswith("poslab dp")):
        for other in cases:
            if other is not damage and other.region == damage.region and other.model == damage.model:
                assert other.name.startswith(damage.name) or other.expect_status in (("deferred",),
                                                                                     ("unreachable",)), \
                    f"{other.name} shares {damage.name}'s damaged distribution point"


def tampered_manifests(build_releases, tmp, baseline, other):
    """(name, path) of two manifests for `baseline` that the release check must refuse."""
    source = build_releases / baseline
    changed = tmp / "changed" / "releases" / baseline
    changed.mkdir(parents=True)
    text = (source / "manifest.yml").read_text()
    # Swap the payload: what a man in the middle would want terminals to install.
    other_text = (build_releases / other / "manifest.yml").read_text()
    assert "size:" in text
    (changed / "manifest.yml").write_text(text.replace("description: ", "description: x", 1))
    shutil.copy(source / "manifest.yml.sig", changed / "manifest.yml.sig")
    wrong_sig = tmp / "wrong-sig" / "releases" / baseline
    wrong_sig.mkdir(parents=True)
    shutil.copy(source / "manifest.yml", wrong_sig / "manifest.yml")
    shutil.copy(build_releases / other / "manifest.yml.sig", wrong_sig / "manifest.yml.sig")
    assert other_text != text
    return [("manifest changed after signing", changed / "manifest.yml"),
            ("another release's signature", wrong_sig / "manifest.yml")]


# --- the closing summary -----------------------------------------------------------------------------

OTHER_CASES = [
    ("tampered-release", "tampered manifest / bad signature at the control node",
     "test_tampered_release", "before the run"),
    ("acquirer-down", "sales pending while the acquirer is down", "test_acquirer_down", "before the run"),
    ("control-node-killed", "ansible-playbook killed (SIGKILL) mid-batch, then re-run", "test_interrupted",
     "first params pack staged"),
]


def summary_lines(summary):
    results = summary["results"]

    def outcome(match):
        found = [v for k, v in results.items() if match(k)]
        if not found:
            return "not run"
        for word in ("failed", "xpassed", "skipped", "xfail"):
            if word in found:
                return {"xfail": "xfail (bug)"}.get(word, word)
        return "passed"

    lines = ["", "fault-injection summary", f"{'case':30} {'terminal':9} {'outcome':13} {'whole':12} moment"]
    verdicts = []
    for case in CASES:
        got = outcome(lambda k, c=case: k.endswith(f"[{c.name}]") and "whole" not in k)
        whole = outcome(lambda k, c=case: k.endswith(f"[{c.name}]") and "whole" in k)
        verdicts.append({got, whole})
        lines.append(f"{case.name:30} {case.serial or '-':9} {got:13} {whole:12} {case.moment[:60]}")
    for name, _title, test, moment in OTHER_CASES:
        got = outcome(lambda k, t=test: f"::{t}" in k)
        verdicts.append({got})
        lines.append(f"{name:30} {'-':9} {got:13} {'':12} {moment}")
    clean = sum(v == {"passed"} for v in verdicts)
    bugs = sum(v <= {"passed", "xfail (bug)"} and "xfail (bug)" in v for v in verdicts)
    fleet = outcome(lambda k: "test_fleet" in k)
    lines.append(f"cases run: {len(verdicts)}: {clean} passed, {bugs} passed but for a known bug (strict xfail, "
                 f"reported), {len(verdicts) - clean - bugs} failed or not run; fleet-wide checks: {fleet}")
    if summary["ledger"]:
        t = summary["ledger"]
        lines.append(f"transactions: {t['generated']} generated, {t['uploaded']} uploaded and reconciled, "
                     f"{t['pending']} pending offline, {t['missing']} missing, {t['duplicated']} duplicated")
    for what, seconds in summary["runs"]:
        lines.append(f"  {seconds:4d}s  {what}")
    return lines
