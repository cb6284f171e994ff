# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""posfleet.fleet.checkin: the ansible-rulebook event source that receives terminals' check-ins.

A thin shell around posfleet.autoupdate's Dispatcher, which owns every decision: this file only serves
HTTP and puts the Dispatcher's events on the rulebook's queue. It is not ansible-rulebook's generic
webhook because that one knows a single shared secret; here every terminal signs with its own key, so a
terminal can speak only for itself (docs/auto-update.md).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

from aiohttp import web

DOCUMENTATION = r"""
---
short_description: Receive posfleet terminals' signed check-ins and start the updates they need.
description:
  - Listens for check-ins (HTTP POST on /checkin) from posfleet's check-in agent on the terminals.
  - Each check-in is verified with the terminal's own key (a per-terminal HMAC key in O(keys_dir)), refused
    when stale or replayed, and answered from the inventory's assigned release (C(posfleet_release)), the
    windows and the check-in store's rules (backoff, held for an operator, one update per terminal).
  - A terminal whose update may start now becomes an event C({"posfleet_update": {serial, release, job_id,
    window?}, "meta": {"hosts": serial}}); at most O(max_running) updates run at once, the others wait in order.
options:
  host:
    description: The address to listen on.
    type: str
    default: 127.0.0.1
  port:
    description: The TCP port to listen on.
    type: int
    default: 5080
  store:
    description: The check-in store (SQLite), shared with the update runs' report callback.
    type: str
    default: /var/lib/posfleet/checkin/store.db
  keys_dir:
    description: The directory of per-terminal keys, C(<serial>.key), that the pos_checkin role provisions.
    type: str
    default: /var/lib/posfleet/checkin/keys
  inventory:
    description: The inventory to read terminals' variables from; unset, ansible.cfg's.
    type: str
  max_running:
    description: Updates started by check-ins that may run at once.
    type: int
    default: 4
  max_failures:
    description: Failed updates in a row after which a terminal waits for an operator.
    type: int
    default: 3
  backoff:
    description: Seconds a terminal waits after its first failed update; doubled after each further one.
    type: int
    default: 300
  job_timeout:
    description: Seconds after which an update that never reported its outcome counts as lost (failed).
    type: int
    default: 3600
  inventory_refresh:
    description: Seconds after which the inventory is read again (a changed assignment, a new terminal).
    type: float
    default: 300
  poll:
    description: Seconds between looks for queued updates whose turn has come.
    type: float
    default: 2
"""

EXAMPLES = r"""
- name: Update terminals that check in behind their assigned release
  hosts: all
  sources:
    - posfleet.fleet.checkin:
        host: 10.231.0.1
        port: 5080
        max_running: 4
"""

logger = logging.getLogger(__name__)


async def main(queue, args):
    """Serve check-ins until the rulebook stops; put an event on `queue` for every update to start."""
    # Imported here, not at the top: posfleet imports ansible-core, which installs its collection finder as
    # a path hook, and ansible-rulebook loads its own event filters (runpy.run_path) after this file and
    # before main(); with the hook in place runpy takes each filter file for a package and fails.
    sys.path.append(str(Path(__file__).resolve().parents[6]))  # the collection's parent: posfleet imports it
    from posfleet import autoupdate  # noqa: PLC0415
    from posfleet import checkin as checkin_store  # noqa: PLC0415

    store = checkin_store.CheckinStore(
        args.get("store", "/var/lib/posfleet/checkin/store.db"), max_running=int(args.get("max_running", 4)),
        max_failures=int(args.get("max_failures", 3)), backoff_s=int(args.get("backoff", 300)),
        job_timeout_s=int(args.get("job_timeout", 3600)))
    fleet = autoupdate.Fleet(args.get("inventory"), refresh_s=float(args.get("inventory_refresh", 300)))
    dispatcher = autoupdate.Dispatcher(store, fleet, args.get("keys_dir", autoupdate.key_dir_default()),
                                       log=logger.info)
    # One decision at a time: the store is shared with other processes, but this dispatcher's caches are not.
    lock = asyncio.Lock()

    async def start_due():
        async with lock:
            events = await asyncio.to_thread(dispatcher.start_jobs)
        for event in events:
            await queue.put(event)

    async def handle(request):
        body = await request.content.read(autoupdate.pos_checkin.MAX_BODY + 1)
        async with lock:
            status, reply = await asyncio.to_thread(
                dispatcher.checkin, body, request.headers.get(autoupdate.pos_checkin.HEADER, ""), request.remote)
        await start_due()
        return web.json_response(reply, status=status)

    app = web.Application(client_max_size=autoupdate.pos_checkin.MAX_BODY + 1)
    app.add_routes([web.post("/checkin", handle)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, args.get("host", "127.0.0.1"), int(args.get("port", 5080)))
    await site.start()
    logger.info("posfleet check-ins: listening on %s:%s", args.get("host", "127.0.0.1"), args.get("port", 5080))
    poll = float(args.get("poll", 2))
    try:
        # Updates end in other processes (their report callback tells the store): look for the next turn.
        while True:
            await asyncio.sleep(poll)
            try:
                await start_due()
            except Exception:  # a failed look is logged and the next one tries again
                logger.exception("posfleet check-ins: could not start the queued updates")
    finally:
        await runner.cleanup()
