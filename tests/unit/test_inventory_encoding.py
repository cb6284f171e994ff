"""The registry plugin's `encoding` option: exports in GB18030, GBK and UTF-16 as well as UTF-8.

Each test encodes a registry written here as Python text into tmp_path, and runs ansible-inventory on
it with test_inventory's helpers. Every serial, id and address is made up (documentation IP ranges).
"""

import codecs
import json

import pytest
import test_inventory as inv

CHINESE_ROWS = [
    "KST00001,kestrel_k200,eu_west,M001,T0001,{merchant},朝阳门店,192.0.2.1,北京市朝阳区建国路 1 号",
    'HRN00002,heron_h5,us_east,M002,T0002,"茶香书屋, 有限公司",海淀店,192.0.2.2,',
]
ADDRESS_HEADER = inv.HEADER + ",address"
# In GB18030 but not in GBK: the test that it is GB18030 being read, not its GBK subset.
BEYOND_GBK = "𠮷野家快餐"
IN_GBK = "吉野家快餐"

# id: (how the bytes are written: codec, byte order mark; the merchant name of row 1; option 'encoding')
ENCODED = {
    "utf-8-default": ("utf-8", b"", BEYOND_GBK, None),
    "utf-8-bom-default": ("utf-8", codecs.BOM_UTF8, BEYOND_GBK, None),
    "gb18030": ("gb18030", b"", BEYOND_GBK, "gb18030"),
    "gbk": ("gbk", b"", IN_GBK, "gbk"),
    "gbk-read-as-gb18030": ("gbk", b"", IN_GBK, "gb18030"),
    "utf-16-le-bom": ("utf-16-le", codecs.BOM_UTF16_LE, BEYOND_GBK, "utf-16"),
    "utf-16-be-bom": ("utf-16-be", codecs.BOM_UTF16_BE, BEYOND_GBK, "utf-16"),
    # A byte order mark the codec keeps is not read as part of the first column's name.
    "utf-16-le-bom-read-as-utf-16-le": ("utf-16-le", codecs.BOM_UTF16_LE, BEYOND_GBK, "utf-16-le"),
}


def write_encoded(directory, text, codec, bom=b"", name="registry.csv"):
    path = directory / name
    path.write_bytes(bom + text.encode(codec))
    return path


def config_for(directory, registry_name, encoding=None, **options):
    # Group names cannot hold Chinese characters (Ansible turns them into '_'), so no store groups here.
    options.setdefault("keyed_groups", [{"key": "pos_merchant_id", "prefix": "merchant"}])
    if encoding is not None:
        options["encoding"] = encoding
    return inv.write_config(directory, registry_name, **options)


@pytest.mark.parametrize("case", sorted(ENCODED))
def test_an_export_in_its_encoding_keeps_the_chinese_text(tmp_path, case):
    codec, bom, merchant, encoding = ENCODED[case]
    rows = [row.format(merchant=merchant) for row in CHINESE_ROWS]
    # Spreadsheet tools end lines with CRLF; the csv reader must see them as its own line ends.
    write_encoded(tmp_path, "\r\n".join([ADDRESS_HEADER, *rows]) + "\r\n", codec, bom)
    data = inv.inventory_list(config_for(tmp_path, "registry.csv", encoding))
    hostvars = data["_meta"]["hostvars"]

    assert set(hostvars) == {"KST00001", "HRN00002"}
    assert hostvars["KST00001"]["pos_merchant_name"] == merchant
    assert hostvars["KST00001"]["pos_store"] == "朝阳门店"
    assert hostvars["KST00001"]["pos_registry_address"] == "北京市朝阳区建国路 1 号"
    assert hostvars["HRN00002"]["pos_merchant_name"] == "茶香书屋, 有限公司"
    assert hostvars["HRN00002"]["pos_store"] == "海淀店"
    assert hostvars["HRN00002"]["pos_registry_address"] == ""
    assert inv.hosts_of(data, "merchant_M002") == {"HRN00002"}


def test_a_json_export_in_utf_16(tmp_path):
    terminals = [{"serial": "PTR00003", "model": "petrel_p9", "region": "eu_central", "merchant_id": "M003",
                  "terminal_id": "T0003", "merchant_name": "老北京炸酱面", "store": "王府井店", "ip": "192.0.2.3"}]
    write_encoded(tmp_path, json.dumps({"terminals": terminals}, ensure_ascii=False), "utf-16-le",
                  codecs.BOM_UTF16_LE, name="registry.json")
    host = inv.inventory_list(config_for(tmp_path, "registry.json", "utf-16"))["_meta"]["hostvars"]["PTR00003"]

    assert host["pos_merchant_name"] == "老北京炸酱面"
    assert host["pos_store"] == "王府井店"


def test_a_gbk_export_without_the_option_names_the_place_and_the_option(tmp_path):
    # Enough ASCII rows before the first Chinese one that its offset is past the first 8 KiB a text
    # stream decodes at a time: the offset and line must be the file's, not the chunk's.
    ascii_rows = [f"KST{n:05d},kestrel_k200,eu_west,M001,T{n:04d},Juniper Bakery,M001-S01,198.51.100.{n}"
                  for n in range(1, 201)]
    text = "\n".join([inv.HEADER, *ascii_rows, "HRN09999,heron_h5,us_east,M002,T9999,茶香书屋,海淀店,192.0.2.9"])
    registry = write_encoded(tmp_path, text + "\n", "gbk")
    config = config_for(tmp_path, "registry.csv")
    offset = registry.read_bytes().index("茶".encode("gbk"))
    assert offset > 8192
    proc = inv.run_inventory(config, "--list")

    assert proc.returncode != 0
    assert f"{registry}:202: the registry file is not UTF-8 (the default encoding) text" in proc.stderr
    assert f"at byte offset {offset}" in proc.stderr
    assert f"Set option 'encoding' in {config} to the export's encoding" in proc.stderr
    assert "gb18030" in proc.stderr and "gbk" in proc.stderr and "utf-16" in proc.stderr
    assert proc.stdout == ""

    # The advice is right: the same file loads with the option set.
    hostvars = inv.inventory_list(config_for(tmp_path, "registry.csv", "gbk"))["_meta"]["hostvars"]
    assert hostvars["HRN09999"]["pos_merchant_name"] == "茶香书屋"


def test_a_utf_16_export_without_the_option_is_recognised_by_its_byte_order_mark(tmp_path):
    text = "\n".join([inv.HEADER, "KST00001,kestrel_k200,eu_west,M001,T0001,茶香书屋,海淀店,192.0.2.1"])
    registry = write_encoded(tmp_path, text, "utf-16-le", codecs.BOM_UTF16_LE)
    proc = inv.run_inventory(config_for(tmp_path, "registry.csv"), "--list")

    assert proc.returncode != 0
    assert f"{registry}:1: the registry file is not UTF-8 (the default encoding) text" in proc.stderr
    assert "at byte offset 0" in proc.stderr
    assert "option 'encoding'" in proc.stderr
    assert "to the export's encoding: utf-16, as the file starts with a UTF-16 byte order mark" in proc.stderr


def test_the_offset_counts_a_utf_8_byte_order_mark(tmp_path):
    # A Windows-1252 name after a UTF-8 byte order mark: the offset is the file's, mark included.
    registry = tmp_path / "registry.csv"
    registry.write_bytes(codecs.BOM_UTF8 + f"{inv.HEADER}\nKST00001,kestrel_k200,eu_west,M001,T0001,Caf".encode()
                         + "é,S1,192.0.2.1\n".encode("cp1252"))
    proc = inv.run_inventory(config_for(tmp_path, "registry.csv"), "--list")

    assert proc.returncode != 0
    offset = registry.read_bytes().index(b"\xe9")
    assert f"{registry}:2: the registry file is not UTF-8 (the default encoding) text: invalid continuation " \
        f"byte at byte offset {offset} (byte(s) e9)" in proc.stderr


def test_a_file_that_is_not_text_in_the_named_encoding_fails(tmp_path):
    # GBK text cut in the middle of a character: the last byte starts one that never ends.
    registry = tmp_path / "registry.csv"
    registry.write_bytes(f"{inv.HEADER}\nKST00001,kestrel_k200,eu_west,M001,T0001,".encode("gbk") + b"\xb2")
    proc = inv.run_inventory(config_for(tmp_path, "registry.csv", "gbk"), "--list")

    assert proc.returncode != 0
    assert f"{registry}:2: the registry file is not gbk text: incomplete multibyte sequence" in proc.stderr
    assert "option 'encoding'" in proc.stderr


@pytest.mark.parametrize("encoding", ["gb-18030-ish", "base64"], ids=["unknown", "not-a-text-encoding"])
def test_an_unknown_encoding_fails_before_anything_is_read(tmp_path, encoding):
    # The registry does not exist: the option is checked first, so its error is the one given.
    config = config_for(tmp_path, "missing.csv", encoding)
    proc = inv.run_inventory(config, "--list")

    assert proc.returncode != 0
    assert f"option 'encoding' in {config}: '{encoding}' is not a text encoding Python knows" in proc.stderr
    assert "gb18030, gbk or utf-16" in proc.stderr
    assert "not found" not in proc.stderr
