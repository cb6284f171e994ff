"""posfleet/secretscan.py: the scan the lab tests run over stdout, reports and logs.

Card numbers are built here at run time from the lab's synthetic BINs (posfleet/packs.py), never
written out in the repository; secrets are made fresh per test.
"""

import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from posfleet import release as posrelease
from posfleet import secretscan as scan
from posfleet.packs import SYNTHETIC_BINS

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "bin" / "posfleet-secretscan"


BIN = SYNTHETIC_BINS[0]["bin"]


def make_pan(prefix=BIN, length=16, filler="3141592653589793238"):
    """A Luhn-valid number: `prefix`, filler digits, then the check digit."""
    body = (prefix + filler)[:length - 1]
    return next(body + digit for digit in "0123456789" if scan.luhn_valid(body + digit))


def not_luhn(pan):
    """The same number with a wrong check digit."""
    return pan[:-1] + str((int(pan[-1]) + 1) % 10)


def pem_key():
    key = Ed25519PrivateKey.generate()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode("ascii"), key


def kinds(findings):
    return [(item.line, item.kind) for item in findings]


# --- Luhn and masking ------------------------------------------------------------------------------

@pytest.mark.parametrize("length", [13, 15, 16, 19])
def test_luhn_valid_numbers_of_every_card_length_are_found_and_shown_masked(length):
    pan = make_pan(length=length)
    findings = scan.scan_text(f"txn 17 pan={pan} approved")
    assert kinds(findings) == [(1, scan.PAN)]
    assert findings[0].what == pan[:6] + "*" * (length - 10) + pan[-4:]
    assert pan not in str(findings[0]) and pan not in scan.format_table(findings)
    assert findings[0].excerpt == f"txn 17 pan={scan.mask_pan(pan)} approved"


def test_luhn_edge_cases():
    pan = make_pan()
    assert scan.luhn_valid(pan) and not scan.luhn_valid(not_luhn(pan))
    assert not scan.luhn_valid("") and not scan.luhn_valid("0") and scan.luhn_valid("00")
    assert scan.luhn_valid("18") and not scan.luhn_valid("81")
    # digits of other scripts are digits to str.isdigit, but no card number is written in them
    assert not scan.luhn_valid(pan.translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")))
    assert not scan.luhn_valid(pan[:8] + " " + pan[8:])


def test_numbers_outside_13_to_19_digits_or_failing_luhn_are_not_reported():
    short, long = make_pan(length=12), make_pan(length=20)
    text = f"a {short} b {long} c {not_luhn(make_pan())}"
    assert scan.scan_text(text) == []


def test_card_formatting_with_spaces_or_dashes_is_found():
    pan = make_pan()
    spaced = " ".join(pan[i:i + 4] for i in range(0, 16, 4))
    dashed = "-".join(pan[i:i + 4] for i in range(0, 16, 4))
    amex = make_pan(prefix="99", length=15)
    amex_form = f"{amex[:4]} {amex[4:10]} {amex[10:]}"
    findings = scan.scan_text(f"{spaced}\ncard: {dashed}.\nqty 12 {amex_form}\namount 1200 {spaced} EUR")
    assert kinds(findings) == [(1, "pan"), (2, "pan"), (3, "pan"), (4, "pan")]
    assert [item.what for item in findings] == [scan.mask_pan(pan)] * 2 + [scan.mask_pan(amex), scan.mask_pan(pan)]
    assert findings[3].excerpt == f"amount 1200 {scan.mask_pan(pan)} EUR"
    for item in findings:
        assert pan[6:12] not in item.excerpt and amex[6:11] not in item.excerpt


def test_numbers_that_are_not_card_numbers_are_not_reported():
    pan = make_pan()
    lines = [
        f"a longer digit run: 7{pan}",                    # embedded in a longer number
        f"a hex digest: sha256 ab{pan}cd",                # part of an alphanumeric token
        f"a float: 0.{pan}",                              # the fraction of a decimal number
        f"zero padded: {make_pan(prefix='000', length=16)}",
        "a date 2026-11-24 01:02:03, an ip 10.231.1.17, a version 2026.11.0",
        f"masked as posd logs it: {scan.mask_pan(pan)}",
        "groups of 2 digits: 99 00 01 12 34 56 78 90",
    ]
    assert scan.scan_text("\n".join(lines)) == []


def test_unix_times_in_milli_micro_and_nano_seconds_are_not_card_numbers_unless_asked():
    # Luhn-valid times in 2025: as ms, us and ns they have 13, 16 and 19 digits.
    stamps = [make_pan(prefix="17639712", length=length, filler="00000000000") for length in (13, 16, 19)]
    text = "\n".join(f"t={stamp}" for stamp in stamps)
    assert scan.scan_text(text) == []
    assert kinds(scan.scan_text(text, ignore_timestamps=False)) == [(1, "pan"), (2, "pan"), (3, "pan")]
    # A 16-digit number in the 2-series card range is not a time, even though it starts like one.
    mastercard_like = make_pan(prefix="2221", length=16)
    assert kinds(scan.scan_text(f"t={mastercard_like}")) == [(1, "pan")]


# --- secrets and keys ------------------------------------------------------------------------------

def test_a_given_secret_is_found_and_never_shown():
    key = secrets.token_hex(32)
    findings = scan.scan_text(f"ok\nkey: {key}\n{{\"key\": \"{key}\", \"again\": \"{key}\"}}",
                              [scan.Secret(key, "vault:pos_backup_key")])
    assert kinds(findings) == [(2, "secret"), (3, "secret"), (3, "secret")]
    assert findings[0].excerpt == "key: [vault:pos_backup_key]"
    report = scan.format_table(findings)
    assert key not in report and key[:16] not in report and "vault:pos_backup_key" in report


def test_a_secret_too_short_to_search_for_is_refused():
    with pytest.raises(scan.SecretScanError, match="at least 8 characters"):
        scan.scan_text("text", ["short"])


def test_a_multi_line_secret_is_looked_for_line_by_line():
    first, second = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    findings = scan.scan_text(f"x {second} y", [scan.Secret(f"{first}\n{second}\n", "note")])
    assert [(item.kind, item.what) for item in findings] == [("secret", "note line 2")]


def test_a_signing_key_is_found_by_its_pem_body_and_its_raw_seed_in_hex_or_base64(tmp_path):
    ok = posrelease.keygen(tmp_path / "keys")
    found = scan.secrets_from_file(ok["private_key"], "release signing key")
    labels = sorted(item.label for item in found)
    assert labels == ["release signing key (PRIVATE KEY body)", "release signing key (ed25519 seed, base64)",
                      "release signing key (ed25519 seed, hex)"]
    key = posrelease.load_private_key(ok["private_key"])
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())
    body = Path(ok["private_key"]).read_text().splitlines()[1]
    log = tmp_path / "run.log"
    log.write_text(f"debug: seed={seed.hex()}\nbody {body}\nnothing here\n")
    findings = scan.scan_paths([log], found)
    assert [(item.line, item.what) for item in findings] == [
        (1, "release signing key (ed25519 seed, hex)"), (2, "release signing key (PRIVATE KEY body)")]
    assert seed.hex() not in scan.format_table(findings) and body not in scan.format_table(findings)
    # the public key is no secret: it is not among the values searched for
    assert all(item.value not in Path(ok["public_key"]).read_text() for item in found)


def test_each_line_of_a_multi_line_pem_body_is_a_secret(tmp_path):
    # Synthetic PEM with a long body (an RSA or OpenSSH key looks like this), not a real key.
    lines = [secrets.token_urlsafe(48)[:64] for _ in range(3)] + ["AAAA"]
    pem = "-----BEGIN OPENSSH PRIVATE KEY-----\n" + "\n".join(lines) + "\n-----END OPENSSH PRIVATE KEY-----\n"
    found = scan.secrets_from_text(pem, "ssh key")
    values = {item.value for item in found}
    assert "".join(lines) in values and set(lines[:3]) <= values and "AAAA" not in values
    findings = scan.scan_text(f"leak: {lines[1]}", found)
    assert [item.what for item in findings] == ["ssh key (OPENSSH PRIVATE KEY line 2)"]


def test_a_private_key_header_is_found_without_knowing_the_key():
    pem, _ = pem_key()
    begin = pem.splitlines()[0]
    escaped = pem.replace("\n", "\\n")  # a key inside a JSON string, as a result or a log shows it
    text = f"ok\n{begin}\n\"key\": \"{escaped}\"\n-----BEGIN PUBLIC KEY-----"
    findings = scan.scan_text(text)
    assert kinds(findings) == [(2, "private-key"), (3, "private-key")]
    assert {item.what for item in findings} == {"PRIVATE KEY"}
    pgp = "-----BEGIN PGP PRIVATE KEY BLOCK-----"
    assert [item.what for item in scan.scan_text(pgp)] == ["PGP PRIVATE KEY BLOCK"]


def test_overlapping_findings_are_masked_together():
    key = secrets.token_hex(16)
    pan = make_pan()
    findings = scan.scan_text(f"x {pan}{key} y", [key])
    # the PAN touches the hex secret, so it is not reported as a PAN; the secret is, and nothing shows
    assert [item.kind for item in findings] == ["secret"]
    overlap = scan.scan_text(f"x {key[:20]}{key} y", [key[:20] + key[:12], key])
    assert len(overlap) == 2 and all(key[:12] not in item.excerpt for item in overlap)


def test_a_long_line_gives_a_short_excerpt_around_the_finding():
    key = secrets.token_hex(32)
    findings = scan.scan_text("a" * 500 + " " + key + " " + "b" * 500, [key])
    assert len(findings[0].excerpt) <= scan.EXCERPT + 6 and "[secret #1]" in findings[0].excerpt


# --- files, directories, binaries ------------------------------------------------------------------

def test_binary_files_are_scanned_byte_for_byte(tmp_path):
    key = secrets.token_hex(32)
    pan = make_pan()
    blob = tmp_path / "journal.db"
    blob.write_bytes(b"SQLite format 3\x00\xff\xfe" + key.encode() + b"\x00\x01\n\x80\x81" + pan.encode() + b"\x00")
    findings = scan.scan_paths([tmp_path], [key])
    assert kinds(findings) == [(1, "secret"), (2, "pan")]
    for item in findings:
        assert key not in item.excerpt and pan not in item.excerpt and item.excerpt.isprintable()


def test_a_clean_tree_gives_no_findings_and_links_are_not_followed(tmp_path):
    key = secrets.token_hex(32)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(key)
    tree = tmp_path / "reports"
    (tree / "logs").mkdir(parents=True)
    pan = make_pan()
    (tree / "report.json").write_text(
        '{"release": "2026.12.0", "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",\n'
        ' "elapsed_s": 12.345678901234567, "started": 1763971200123, "ip": "10.231.1.7",\n'
        f' "pan": "{scan.mask_pan(pan)}", "uuid": "550e8400-e29b-41d4-a716-446655440000"}}\n')
    (tree / "logs" / "posd.log").write_text(f"sale stan=000123 amount=1250 EUR pan={scan.mask_pan(pan)}\n")
    (tree / "logs" / "link").symlink_to(outside / "secret.txt")
    (tree / "empty.log").write_text("")
    assert scan.scan_paths([tree], [key]) == []
    assert [path.name for path in scan.iter_files([tree])] == ["empty.log", "report.json", "posd.log"]
    with pytest.raises(FileNotFoundError):
        scan.scan_paths([tmp_path / "missing"])


# --- vaults, the lab's secrets and the command line ------------------------------------------------

def ansible_vault():
    found = Path(sys.executable).with_name("ansible-vault")
    if not found.exists():
        pytest.skip("ansible-vault not found next to this Python")
    return str(found)


def write_vault(directory, **values):
    """A vars file of inline vault values and its password file, made the way `poslab up` makes them."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    password = directory / "password"
    password.write_text(secrets.token_urlsafe(32) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    text = "---\n"
    for name, value in values.items():
        text += subprocess.run([ansible_vault(), "encrypt_string", "--vault-password-file", str(password),
                                "--stdin-name", name], input=value, capture_output=True, text=True, env=env,
                               check=True, timeout=60).stdout
    (directory / "secrets.yml").write_text(text)
    return directory / "secrets.yml", password


def test_vault_values_and_the_vault_password_are_loaded(tmp_path):
    key = secrets.token_hex(32)
    vault, password = write_vault(tmp_path / "vault", pos_backup_key=key, pin="1234")
    found = scan.load_secrets_from_vault_vars(vault, password)
    assert {item.label: item.value for item in found} == {
        "vault:pos_backup_key": key, "vault password": password.read_text().strip()}
    assert "pin" not in {item.label for item in found}  # too short to search for


def test_a_wholly_encrypted_vault_file_is_read(tmp_path):
    key = secrets.token_hex(32)
    password = tmp_path / "password"
    password.write_text(secrets.token_urlsafe(32))
    vault = tmp_path / "vault.yml"
    vault.write_text(f"backup:\n  key: {key}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    subprocess.run([ansible_vault(), "encrypt", "--vault-password-file", str(password), str(vault)], env=env,
                   capture_output=True, check=True, timeout=60)
    assert key not in vault.read_text()
    labels = {item.label: item.value for item in scan.load_secrets_from_vault_vars(vault, password)}
    assert labels["vault:backup.key"] == key


def test_a_wrong_vault_password_is_a_clear_error(tmp_path):
    vault, password = write_vault(tmp_path / "vault", pos_backup_key=secrets.token_hex(32))
    password.write_text("not-the-password\n")
    with pytest.raises(scan.SecretScanError, match=f"cannot decrypt {vault} with {password}: wrong password"):
        scan.load_secrets_from_vault_vars(vault, password)


@pytest.fixture
def lab_state(tmp_path):
    """A lab state directory laid out as lab/poslab/lifecycle.py lays it out, with fresh secrets."""
    state = tmp_path / "poslab"
    key = secrets.token_hex(32)
    write_vault(state / "vault", pos_backup_key=key)
    posrelease.keygen(state / "release-key")
    (state / "ssh").mkdir(mode=0o700)
    ssh_key = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    (state / "ssh" / "id_ed25519").write_bytes(ssh_key)
    return state, key


def test_lab_secrets_cover_the_vault_the_signing_key_and_the_ssh_key(lab_state):
    state, key = lab_state
    found = scan.lab_secrets(state)
    labels = {item.label for item in found}
    assert {"vault:pos_backup_key", "vault password", "release signing key (PRIVATE KEY body)",
            "lab SSH key (OPENSSH PRIVATE KEY body)"} <= labels
    assert key in {item.value for item in found}
    (state / "release-key" / "release.key").unlink()
    with pytest.raises(scan.SecretScanError, match=r"release\.key"):
        scan.lab_secrets(state)


def run_tool(*args):
    return subprocess.run([str(TOOL), *map(str, args)], capture_output=True, text=True, timeout=60, check=False)


def test_the_command_line_exits_1_with_a_masked_table_and_0_when_clean(lab_state, tmp_path):
    state, key = lab_state
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "clean.log").write_text("PLAY RECAP\nKST00001 : ok=12 changed=3 failed=0\n")
    clean = run_tool("--lab", state, logs)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "clean: 1 file(s)" in clean.stdout

    pan = make_pan()
    (logs / "leaky.log").write_text(f"msg: key={key}\nresult: pan {pan}\n")
    found = run_tool("--vault-file", state / "vault" / "secrets.yml",
                     "--vault-password-file", state / "vault" / "password", logs)
    assert found.returncode == 1
    assert f"{logs / 'leaky.log'}:1" in found.stdout and "vault:pos_backup_key" in found.stdout
    assert f"{logs / 'leaky.log'}:2" in found.stdout and scan.mask_pan(pan) in found.stdout
    assert key not in found.stdout + found.stderr and pan not in found.stdout + found.stderr
    assert "2 finding(s) in 2 file(s)" in found.stderr

    secret_file = tmp_path / "backup.key"
    secret_file.write_text(key + "\n")
    assert run_tool("--no-pan", "--secret-file", secret_file, logs / "leaky.log").returncode == 1
    (logs / "leaky.log").write_text(f"result: pan {pan}\n")
    assert run_tool("--no-pan", "--secret-file", secret_file, logs).returncode == 0


def test_the_command_line_exits_2_when_the_secrets_cannot_be_loaded(tmp_path):
    proc = run_tool("--secret-file", tmp_path / "missing.key", tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"posfleet-secretscan: cannot read the secret file {tmp_path / 'missing.key'}")
    proc = run_tool("--vault-file", tmp_path / "v.yml", tmp_path)
    assert proc.returncode == 2 and "go together" in proc.stderr
    assert shutil.which("sh")  # the wrapper is a shell script, like bin/posfleet-release
