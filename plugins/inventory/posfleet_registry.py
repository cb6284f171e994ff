# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# posfleet inventory plugin: the terminal fleet from the TMS registry export. Runs on the control node
# only, so it may use ansible and PyYAML; everything else is the standard library.

from __future__ import annotations

DOCUMENTATION = r"""
name: posfleet_registry
author:
  - posfleet contributors (@posfleet)
short_description: POS terminal inventory from a TMS terminal registry export (CSV or JSON)
description:
  - Reads a terminal registry exported by the terminal management system (TMS), one terminal per row,
    validates every row and builds the inventory from it.
  - Uses a YAML configuration file whose name ends with C(.posfleet.yml) or C(.posfleet.yaml).
  - Each terminal becomes a host named by its serial number, with C(ansible_host) set to its IP address.
  - Hosts are put in C(model_<model>) and C(region_<region>) groups, children of the C(models) and C(regions)
    groups. Every known model and region gets its group, even when no terminal of it is in the registry.
  - The model profile from O(models_file) is attached to each C(model_<model>) group as C(pos_model_profile),
    and the region settings from O(regions_file) to each C(region_<region>) group as C(pos_region_settings).
    Both are inventory group variables, so an inventory's C(group_vars/) files override them.
  - Rows are checked before anything is added to the inventory. See O(on_bad_row) for what a bad row does.
  - Of the variables of the C(all) group, this plugin sets only C(posfleet_models_file) and C(posfleet_regions_file),
    the absolute paths of O(models_file) and O(regions_file), which C(publish.yml) passes to C(posfleet-release).
    It never sets anything secret.
extends_documentation_fragment:
  - ansible.builtin.constructed
options:
  plugin:
    description:
      - "Marks this as an instance of this plugin, by its full name (an inventory written before posfleet
        was a collection, with C(plugin: posfleet_registry), needs the full name now)."
    type: str
    required: true
    choices: ['posfleet.fleet.posfleet_registry']
  registry:
    description:
      - Path to the registry export. A name ending in C(.csv) is read as CSV, one ending in C(.json) as JSON.
      - A relative path is relative to the directory of the configuration file.
      - May be a Jinja2 template (the configuration file is trusted), for example to let an environment
        variable override the path with the P(ansible.builtin.env#lookup) lookup.
      - "CSV: text in the encoding O(encoding) names (UTF-8 by default), a header row is required, with the columns
        C(serial), C(model), C(region), C(merchant_id), C(terminal_id), C(merchant_name), C(store) and C(ip)
        in any order. Column names are matched case-insensitively. Any further column becomes a host variable
        named C(pos_registry_<column>) holding the cell's text."
      - "JSON: either a list of objects with the same keys, or an object with the list under C(terminals).
        Further keys become C(pos_registry_<key>) host variables with their JSON values."
    type: str
    required: true
  encoding:
    description:
      - The text encoding of the registry file, as a Python codec name, for example V(gb18030) or V(gbk) for
        exports from spreadsheet tools set up for Chinese, or V(utf-16) for UTF-16 exports.
      - The default reads UTF-8 with or without a byte order mark. With V(utf-16) the byte order mark at the
        start of the file decides the byte order; V(utf-16-le) and V(utf-16-be) read files without one.
        A byte order mark at the start of the text is never read as part of the header.
      - An unknown codec name fails the inventory source before anything is read. A file that is not text in
        this encoding fails it too, naming the line and byte offset where decoding stopped.
      - V(gb18030) reads GBK files as well (GB18030 extends GBK).
      - Applies to CSV and JSON registries alike.
    type: str
    default: utf-8-sig
  models_file:
    description:
      - Path to the shared model profiles (a YAML mapping under C(models)).
      - A relative path is relative to the directory of the configuration file.
    type: str
    default: ../shared/models.yml
  regions_file:
    description:
      - Path to the shared region settings (a YAML mapping under C(regions)).
      - A relative path is relative to the directory of the configuration file.
    type: str
    default: ../shared/regions.yml
  region_overrides:
    description:
      - "Fields of the shared region settings this inventory changes, per region: C({region: {field: value}}).
        Only the fields named change; the others stay as O(regions_file) has them. A production inventory
        names its own C(distribution_point) here without repeating the region's timezone and window."
      - A region that O(regions_file) does not define, or a field no region there has, fails the inventory
        source.
    type: dict
    default: {}
  on_bad_row:
    description:
      - What a row that fails a check does.
      - "V(fail) loads nothing and fails the inventory source with one line per bad row,
        C(FILE:LINE: reason) for CSV and C(FILE:entry N: reason) for JSON (N counts from 1)."
      - V(skip) drops each bad row with a warning in the same form and loads the good rows.
      - "The checks: every required field present and not empty; the model and region known in O(models_file)
        and O(regions_file); C(ip) a valid IPv4 or IPv6 address; C(serial) 1 to 64 ASCII letters, digits, C(.),
        C(_) or C(-), starting with a letter or digit (no spaces, no other scripts or look-alike characters:
        the serial names the host, its backup directory and its files); no serial and no IP address used twice
        (the first row wins, the later ones are bad); no value, extra columns included, holding a template
        marker (C({{), C({%), C({#)) or a control character (a newline, a tab, an escape)."
      - Spaces around a value are removed before the checks; other text (merchant names in any script) is kept
        as it is.
      - Problems with the file as a whole (missing file, no header, a required column missing from the header,
        an empty registry, unreadable model or region data) always fail, whatever this option says.
    type: str
    default: fail
    choices: ['fail', 'skip']
"""

EXAMPLES = r"""
---
# inventories/production/registry.posfleet.yml: the TMS export next to the config file,
# model and region data from inventories/shared/.
plugin: posfleet.fleet.posfleet_registry
registry: registry.csv

---
# The lab: a fixed export path that an environment variable may override, and a group per merchant
# and per store (merchant_M1001, store_S0001, ...).
plugin: posfleet.fleet.posfleet_registry
registry: "{{ lookup('ansible.builtin.env', 'POSLAB_REGISTRY', default='/var/lib/poslab/registry.csv') }}"
keyed_groups:
  - key: pos_merchant_id
    prefix: merchant
  - key: pos_store
    prefix: store

---
# An export from a spreadsheet tool set up for Chinese: GB18030 text (GBK reads the same way).
plugin: posfleet.fleet.posfleet_registry
registry: registry.csv
encoding: gb18030

---
# Load what is good and warn about the rest; use a registry column for the SSH port and
# group the terminals that run on battery.
plugin: posfleet.fleet.posfleet_registry
registry: /srv/tms/export/terminals.json
models_file: /srv/posfleet/shared/models.yml
regions_file: /srv/posfleet/shared/regions.yml
on_bad_row: skip
strict: true
compose:
  ansible_port: pos_registry_ssh_port | default(22) | int
groups:
  on_battery: pos_model_profile.battery
"""

import codecs
import csv
import io
import ipaddress
import json
import os
import re
from collections.abc import Mapping

from ansible.errors import AnsibleParserError
from ansible.inventory.helpers import get_group_vars
from ansible.module_utils.common.text.converters import to_native
from ansible.plugins.inventory import BaseInventoryPlugin, Constructable
from ansible.template import trust_as_template
from ansible.utils.vars import combine_vars

REQUIRED_FIELDS = ("serial", "model", "region", "merchant_id", "terminal_id", "merchant_name", "store", "ip")
SERIAL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SERIAL_RULE = "use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
# Extra columns become `pos_registry_<name>` variables, so a name has to make a valid variable name.
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
EXTRA_PREFIX = "pos_registry_"
CONFIG_SUFFIXES = (".posfleet.yml", ".posfleet.yaml")
PREFIX = "posfleet_registry:"
# A compose, groups or keyed_groups expression that only names a variable (keyed_groups' usual `key:
# pos_store`): read directly instead of compiled by Jinja once per terminal, which was three quarters
# of the inventory's time at 10,000 terminals.
_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
DEFAULT_ENCODING = "utf-8-sig"
# What an export that does not decode most likely is, for the error that asks for option 'encoding'.
LIKELY_ENCODINGS = ("gb18030 or gbk for exports from spreadsheet tools set up for Chinese (gb18030 reads GBK "
                    "too), utf-16 for UTF-16 text with a byte order mark")
UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


class _Entry:
    """One registry row as read, before the checks."""

    __slots__ = ("extras", "fields", "problems", "where")

    def __init__(self, where, fields, extras, problems=None):
        self.where = where          # "FILE:LINE" or "FILE:entry N", the start of every message about it
        self.fields = fields        # required field -> str, or None when absent; None: not a JSON object
        self.extras = extras        # extra column or key -> value
        self.problems = list(problems or [])


def _trusted(value):
    """Mark validated registry data as trusted, explicitly.

    `trusted_by_default` alone is not enough: when another inventory source is parsed first in the same
    run (molecule puts its own file beside ours), ansible-core reuses that source's trust setting.
    """
    if isinstance(value, str):
        return trust_as_template(value)
    if isinstance(value, Mapping):
        return {key: _trusted(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_trusted(item) for item in value]
    return value


TEMPLATE_MARKERS = re.compile(r"\{\{|\{%|\{#")
# C0 controls and DEL: no registry value needs one, and a newline or an escape sequence in a name
# would reach logs, receipts and the merchant pack as it is.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


def _texts(name, value):
    """(field name, text) for a value and every string inside it (JSON extras nest), keys included."""
    if isinstance(value, str):
        yield name, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _texts(f"{name}.{key}", key)
            yield from _texts(f"{name}.{key}", item)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _texts(f"{name}[{index}]", item)


class _IndexedGroups(list):
    """A list of groups whose `in` is a set lookup instead of a scan, for `Group.add_child_group`."""

    def __init__(self, groups):
        super().__init__(groups)
        self._members = set(groups)

    def __contains__(self, group):
        return group in self._members

    def append(self, group):
        super().append(group)
        self._members.add(group)


class InventoryModule(BaseInventoryPlugin, Constructable):
    NAME = "posfleet.fleet.posfleet_registry"
    # Registry values are plain data: rows carrying template markers are refused below, so the values
    # can be trusted as they are. Untrusted values would reach `ansible-inventory --list` (which AWX
    # and testinfra read) wrapped as {"__ansible_unsafe": ...}.
    trusted_by_default = True

    def verify_file(self, path):
        return super().verify_file(path) and path.endswith(CONFIG_SUFFIXES)

    def _compose(self, template, variables, disable_lookups=...):
        if isinstance(template, str) and _PLAIN_NAME.fullmatch(template) and template in variables:
            return variables[template]
        return super()._compose(template, variables, disable_lookups)

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        self._config_path = path
        config_dir = os.path.dirname(os.path.realpath(path))
        encoding = self._encoding_option()

        models_file = self._path_option("models_file", config_dir)
        regions_file = self._path_option("regions_file", config_dir)
        models = self._load_shared(models_file, "models")
        regions = self._override_regions(self._load_shared(regions_file, "regions"), regions_file)
        self._check_models(models, models_file)

        registry = self._path_option("registry", config_dir)
        entries = self._read_registry(registry, encoding)
        good, bad = self._check_entries(entries, models, regions, models_file, regions_file)

        if bad:
            lines = [f"{entry.where}: {'; '.join(entry.problems)}" for entry in bad]
            if self.get_option("on_bad_row") == "fail":
                # Nothing has been added to the inventory yet: a half-loaded fleet is worse than none.
                listing = "\n".join(lines)
                raise AnsibleParserError(
                    f"{PREFIX} {len(bad)} bad row(s) in {registry}, so nothing was loaded:\n{listing}\n"
                    f"Fix these rows in the registry export, or set 'on_bad_row: skip' in {path} to load "
                    "the good rows and get a warning for each bad one."
                )
            for line in lines:
                self.display.warning(f"{PREFIX} skipped {line}")

        self._populate(good, models, regions)
        self._parent_orphans()
        # For publish.yml: the release tool checks releases against the same shared files as this inventory.
        self.inventory.set_variable("all", "posfleet_models_file", models_file)
        self.inventory.set_variable("all", "posfleet_regions_file", regions_file)

    # -- options and shared data ------------------------------------------------------------------

    def _path_option(self, name, config_dir):
        value = self.get_option(name)
        if self.templar.is_template(value):
            try:
                value = self.templar.template(value)
            except Exception as e:
                raise AnsibleParserError(
                    f"{PREFIX} could not template option '{name}' in {self._config_path}: {to_native(e)}"
                ) from e
        if not isinstance(value, str) or not value.strip():
            raise AnsibleParserError(f"{PREFIX} option '{name}' in {self._config_path} must be a non-empty path")
        return os.path.normpath(os.path.join(config_dir, os.path.expanduser(value.strip())))

    def _encoding_option(self):
        """Option 'encoding', checked before any file is read."""
        encoding = self.get_option("encoding")
        try:
            codecs.lookup(encoding)
            # codecs.lookup also knows bytes-to-bytes codecs (base64, rot13) that cannot decode text.
            io.TextIOWrapper(io.BytesIO(), encoding=encoding)
        except (LookupError, TypeError):
            # from None: Python's own wording ("use codecs.open()") would only confuse an operator.
            raise AnsibleParserError(
                f"{PREFIX} option 'encoding' in {self._config_path}: {encoding!r} is not a text encoding Python "
                f"knows; use a Python codec name such as {DEFAULT_ENCODING} (the default: UTF-8 with or without "
                "a byte order mark), gb18030, gbk or utf-16"
            ) from None
        return encoding

    def _override_regions(self, regions, regions_file):
        """The shared regions with this inventory's region_overrides applied, field by field."""
        overrides = self.get_option("region_overrides") or {}
        if not isinstance(overrides, Mapping):
            raise AnsibleParserError(f"{PREFIX} option 'region_overrides' in {self._config_path} must map region "
                                     "names to the fields they change")
        fields = {field for settings in regions.values() for field in settings}
        merged = {name: dict(settings) for name, settings in regions.items()}
        for name, changes in overrides.items():
            if name not in regions:
                raise AnsibleParserError(f"{PREFIX} region_overrides in {self._config_path}: region {name!r} is not in "
                                         f"{regions_file} ({', '.join(sorted(regions))})")
            if not isinstance(changes, Mapping):
                raise AnsibleParserError(f"{PREFIX} region_overrides.{name} in {self._config_path} must map fields "
                                         "to their values")
            unknown = sorted(set(changes) - fields)
            if unknown:
                raise AnsibleParserError(f"{PREFIX} region_overrides.{name} in {self._config_path}: "
                                         f"{', '.join(unknown)} is not a region field ({', '.join(sorted(fields))})")
            merged[name].update(changes)
        return merged

    def _load_shared(self, path, key):
        kind = key[:-1]
        if not os.path.isfile(path):
            raise AnsibleParserError(
                f"{PREFIX} {key} file {path} not found; point option '{key}_file' in {self._config_path} "
                f"at the shared {kind} data (inventories/shared/{key}.yml in the repository)"
            )
        try:
            data = self.loader.load_from_file(path, cache="none")
        except Exception as e:
            raise AnsibleParserError(f"{PREFIX} cannot read {key} file {path}: {to_native(e)}") from e
        if not isinstance(data, Mapping) or not isinstance(data.get(key), Mapping) or not data[key]:
            raise AnsibleParserError(
                f"{PREFIX} {path} must hold a mapping under '{key}:' with one entry per {kind} name"
            )
        for name, value in data[key].items():
            if not isinstance(name, str) or not NAME_RE.match(name):
                raise AnsibleParserError(
                    f"{PREFIX} {path}: {kind} name {name!r} may hold only letters, digits and '_' "
                    "(it becomes part of a group name); rename it"
                )
            if not isinstance(value, Mapping):
                raise AnsibleParserError(f"{PREFIX} {path}: {kind} '{name}' must be a mapping of settings")
        return data[key]

    def _check_models(self, models, models_file):
        for name, profile in models.items():
            python = profile.get("python")
            if not isinstance(python, str) or not python.strip():
                raise AnsibleParserError(
                    f"{PREFIX} {models_file}: model '{name}' has no 'python'; add the path of the Python "
                    "interpreter on that model's terminals"
                )

    # -- reading the registry ---------------------------------------------------------------------

    def _read_registry(self, registry, encoding):
        if not os.path.isfile(registry):
            raise AnsibleParserError(
                f"{PREFIX} registry file {registry} not found; write the TMS export there or point option "
                f"'registry' in {self._config_path} at it"
            )
        ext = os.path.splitext(registry)[1].lower()
        if ext not in (".csv", ".json"):
            raise AnsibleParserError(
                f"{PREFIX} registry file {registry} must end in .csv or .json so that its format is known"
            )
        try:
            with open(registry, "rb") as f:
                raw = f.read()
        except OSError as e:
            raise AnsibleParserError(f"{PREFIX} cannot read registry file {registry}: {to_native(e)}") from e
        text = io.StringIO(self._decode(registry, raw, encoding), newline="")
        entries = self._read_csv(registry, text) if ext == ".csv" else self._read_json(registry, text)
        if not entries:
            raise AnsibleParserError(
                f"{PREFIX} registry file {registry} holds no terminals; an empty export usually means the TMS "
                "export failed, so check it rather than run against an empty fleet"
            )
        return entries

    def _decode(self, registry, raw, encoding):
        # The whole file at once (a registry is small): the error then holds the offset in the file,
        # where a text stream's counts from the start of the chunk it was decoding.
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError as e:
            # utf-8-sig reports positions after the byte order mark it removed; the file's offset counts it.
            offset = e.start + len(raw) - len(e.object)
            line = raw[:offset].decode(encoding, errors="replace").count("\n") + 1
            described = "UTF-8 (the default encoding)" if encoding == DEFAULT_ENCODING else encoding
            likely = LIKELY_ENCODINGS
            if raw.startswith(UTF16_BOMS) and codecs.lookup(encoding).name != "utf-16":
                likely = "utf-16, as the file starts with a UTF-16 byte order mark"
            # from None: the codec's own message counts utf-8-sig positions after the byte order mark.
            raise AnsibleParserError(
                f"{PREFIX} {registry}:{line}: the registry file is not {described} text: "
                f"{e.reason} at byte offset {offset} (byte(s) {e.object[int(e.start):int(e.end)].hex(' ')}). "
                f"Set option 'encoding' in {self._config_path} to the export's encoding: {likely}; "
                "or export the file as UTF-8"
            ) from None
        # A byte order mark that the codec keeps (utf-8, utf-16-le, gb18030) is not part of the header.
        return text[1:] if text.startswith("\ufeff") else text

    def _read_csv(self, registry, f):
        reader = csv.reader(f, strict=True)
        try:
            header = next(reader, None)
            while header is not None and not any(cell.strip() for cell in header):
                header = next(reader, None)
            if header is None:
                return []
            columns = self._check_header(registry, reader.line_num, header)

            entries = []
            end_of_last = reader.line_num
            for cells in reader:
                # A quoted value may span lines; a row's line is the one it starts on.
                where = f"{registry}:{end_of_last + 1}"
                end_of_last = reader.line_num
                if not any(cell.strip() for cell in cells):
                    continue
                problems = []
                if len(cells) > len(columns):
                    problems.append(
                        f"{len(cells)} fields but the header has {len(columns)} (an unquoted comma in a value?)"
                    )
                values = dict(zip(columns, (cell.strip() for cell in cells)))
                fields = {name: values.get(name) for name in REQUIRED_FIELDS}
                extras = {name: value for name, value in values.items() if name not in REQUIRED_FIELDS}
                entries.append(_Entry(where, fields, extras, problems))
        except csv.Error as e:
            raise AnsibleParserError(
                f"{PREFIX} {registry}:{reader.line_num}: not valid CSV ({e}); fix the export"
            ) from e
        return entries

    def _check_header(self, registry, line, header):
        columns = [cell.strip().lower() for cell in header]
        problems = []
        missing = [name for name in REQUIRED_FIELDS if name not in columns]
        if missing:
            problems.append(f"required column(s) {', '.join(missing)} missing")
        seen = set()
        for column in columns:
            if column in seen:
                problems.append(f"column '{column}' appears twice")
            seen.add(column)
            if column not in REQUIRED_FIELDS and not NAME_RE.match(column):
                problems.append(f"column name {column!r} cannot become a variable name (use letters, digits, '_')")
        if problems:
            raise AnsibleParserError(
                f"{PREFIX} {registry}:{line}: bad header row: {'; '.join(problems)}. The first row must name "
                f"the columns {','.join(REQUIRED_FIELDS)} (in any order), then any extra columns."
            )
        return columns

    def _read_json(self, registry, f):
        try:
            data = json.load(f)
        except ValueError as e:
            raise AnsibleParserError(f"{PREFIX} {registry} is not valid JSON: {to_native(e)}") from e
        if isinstance(data, Mapping) and "terminals" in data:
            data = data["terminals"]
        if not isinstance(data, list):
            raise AnsibleParserError(
                f"{PREFIX} {registry} must hold a list of terminal objects, or an object with that list under "
                "'terminals'"
            )
        entries = []
        for index, item in enumerate(data, start=1):
            where = f"{registry}:entry {index}"
            if not isinstance(item, Mapping):
                problem = f"entry is a JSON {type(item).__name__}, expected an object with the keys " + (
                    ", ".join(REQUIRED_FIELDS)
                )
                entries.append(_Entry(where, None, {}, [problem]))
                continue
            problems = []
            fields = {}
            for name in REQUIRED_FIELDS:
                value = item.get(name)
                # A TMS may write numeric ids as JSON numbers; anything else is not an id.
                if isinstance(value, bool) or (value is not None and not isinstance(value, (str, int))):
                    problems.append(f"field '{name}' must be a string, got a JSON {type(value).__name__}")
                    value = ""
                fields[name] = None if value is None else str(value).strip()
            extras = {}
            for key, value in item.items():
                if key in REQUIRED_FIELDS:
                    continue
                if not NAME_RE.match(key):
                    problems.append(f"key {key!r} cannot become a variable name (use letters, digits, '_')")
                    continue
                extras[key] = value
            entries.append(_Entry(where, fields, extras, problems))
        return entries

    # -- checking ---------------------------------------------------------------------------------

    def _check_entries(self, entries, models, regions, models_file, regions_file):
        first_serial = {}
        first_ip = {}
        good, bad = [], []
        for entry in entries:
            fields = entry.fields
            if fields is None:
                bad.append(entry)
                continue
            problems = entry.problems
            # Extra columns too: every value of the row is trusted as a template (see _trusted).
            marked, controlled = set(), set()
            for name, value in [*fields.items(), *entry.extras.items()]:
                for where, text in _texts(name, value):
                    if TEMPLATE_MARKERS.search(text) and name not in marked:
                        marked.add(name)
                        problems.append(f"field '{where}' contains a template marker ({{{{, {{% or {{#): a "
                                        "registry holds data, never templates; fix the export")
                    if CONTROL_CHARACTERS.search(text) and name not in controlled:
                        controlled.add(name)
                        char = CONTROL_CHARACTERS.search(text).group()
                        problems.append(f"field '{where}' contains the control character U+{ord(char):04X}; "
                                        "a registry value is one line of text")
            for name in REQUIRED_FIELDS:
                if fields[name] is None:
                    problems.append(f"required field '{name}' is missing")
                elif fields[name] == "":
                    problems.append(f"required field '{name}' is empty")

            serial = fields["serial"]
            if serial:
                if not SERIAL_RE.match(serial):
                    problems.append(f"serial {serial!r} is not allowed: {SERIAL_RULE}")
                elif serial in first_serial:
                    problems.append(f"duplicate serial '{serial}' (first at {first_serial[serial]})")
                else:
                    first_serial[serial] = entry.where

            model = fields["model"]
            if model and model not in models:
                problems.append(
                    f"unknown model '{model}' (known models: {', '.join(sorted(models))}); fix the row or add "
                    f"a profile to {models_file}"
                )
            region = fields["region"]
            if region and region not in regions:
                problems.append(
                    f"unknown region '{region}' (known regions: {', '.join(sorted(regions))}); fix the row or "
                    f"add the region to {regions_file}"
                )

            ip = fields["ip"]
            if ip:
                try:
                    # Compared as addresses, so that two spellings of one IPv6 address are caught too.
                    address = ipaddress.ip_address(ip)
                except ValueError:
                    problems.append(f"ip '{ip}' is not a valid IPv4 or IPv6 address")
                else:
                    if address in first_ip:
                        problems.append(f"duplicate ip '{ip}' (first at {first_ip[address]})")
                    else:
                        first_ip[address] = entry.where

            (bad if problems else good).append(entry)
        return good, bad

    # -- building the inventory -------------------------------------------------------------------

    def _parent_orphans(self):
        """Make every group without a parent a child of `all` now, in the inventory's order, as ansible-core's
        reconcile step would after the last source.

        Reconcile does it with `Group.add_child_group`, which first scans the list of `all`'s children: with
        the ~89,000 merchant and store groups of 100,000 terminals, quadratic. The same calls here find the
        groups in a set instead; `all` keeps a plain list afterwards, and the groups their order.
        """
        inventory = self.inventory
        top = inventory.groups["all"]
        orphans = [name for name, group in inventory.groups.items() if group is not top and not group.parent_groups]
        top.child_groups = _IndexedGroups(top.child_groups)
        try:
            for name in orphans:
                inventory.add_child("all", name)
        finally:
            top.child_groups = list(top.child_groups)

    def _populate(self, entries, models, regions):
        inventory = self.inventory
        inventory.add_group("models")
        inventory.add_group("regions")
        for name, profile in models.items():
            group = inventory.add_group(f"model_{name}")
            inventory.add_child("models", group)
            inventory.set_variable(group, "pos_model_profile", _trusted(dict(profile, name=name)))
        for name, settings in regions.items():
            group = inventory.add_group(f"region_{name}")
            inventory.add_child("regions", group)
            inventory.set_variable(group, "pos_region_settings", _trusted(dict(settings, name=name)))

        strict = self.get_option("strict")
        for entry in entries:
            fields = entry.fields
            serial = fields["serial"]
            inventory.add_host(serial, group=f"model_{fields['model']}")
            inventory.add_child(f"region_{fields['region']}", serial)
            hostvars = {
                "ansible_host": fields["ip"],
                "ansible_python_interpreter": models[fields["model"]]["python"],
            }
            for name in REQUIRED_FIELDS:
                if name != "ip":    # ansible_host holds it
                    hostvars[f"pos_{name}"] = fields[name]
            for name, value in entry.extras.items():
                hostvars[EXTRA_PREFIX + name] = value
            for name, value in hostvars.items():
                inventory.set_variable(serial, name, _trusted(value))

            # compose, groups and keyed_groups see the group vars too (pos_model_profile, ...).
            host = inventory.get_host(serial)
            variables = combine_vars(get_group_vars(host.get_groups()), host.get_vars())
            self._set_composite_vars(self.get_option("compose"), variables, serial, strict=strict)
            variables = combine_vars(get_group_vars(host.get_groups()), host.get_vars())
            self._add_host_to_composed_groups(
                self.get_option("groups"), variables, serial, strict=strict, fetch_hostvars=False
            )
            self._add_host_to_keyed_groups(
                self.get_option("keyed_groups"), variables, serial, strict=strict, fetch_hostvars=False
            )
