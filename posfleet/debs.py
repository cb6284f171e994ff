"""Debian packages as posfleet reads them: control fields, relations, and whether a set installs on a model.

The vocabulary the release build uses to refuse an OS package set that dpkg would refuse on a terminal
(docs/releases.md, OS packages), kept apart so that the terminal-side work can share it: the Python
standard library and Debian's own tools only (`dpkg-deb --field`, `dpkg --compare-versions`), never a
second implementation of Debian's version ordering.

A model's installed packages come from its factory list, one package per line:

    NAME VERSION ARCHITECTURE [PROVIDES]

where PROVIDES is the package's Provides field as dpkg prints it (`debconf-2.0, awk`); blank lines and
lines starting with `#` are ignored. docs/inventory.md (OS updates in a model profile) has the
dpkg-query command that writes it from an image or a terminal.
"""

import functools
import re
import subprocess
from typing import NamedTuple, Optional

# Debian policy 5.6.1 and 5.6.12: a name of at least two characters; a version [epoch:]upstream[-revision]
# whose upstream part starts with a digit and holds a colon only after an epoch.
NAME_PATTERN = r"^[a-z0-9][a-z0-9+.-]+$"
VERSION_PATTERN = r"^(?:[0-9]+:[0-9][A-Za-z0-9.+~:-]*|[0-9][A-Za-z0-9.+~-]*)$"
ARCH_PATTERN = r"^[a-z0-9][a-z0-9-]*$"
_NAME = re.compile(NAME_PATTERN)
_VERSION = re.compile(VERSION_PATTERN)
_ARCH = re.compile(ARCH_PATTERN)
# `name[:arch] [(op version)]`. Build profiles (<...>) and architecture lists ([...]) belong to source
# packages' build dependencies and never appear in a binary package, so they are not accepted here.
_RELATION = re.compile(r"^(?P<name>[a-z0-9][a-z0-9+.-]+)(?::[a-z0-9-]+)?"
                       r"\s*(?:\(\s*(?P<op><<|<=|>=|>>|=|<|>)\s*(?P<version>[^\s()]+)\s*\))?$")
# Relation operator -> dpkg --compare-versions operator. dpkg still reads the obsolete `<` and `>` as
# `<=` and `>=`; they are mapped here so that dpkg does not warn about them.
_COMPARE = {"<<": "lt", "<=": "le", "=": "eq", ">=": "ge", ">>": "gt", "<": "le", ">": "ge"}
# The fields a dependency can be unmet in, and the words an error uses for each.
DEPENDENCY_FIELDS = (("pre_depends", "Pre-Depends", "pre-depends on"), ("depends", "Depends", "depends on"))
ALL = "all"


class DebError(Exception):
    """A package, a relation, a version or a factory list cannot be read; the message names it."""


class Relation(NamedTuple):
    """One alternative of a dependency (`libc6 (>= 2.36)`), or one entry of a Provides field.

    The architecture qualifier (`:any`, `:native`, `:amd64`) is dropped: a model has one native
    architecture and posfleet ships packages for it, so the qualifier never changes which package
    satisfies the relation there.
    """
    name: str
    op: Optional[str] = None
    version: Optional[str] = None

    def __str__(self):
        return f"{self.name} ({self.op} {self.version})" if self.op else self.name


class Package(NamedTuple):
    """A binary package: from a .deb's control fields, or a line of a factory list (no dependencies)."""
    name: str
    version: str
    architecture: str
    depends: tuple = ()  # ((Relation, ...), ...): every group must be met, by any one of its alternatives
    pre_depends: tuple = ()
    provides: tuple = ()  # (Relation, ...), unversioned or `=`
    installed_size_kb: Optional[int] = None

    def __str__(self):
        return f"{self.name} {self.version}"


# --- control fields ------------------------------------------------------------------------------

def parse_control(text):
    """{field: value} of one control paragraph; continuation lines are joined with newlines."""
    fields, last = {}, None
    for line in text.splitlines():
        if not line.strip():
            continue
        if line[0] in " \t":
            if last is None:
                raise DebError(f"a continuation line before any field: {line!r}")
            fields[last] += "\n" + line.strip()
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise DebError(f"not a control field: {line!r}")
        last = name.strip()
        fields[last] = value.strip()
    return fields


def read_control(path):
    """The control fields of a .deb, as `dpkg-deb --field` reads them."""
    try:
        result = subprocess.run(["dpkg-deb", "--field", str(path)], capture_output=True, check=False, timeout=60)
    except FileNotFoundError:
        raise DebError("dpkg-deb is not installed on this machine (Debian package dpkg)") from None
    if result.returncode != 0:
        reason = result.stderr.decode(errors="replace").strip() or f"dpkg-deb exited with {result.returncode}"
        raise DebError(f"{path}: not a readable .deb: {reason}")
    return parse_control(result.stdout.decode("utf-8", errors="replace"))


def read_deb(path):
    """The Package of a .deb file: name, version, architecture, relations and Installed-Size."""
    fields = read_control(path)
    missing = [name for name in ("Package", "Version", "Architecture") if not fields.get(name)]
    if missing:
        raise DebError(f"{path}: the control file has no {', '.join(missing)}")
    name, version, arch = fields["Package"], fields["Version"], fields["Architecture"]
    _check_name(name, f"{path}: Package")
    _check_version(version, f"{path}: Version")
    if not _ARCH.match(arch):
        raise DebError(f"{path}: Architecture {arch!r} is not an architecture name")
    size = fields.get("Installed-Size")
    if size is not None and not size.isdigit():
        raise DebError(f"{path}: Installed-Size {size!r} is not a number of KiB")
    what = f"{path} ({name} {version})"
    return Package(name, version, arch,
                   depends=parse_relations(fields.get("Depends", ""), f"{what}: Depends"),
                   pre_depends=parse_relations(fields.get("Pre-Depends", ""), f"{what}: Pre-Depends"),
                   provides=parse_provides(fields.get("Provides", ""), f"{what}: Provides"),
                   installed_size_kb=int(size) if size is not None else None)


# --- relations -----------------------------------------------------------------------------------

def parse_relation(text, what):
    match = _RELATION.match(" ".join(text.split()))
    if not match:
        raise DebError(f"{what}: cannot read {text.strip()!r} (expected a package name, optionally with "
                       "(<< | <= | = | >= | >> version))")
    if match["version"]:
        _check_version(match["version"], what)
    return Relation(match["name"], match["op"], match["version"])


def parse_relations(text, what):
    """A Depends-style field: ((Relation, ...), ...), a tuple of alternatives per comma-separated group."""
    if not text.strip():
        return ()
    return tuple(tuple(parse_relation(alternative, what) for alternative in group.split("|"))
                 for group in text.split(","))


def parse_provides(text, what):
    """A Provides field: (Relation, ...). Debian allows only `=` in a versioned provide."""
    groups = parse_relations(text, what)
    if any(len(group) > 1 for group in groups):
        raise DebError(f"{what}: alternatives (|) have no meaning in Provides")
    provided = tuple(group[0] for group in groups)
    wrong = [str(item) for item in provided if item.op not in (None, "=")]
    if wrong:
        raise DebError(f"{what}: {', '.join(wrong)}: a provide names one exact version (=) or none")
    return provided


def format_group(group):
    return " | ".join(str(alternative) for alternative in group)


def _check_name(name, what):
    if not _NAME.match(name):
        raise DebError(f"{what}: {name!r} is not a Debian package name")


def _check_version(version, what):
    if not _VERSION.match(version):
        raise DebError(f"{what}: {version!r} is not a Debian version ([epoch:]upstream[-revision], "
                       "the upstream part starting with a digit)")


@functools.lru_cache(maxsize=4096)
def compare_versions(left, op, right):
    """True when `left op right` holds in Debian's version ordering (dpkg --compare-versions)."""
    try:
        result = subprocess.run(["dpkg", "--compare-versions", left, _COMPARE[op], right],
                                capture_output=True, check=False, timeout=30)
    except FileNotFoundError:
        raise DebError("dpkg is not installed on this machine: it compares Debian versions") from None
    if result.returncode not in (0, 1):
        raise DebError(f"dpkg cannot compare {left!r} {op} {right!r}: "
                       f"{result.stderr.decode(errors='replace').strip()}")
    return result.returncode == 0


def newest(versions):
    """The highest of one or more Debian versions, in dpkg's ordering (compare_versions)."""
    ordered = sorted(set(versions))  # the same answer whatever order they come in
    if not ordered:
        raise ValueError("newest() of no versions")
    best = ordered[0]
    for version in ordered[1:]:
        if compare_versions(version, ">>", best):
            best = version
    return best


# --- a model's installed packages ------------------------------------------------------------------

def parse_installed(text, what):
    """[Package] of a factory list (the module's docstring has the format); `what` names it in errors."""
    packages = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split(None, 3)
        if len(fields) < 3:
            raise DebError(f"{what}:{number}: expected NAME VERSION ARCHITECTURE [PROVIDES], got {line.strip()!r}")
        # dpkg-query's ${binary:Package} adds the architecture to some names (libc6:amd64).
        name, version, arch = fields[0].partition(":")[0], fields[1], fields[2]
        where = f"{what}:{number}"
        _check_name(name, where)
        _check_version(version, where)
        if not _ARCH.match(arch):
            raise DebError(f"{where}: {arch!r} is not an architecture name")
        provides = parse_provides(fields[3] if len(fields) > 3 else "", where)
        packages.append(Package(name, version, arch, provides=provides))
    if not packages:
        raise DebError(f"{what}: no installed package listed")
    return packages


def read_installed(path):
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise DebError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return parse_installed(text, str(path))


def architectures(packages):
    """The architectures a model runs packages of: those of its packages, but `all`."""
    return {package.architecture for package in packages} - {ALL}


# --- can the set be installed? --------------------------------------------------------------------

class _Candidate(NamedTuple):
    """Something that answers to a name on the model after the set is installed."""
    version: Optional[str]   # None: an unversioned provide, which meets only unversioned relations
    package: Package         # the real package: the name itself, or what provides it
    origin: str              # "model" (its factory list) or "release" (the set)

    def describe(self, name):
        if self.package.name == name:
            return f"the {self.origin} has {name} {self.version}"
        provided = f"{name} {self.version}" if self.version else name
        return f"the {self.origin} has {provided} (provided by {self.package})"


def _candidates(installed, new):
    """{name: [_Candidate]} of the model once the set is in: the set's packages replace the installed
    ones of the same name, whose provides go with them."""
    replaced = {package.name for package in new}
    found = {}
    for origin, packages in (("model", [p for p in installed if p.name not in replaced]), ("release", new)):
        for package in packages:
            found.setdefault(package.name, []).append(_Candidate(package.version, package, origin))
            for provided in package.provides:
                found.setdefault(provided.name, []).append(_Candidate(provided.version, package, origin))
    return found


def _meets(candidate, relation):
    if relation.op is None:
        return True
    return candidate.version is not None and compare_versions(candidate.version, relation.op, relation.version)


def _having(relation, found):
    """What the model has under a relation's name, for an error: `the model has libc6 2.36`."""
    there = found.get(relation.name, [])
    if not there:
        return f"neither the model nor the release has {relation.name}"
    return ", ".join(candidate.describe(relation.name) for candidate in there)


def unmet(new, installed):
    """Why the set `new` cannot be installed on a model that has `installed`, one line per problem;
    [] when it can.

    Every Depends and Pre-Depends group of every package in the set must be met by the set itself or
    by what the model keeps (a group by any one of its alternatives, a versioned relation by a
    version that satisfies it), and a package built for an architecture must be for one the model
    runs. Breaks and Conflicts are not checked here: dpkg refuses them on the terminal, which then
    rolls the set back.
    """
    problems = []
    native = architectures(installed)
    found = _candidates(installed, new)
    for package in sorted(new, key=lambda package: package.name):
        if package.architecture != ALL and package.architecture not in native:
            runs = ", ".join(sorted(native)) or "none that is architecture-specific"
            problems.append(f"{package} is built for {package.architecture}, the model's packages are {runs}")
        for attribute, _field, words in DEPENDENCY_FIELDS:
            for group in getattr(package, attribute):
                if not any(_meets(candidate, relation) for relation in group
                           for candidate in found.get(relation.name, [])):
                    having = " and ".join(_having(relation, found) for relation in group)
                    problems.append(f"{package} {words} {format_group(group)}, {having}")
    return problems
