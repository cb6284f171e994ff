"""Data packs as a terminal holds them: a directory per version with PACK.json, and a `current` link.

PACK.json is {"name", "version", "files": {relative path: sha256}}; posd refuses a pack whose files
do not match it. The factory packs here are what a terminal leaves the factory with; releases
carry newer ones. The pack format and the content generators live in posfleet.packs, which the
release builder uses too, so that the lab's packs and a release's packs cannot drift apart.
"""

from pathlib import Path

from posfleet.packs import (
    FACTORY_VERSIONS,
    SYNTHETIC_BINS,
    catalog_csv,
    merchant_files,
    pack_contents,
    params_files,
)

__all__ = ["FACTORY_VERSIONS", "SYNTHETIC_BINS", "catalog_csv", "merchant_files", "params_files",
           "write_factory_packs", "write_pack"]


def write_pack(packs_dir, name, version, files, make_current=True):
    """Write one pack version with its PACK.json; optionally point `current` at it."""
    target = Path(packs_dir) / name / version
    target.mkdir(parents=True, exist_ok=True)
    contents = pack_contents(name, version, files)
    manifest = contents.pop("PACK.json")
    for relpath, data in contents.items():
        (target / relpath).write_bytes(data)
    # PACK.json last: a pack whose PACK.json exists has all its files.
    (target / "PACK.json").write_bytes(manifest)
    if make_current:
        link = Path(packs_dir) / name / "current"
        if link.is_symlink():
            link.unlink()
        link.symlink_to(version)
    return target


def write_factory_packs(packs_dir, acquirer_url):
    """The params and catalog packs every terminal of a model leaves the factory with."""
    write_pack(packs_dir, "params", FACTORY_VERSIONS["params"], params_files(FACTORY_VERSIONS["params"],
                                                                              acquirer_url))
    write_pack(packs_dir, "catalog", FACTORY_VERSIONS["catalog"],
               {"catalog.csv": catalog_csv(FACTORY_VERSIONS["catalog"])})
