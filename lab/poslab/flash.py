"""A terminal's flash: the writable filesystem its overlay keeps everything it changes on.

It has the model's size (storage_mb), so the terminal sees a full flash as a real one would. It is kept
in one of two places:
- memory: a tmpfs. Fast, and the default for the labs the tests and the demo use.
- disk: an ext4 filesystem in an image file under the lab's state directory, on a loop device. An updated
  terminal keeps tens of MB (its backup, the new OS packages and the .debs of the way back); 500 of them in
  tmpfs outgrow a 24 GB machine, on disk they cost only page cache, which the kernel can take back.

`auto` takes memory while the whole fleet's flash fits in half of the machine's available memory, else disk.
Loop devices are host objects: the lab records each one it takes and `poslab down` gives every one back,
removing the device node when the lab created it.
"""

import contextlib
import errno
import fcntl
import json
import os
import time
from pathlib import Path

from .util import log, run

KINDS = ("auto", "memory", "disk")
IMAGE = "flash.img"
RECORD = "flash.loop"  # {"device": "/dev/loopN", "created": bool}
LOOP_CONTROL = "/dev/loop-control"
LOOP_CTL_REMOVE, LOOP_CTL_GET_FREE = 0x4C81, 0x4C82


def choose(kind, sizes_mb):
    """The kind of flash a fleet whose terminals' flash sizes are `sizes_mb` gets for `kind` (one of KINDS)."""
    if kind != "auto":
        return kind
    available_mb = meminfo_kib()["MemAvailable"] // 1024
    chosen = "memory" if sum(sizes_mb) <= available_mb // 2 else "disk"
    log(f"flash: {chosen} ({sum(sizes_mb)} MB for the fleet, {available_mb} MB of memory available; "
        "`poslab up --flash memory|disk` to choose)")
    return chosen


def meminfo_kib():
    """/proc/meminfo as {field: KiB}."""
    fields = {}
    with open("/proc/meminfo", encoding="ascii") as handle:
        for line in handle:
            name, value = line.split(":", 1)
            fields[name] = int(value.split()[0])
    return fields


def mount(tdir, label, size_mb, kind):
    """Mount the flash of the terminal whose directory is `tdir` at tdir/flash, unless it already is."""
    point = tdir / "flash"
    point.mkdir(parents=True, exist_ok=True)
    if os.path.ismount(point):
        return
    if kind == "memory":
        run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=755", label, str(point)])
        return
    image = tdir / IMAGE
    if not image.exists():
        with open(image, "wb") as handle:
            handle.truncate(size_mb * 1024 * 1024)
        # No reserved blocks: the terminal has the whole flash, as with tmpfs. The journal stays, as a
        # power cut in the middle of a write is one of the lab's faults.
        run(["mkfs.ext4", "-q", "-F", "-m", "0", "-i", "16384", "-J", "size=1", "-L", label[:16], "-E", "nodiscard",
             str(image)])
    device, created = _attach(image)
    (tdir / RECORD).write_text(json.dumps({"device": device, "created": created}) + "\n")
    run(["mount", "-t", "ext4", "-o", "noatime", device, str(point)])
    os.chmod(point, 0o755)


def _attach(image):
    """Attach `image` to a free loop device; (device, whether this call created the device)."""
    for _ in range(5):
        before = _loop_indexes()
        fd = os.open(LOOP_CONTROL, os.O_RDWR)
        try:
            index = fcntl.ioctl(fd, LOOP_CTL_GET_FREE)
        finally:
            os.close(fd)
        device = f"/dev/loop{index}"
        # Another program may take the same free device first: then ask again.
        if run(["losetup", device, str(image)], check=False).returncode == 0:
            return device, index not in before
    raise SystemExit(f"poslab: no free loop device for {image}; `losetup -a` shows the ones in use")


def _loop_indexes():
    return {int(name[4:]) for name in os.listdir("/sys/block") if name.startswith("loop") and name[4:].isdigit()}


def backing(device):
    """The file a loop device is attached to, or None."""
    with contextlib.suppress(OSError):
        return (Path("/sys/block") / Path(device).name / "loop" / "backing_file").read_text().strip()
    return None


def release(root):
    """Give back the loop devices of the flash under `root` (the lab's state directory, or one terminal's
    directory), once that flash is unmounted.

    Detaches the devices whose image is under `root` (recorded or not: a killed run may have left one
    without its record) and removes the device nodes the lab created. Returns what could not be given back.
    """
    records = {}
    for record in [*root.glob(RECORD), *root.glob(f"terminals/*/{RECORD}")]:
        with contextlib.suppress(OSError, ValueError):
            entry = json.loads(record.read_text())
            records[entry["device"]] = entry.get("created", False)
    ours = [f"/dev/{name}" for name in os.listdir("/sys/block") if name.startswith("loop")
            and (backing(f"/dev/{name}") or "").startswith(str(root) + "/")]
    for device in ours:
        run(["losetup", "-d", device], check=False)
    left = []
    for device in sorted(set(ours) | set(records)):
        # Detaching is asynchronous: a device is free once its backing file is gone.
        for _ in range(50 if device in ours else 0):
            if not backing(device):
                break
            time.sleep(0.1)
        if device in ours and backing(device):
            left.append(device)
        elif not backing(device) and records.get(device):
            _remove(device, left)
    return left


def _remove(device, left):
    fd = os.open(LOOP_CONTROL, os.O_RDWR)
    try:
        for _ in range(20):
            try:
                fcntl.ioctl(fd, LOOP_CTL_REMOVE, int(device[len("/dev/loop"):]))
                return
            except OSError as error:
                if error.errno in (errno.ENODEV, errno.ENXIO, errno.ENOENT):
                    return  # already gone
                time.sleep(0.1)  # EBUSY: the detach is still under way
        left.append(device)
    finally:
        os.close(fd)
