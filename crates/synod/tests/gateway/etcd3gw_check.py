"""Drives one etcd v3 JSON gateway with Python's etcd3gw client (as
OpenStack uses it) and prints what it saw as one JSON object, with the
values that differ between servers by nature (IDs, hashes, remaining TTLs,
terms) left out. `crates/synod/tests/gateway.rs` runs it against etcd 3.4
and against synod and compares the two printouts.

Usage: etcd3gw_check.py HOST PORT
"""

import json
import sys
import threading

import etcd3gw


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    client = etcd3gw.client(host=host, port=port)
    seen = {}
    seen["put"] = client.put("gw/a", "1")
    seen["create_new"] = client.create("gw/b", "2")
    seen["create_existing"] = client.create("gw/b", "3")
    seen["get"] = client.get("gw/a")
    seen["get_missing"] = client.get("gw/none")
    seen["get_prefix"] = sorted(
        (value.decode(), meta["key"].decode(), meta["version"], meta["create_revision"], meta["mod_revision"])
        for value, meta in client.get_prefix("gw/")
    )
    seen["replace_ok"] = client.replace("gw/a", "1", "10")
    seen["replace_stale"] = client.replace("gw/a", "1", "11")
    seen["after_replace"] = client.get("gw/a")

    lease = client.lease(ttl=30)
    client.put("gw/leased", "v", lease=lease)
    seen["lease_keys"] = sorted(key.decode() for key in lease.keys())
    seen["lease_ttl_positive"] = 0 < lease.ttl() <= 30
    seen["lease_refresh"] = lease.refresh()
    seen["lease_revoke"] = lease.revoke()
    seen["after_revoke"] = client.get("gw/leased")

    lock = client.lock("gw-lock", ttl=30)
    seen["lock_acquire"] = lock.acquire()
    seen["lock_held"] = lock.is_acquired()
    seen["lock_release"] = lock.release()

    events = []
    watched = threading.Event()

    def watch():
        events.append(client.watch_once("gw/watched", timeout=10))
        watched.set()

    thread = threading.Thread(target=watch)
    thread.start()
    # The watch is registered before the put that it must see: etcd3gw's
    # watch_once starts its stream at once; a put a little later lands after it.
    threading.Event().wait(1.0)
    client.put("gw/watched", "seen")
    watched.wait(15)
    thread.join(15)
    seen["watch"] = [
        {"type": event.get("type", "PUT"), "key": event["kv"]["key"], "value": event["kv"]["value"]}
        for event in events
        if event
    ]

    seen["delete"] = client.delete("gw/a")
    seen["delete_missing"] = client.delete("gw/a")
    seen["delete_prefix"] = client.delete_prefix("gw/")
    status = client.status()
    seen["status_fields"] = sorted(status.keys())
    seen["members"] = len(client.members())
    print(json.dumps(seen, sort_keys=True, default=str))


if __name__ == "__main__":
    main()
