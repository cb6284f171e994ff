"""Find leaked secrets and card numbers in text: test output, reports, logs (docs/security.md).

    posfleet-secretscan [--secret-file F ...] [--vault-file F --vault-password-file P] [--lab [DIR]]
                        [--no-pan] PATH...

Three kinds of finding, each with the path, the line number and an excerpt in which every secret and
card number is masked (the scanner never prints what it found):

* `secret`: one of the given secret values, e.g. a vault value, the release signing key (its PEM body,
  each base64 line of it, and for an ed25519 key the raw 32-byte seed in hex and base64) or the
  backup encryption key.
* `pan`: a Luhn-valid card number of 13 to 19 digits, written as one run of digits or in groups of 3
  to 6 digits separated by one space or dash (`9900 0112 3456 7897`). Not reported, because they are
  not card numbers: a digit run inside a longer run of digits or touching a letter (a larger number, a
  hex digest, an id token), the fraction of a decimal number (`0.30000000000000004`), a number that
  starts with 0 (no card does: ISO/IEC 7812 keeps that first digit out of payment cards), and a plain run
  of 13, 16 or 19 digits that reads as a Unix time in milliseconds, microseconds or nanoseconds between
  2000 and 2035 (no card scheme issues numbers in those ranges: 13-digit cards start with 4, and the
  2-series ranges start at 2200). A PAN is shown masked, first 6 and last 4 digits, as posd logs it.
* `private-key`: a PEM private key header (any `BEGIN ... PRIVATE KEY` line), whoever's key it is.

Binary files are scanned too (a secret in a database file is still a leak), line by line on their raw
bytes. Symbolic links are not followed. The exit status is 0 when nothing was found, 1 with findings
(printed as a table), 2 when the secrets could not be loaded.

The scanning is standard library only; reading an Ansible Vault needs ansible-core and PyYAML (the
control node's requirements), imported only when a vault is read.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

SECRET, PAN, PRIVATE_KEY = "secret", "pan", "private-key"
# A given secret shorter than this would match ordinary text; refuse it rather than report noise.
MIN_SECRET = 8
# Lines of a PEM body shorter than this (the last line of a key, say) are not searched on their own.
MIN_PEM_LINE = 16
EXCERPT = 120

PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.S)
PRIVATE_KEY_HEADER = re.compile(r"-----BEGIN ((?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?)-----")
# Digit groups separated by single spaces or dashes, not touching a letter or another digit.
NUMBER = re.compile(r"(?<![0-9A-Za-z])[0-9]+(?:[ -][0-9]+)*(?![0-9A-Za-z])")
# An ed25519 PKCS8 private key is this 16-byte DER prefix and the 32-byte seed.
ED25519_PKCS8_PREFIX = bytes.fromhex("302e020100300506032b657004220420")
# Unix times from 2000-01-01 to 2035-01-01, in seconds.
EPOCH_WINDOW = (946684800, 2051222400)
EPOCH_SCALES = {13: 10 ** 3, 16: 10 ** 6, 19: 10 ** 9}

LAB_STATE = Path("/var/lib/poslab")


class SecretScanError(Exception):
    """The secrets to look for cannot be loaded; the message names the file and why (never a value)."""


@dataclass(frozen=True)
class Secret:
    value: str
    label: str  # what it is, e.g. "vault:pos_backup_key"; shown in findings instead of the value


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    kind: str      # SECRET, PAN or PRIVATE_KEY
    what: str      # the secret's label, the masked PAN, or the PEM header's type
    excerpt: str   # the line, everything secret in it masked

    def __str__(self):
        return f"{self.path}:{self.line}: {self.kind} {self.what}: {self.excerpt}"


# --- card numbers ----------------------------------------------------------------------------------

def luhn_valid(digits):
    """True when the string of digits passes the Luhn check (at least 2 digits)."""
    if len(digits) < 2 or not digits.isascii() or not digits.isdigit():
        return False
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def mask_pan(digits):
    """First 6 and last 4 digits, the rest starred: the only form of a PAN that may be shown."""
    return digits[:6] + "*" * max(len(digits) - 10, 0) + digits[-4:]


def _pan_like(digits):
    # No card starts with 0 (ISO/IEC 7812 keeps that industry digit out of payment cards); skipping it
    # keeps zero-padded counters and ids out of the findings.
    return 13 <= len(digits) <= 19 and digits[0] != "0" and luhn_valid(digits)


def _epoch_like(digits):
    scale = EPOCH_SCALES.get(len(digits))
    return scale is not None and EPOCH_WINDOW[0] <= int(digits) // scale < EPOCH_WINDOW[1]


def find_pans(line, ignore_timestamps=True):
    """[(start, end, digits)] of the card numbers in one line of text."""
    found = []
    for match in NUMBER.finditer(line):
        start = match.start()
        if start >= 2 and line[start - 1] == "." and line[start - 2].isdigit():
            continue  # the fraction of a decimal number
        text = match.group()
        if "-" not in text and " " not in text:
            if _pan_like(text) and not (ignore_timestamps and _epoch_like(text)):
                found.append((start, match.end(), text))
            continue
        # Grouped: every run of whole groups of 3 to 6 digits that adds up to 13 to 19 digits.
        groups, offset = [], start
        for part in re.split(r"([ -])", text):
            if part not in (" ", "-"):
                groups.append((offset, part))
            offset += len(part)
        windows = []
        for first in range(len(groups)):
            digits = ""
            for last in range(first, len(groups)):
                group = groups[last][1]
                if not 3 <= len(group) <= 6:
                    break
                digits += group
                if len(digits) > 19:
                    break
                if last > first and _pan_like(digits):
                    end = groups[last][0] + len(group)
                    windows.append((groups[first][0], end, digits))
        for window in windows:
            if not any(other != window and other[0] <= window[0] and window[1] <= other[1] for other in windows):
                found.append(window)
    return found


# --- secrets -----------------------------------------------------------------------------------------

def pem_secrets(text, label):
    """The searchable forms of every PEM block in `text`: body, each long line, an ed25519 seed."""
    found = []
    for match in PEM_BLOCK.finditer(text):
        lines = [line.strip() for line in match.group(2).strip().splitlines()]
        lines = [line for line in lines if line and ":" not in line]  # skip Proc-Type style headers
        body = "".join(lines)
        kind = match.group(1)
        found.append(Secret(body, f"{label} ({kind} body)"))
        found += [Secret(line, f"{label} ({kind} line {number})")
                  for number, line in enumerate(lines, start=1) if len(line) >= MIN_PEM_LINE and line != body]
        try:
            der = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            continue
        if len(der) == 48 and der.startswith(ED25519_PKCS8_PREFIX):
            seed = der[16:]
            found.append(Secret(seed.hex(), f"{label} (ed25519 seed, hex)"))
            found.append(Secret(base64.b64encode(seed).decode("ascii"), f"{label} (ed25519 seed, base64)"))
    return found


def secrets_from_text(text, label):
    """The secret in `text` (a file's content): the PEM forms of a key, else the stripped text."""
    if PEM_BLOCK.search(text):
        return pem_secrets(text, label)
    value = text.strip()
    if len(value) < MIN_SECRET:
        raise SecretScanError(f"{label}: a secret must have at least {MIN_SECRET} characters to be searched for")
    return [Secret(value, label)]


def _read_text(path, what):
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SecretScanError(f"cannot read {what} {path}: {getattr(exc, 'strerror', None) or exc}") from None


def secrets_from_file(path, label=None):
    """The secret a file holds: a key (PEM) or one value (a password file, a key in hex)."""
    return secrets_from_text(_read_text(path, "the secret file"), label or f"file:{Path(path).name}")


def _leaves(value, path):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaves(item, f"{path}[{index}]")
    elif isinstance(value, str):
        yield path, value


def load_secrets_from_vault_vars(path, vault_password_file):
    """Every string value of a vars file encrypted with Ansible Vault, and the vault password itself.

    Works for a file with inline `!vault` values (what `ansible-vault encrypt_string` writes, the lab's
    /var/lib/poslab/vault/secrets.yml) and for a wholly encrypted file. Values shorter than MIN_SECRET
    characters are left out. Labels are `vault:<variable path>`.
    """
    # Imported here, not at the top: scanning alone needs only the standard library.
    try:
        import yaml  # noqa: PLC0415
        from ansible.errors import AnsibleError  # noqa: PLC0415
        from ansible.parsing.dataloader import DataLoader  # noqa: PLC0415
        from ansible.parsing.vault import VaultLib, get_file_vault_secret, is_encrypted  # noqa: PLC0415
    except ImportError as exc:
        raise SecretScanError(f"reading a vault needs ansible-core and PyYAML: {exc}") from None
    try:
        secret = get_file_vault_secret(filename=str(vault_password_file), loader=DataLoader())
        secret.load()
    except AnsibleError as exc:
        raise SecretScanError(f"cannot read the vault password file {vault_password_file}: {exc}") from None
    vault = VaultLib([("default", secret)])
    text = _read_text(path, "the vault file")

    def decrypt(ciphertext):
        try:
            return vault.decrypt(ciphertext).decode("utf-8")
        except AnsibleError:
            raise SecretScanError(f"cannot decrypt {path} with {vault_password_file}: wrong password?") from None

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!vault", lambda loader, node: decrypt(loader.construct_scalar(node)))
    if is_encrypted(text):
        text = decrypt(text)
    try:
        data = yaml.load(text, Loader=Loader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise SecretScanError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
    found = [Secret(value, f"vault:{name}") for name, value in _leaves(data, "") if len(value) >= MIN_SECRET]
    found.append(Secret(secret.bytes.decode("utf-8", "replace"), "vault password"))
    return found


def lab_secrets(state=LAB_STATE):
    """The lab's secrets, as `poslab up` makes them (lab/poslab/lifecycle.py).

    The vault's values (the backup key) and its password, the release signing key and the control
    node's SSH key. Raises SecretScanError when one is missing: a scan for nothing would pass.
    """
    state = Path(state)
    return [*load_secrets_from_vault_vars(state / "vault" / "secrets.yml", state / "vault" / "password"),
            *secrets_from_file(state / "release-key" / "release.key", "release signing key"),
            *secrets_from_file(state / "ssh" / "id_ed25519", "lab SSH key")]


def _checked(secrets):
    unique = {}
    for secret in _one_line(secrets):
        if len(secret.value) < MIN_SECRET:
            raise SecretScanError(f"{secret.label}: a secret must have at least {MIN_SECRET} characters")
        unique.setdefault(secret.value, secret)
    # Longest first: of two secrets found at the same place, the longer one names the finding.
    return sorted(unique.values(), key=lambda secret: -len(secret.value))


def _one_line(secrets):
    """Lines are scanned one by one: a secret of several lines is looked for line by line."""
    for secret in secrets:
        lines = [line.strip() for line in secret.value.splitlines() if line.strip()]
        if len(lines) <= 1:
            yield Secret(lines[0] if lines else secret.value, secret.label)
            continue
        for number, line in enumerate(lines, start=1):
            if len(line) >= MIN_SECRET:
                yield Secret(line, f"{secret.label} line {number}")


def as_secrets(values):
    """Secrets from Secret objects or plain strings (labelled by their position)."""
    return [value if isinstance(value, Secret) else Secret(str(value), f"secret #{number}")
            for number, value in enumerate(values, start=1)]


# --- scanning ------------------------------------------------------------------------------------------

def _printable(text):
    return "".join(char if char.isprintable() else "." for char in text)


def _scan_line(line, secrets, pans, ignore_timestamps):
    """(findings, masked line): findings are [(position in the masked line, kind, what)].

    A hit inside another one is not reported on its own (a PEM line inside the PEM body); overlapping
    hits are masked together, so no part of either shows.
    """
    hits = []
    for secret in secrets:
        start = line.find(secret.value)
        while start >= 0:
            end = start + len(secret.value)
            hits.append((start, end, SECRET, secret.label, f"[{secret.label}]"))
            start = line.find(secret.value, end)
    for match in PRIVATE_KEY_HEADER.finditer(line):
        hits.append((match.start(), match.end(), PRIVATE_KEY, match.group(1), match.group()))
    if pans:
        for start, end, digits in find_pans(line, ignore_timestamps):
            hits.append((start, end, PAN, mask_pan(digits), mask_pan(digits)))
    if not hits:
        return [], line
    hits.sort(key=lambda hit: (hit[0], -(hit[1] - hit[0])))
    reported = [hit for hit in hits
                if not any(other[:2] != hit[:2] and other[0] <= hit[0] and hit[1] <= other[1] for other in hits)]
    regions = []  # [start, end, replacement], merged where hits overlap
    for start, end, _, _, replacement in hits:
        if regions and start < regions[-1][1]:
            if end > regions[-1][1]:
                regions[-1][1:] = [end, "[masked]"]
            continue
        regions.append([start, end, replacement])
    out, at, where = [], 0, []
    for start, end, replacement in regions:
        out.append(_printable(line[at:start]))
        where.append((start, end, sum(len(part) for part in out)))
        out.append(replacement)
        at = end
    out.append(_printable(line[at:]))
    findings = [(next(pos for start, end, pos in where if start <= hit[0] < end), hit[2], hit[3]) for hit in reported]
    return findings, "".join(out)


def _excerpt(masked, position):
    masked = masked.rstrip("\r\n")
    if len(masked) <= EXCERPT:
        return masked.strip()
    start = max(0, min(position - EXCERPT // 3, len(masked) - EXCERPT))
    text = masked[start:start + EXCERPT]
    return ("..." if start else "") + text + ("..." if start + EXCERPT < len(masked) else "")


def _scan_lines(lines, path, secrets, pans, ignore_timestamps):
    findings = []
    for number, line in enumerate(lines, start=1):
        found, masked = _scan_line(line.rstrip("\r\n"), secrets, pans, ignore_timestamps)
        findings += [Finding(str(path), number, kind, what, _excerpt(masked, position))
                     for position, kind, what in found]
    return findings


def scan_text(text, secrets=(), path="<text>", pans=True, ignore_timestamps=True):
    """Findings in a string (e.g. a captured stdout); `secrets` are Secret objects or plain strings."""
    return _scan_lines(text.splitlines(), path, _checked(as_secrets(secrets)), pans, ignore_timestamps)


def _decoded(raw):
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")  # binary: one character per byte, so ASCII secrets stay findable


def scan_file(path, secrets=(), pans=True, ignore_timestamps=True):
    """Findings in one file, text or binary; each line that is not UTF-8 is read byte for byte."""
    checked = _checked(as_secrets(secrets))
    with open(path, "rb") as handle:
        return _scan_lines((_decoded(raw) for raw in handle), path, checked, pans, ignore_timestamps)


def iter_files(paths):
    """Every regular file under `paths` (files or directories), sorted, symbolic links not followed."""
    for path in map(Path, paths):
        if path.is_symlink() or path.is_file():
            if not path.is_symlink():
                yield path
            continue
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: no such file or directory")
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            for name in sorted(filenames):
                found = Path(dirpath) / name
                if found.is_file() and not found.is_symlink():
                    yield found


def scan_paths(paths, secrets=(), pans=True, ignore_timestamps=True):
    """Findings in every file under `paths`, in path order; a path that does not exist raises."""
    checked = _checked(as_secrets(secrets))
    findings = []
    for path in iter_files(paths):
        findings += scan_file(path, checked, pans, ignore_timestamps)
    return findings


def format_table(findings):
    """The findings as an aligned text table, one row each."""
    rows = [("where", "kind", "what", "excerpt")]
    rows += [(f"{item.path}:{item.line}", item.kind, item.what, item.excerpt) for item in findings]
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    return "\n".join("  ".join([*(cell.ljust(width) for cell, width in zip(row[:3], widths)), row[3]]).rstrip()
                     for row in rows)


# --- command line ----------------------------------------------------------------------------------

def _parser():
    parser = argparse.ArgumentParser(prog="posfleet-secretscan", description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("paths", nargs="+", metavar="PATH", help="files or directories to scan")
    parser.add_argument("--secret-file", action="append", default=[], metavar="F",
                        help="a file holding a secret to look for: a PEM key or one value (repeatable)")
    parser.add_argument("--vault-file", help="an Ansible Vault vars file: look for each of its values")
    parser.add_argument("--vault-password-file", help="the password file of --vault-file")
    parser.add_argument("--lab", nargs="?", const=str(LAB_STATE), metavar="DIR",
                        help="look for the lab's secrets: its vault, signing key and SSH key (default %(const)s)")
    parser.add_argument("--no-pan", action="store_true", help="do not look for card numbers")
    return parser


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    if bool(args.vault_file) != bool(args.vault_password_file):
        parser.error("--vault-file and --vault-password-file go together")
    try:
        secrets = []
        for path in args.secret_file:
            secrets += secrets_from_file(path)
        if args.vault_file:
            secrets += load_secrets_from_vault_vars(args.vault_file, args.vault_password_file)
        if args.lab:
            secrets += lab_secrets(args.lab)
        files = list(iter_files(args.paths))
        findings = scan_paths(files, secrets, pans=not args.no_pan)
    except (SecretScanError, OSError) as exc:
        print(f"posfleet-secretscan: {exc}", file=sys.stderr)
        return 2
    if findings:
        print(format_table(findings))
        print(f"posfleet-secretscan: {len(findings)} finding(s) in {len(files)} file(s)", file=sys.stderr)
        return 1
    print(f"posfleet-secretscan: clean: {len(files)} file(s), {len({s.value for s in secrets})} secret(s) "
          f"searched{'' if args.no_pan else ', card numbers'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
