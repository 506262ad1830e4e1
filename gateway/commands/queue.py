"""`msgw queue list|show|retry|delete`: look at and act on the spool of a (running) gateway.

Works beside a running `msgw serve`: SQLite WAL lets both read, and the runner picks up
`retry` (next attempt set to now) at its next poll: a *received* recipient (not prepared yet,
e.g. its signing key was unavailable) is prepared again, a *prepared* one is sent again (the
same bytes). `list`/`show` print each message's stage and its prepared copies' forms; with
`--json`, the keys `stage`, `copies` and per recipient `stage`, `copy`, `form` are added.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from gateway.commands.common import add_config_option, config_from
from gateway.spool import QueuedMessage, Spool
from gateway.storage import open_queue_store


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("queue", help="inspect and manage the queue")
    qsub = p.add_subparsers(dest="queue_command", required=True)
    lp = qsub.add_parser("list", help="list queued messages")
    add_config_option(lp)
    lp.add_argument("--json", action="store_true", help="one JSON array of messages")
    lp.set_defaults(func=run_list)
    sp = qsub.add_parser("show", help="show one queued message")
    sp.add_argument("id", help="queue id (from msgw queue list)")
    add_config_option(sp)
    sp.add_argument("--json", action="store_true", help="print the message as JSON")
    sp.set_defaults(func=run_show)
    rp = qsub.add_parser("retry", help="retry deferred recipients now (a received one: its preparation)")
    rp.add_argument("id", nargs="?", help="queue id to make due now")
    rp.add_argument("--all", action="store_true", help="make every waiting message due now")
    add_config_option(rp)
    rp.set_defaults(func=run_retry)
    dp = qsub.add_parser("delete", help="delete a queued message (no DSN)")
    dp.add_argument("id", help="queue id to delete (no bounce is sent)")
    add_config_option(dp)
    dp.set_defaults(func=run_delete)


def _spool(args: argparse.Namespace) -> Spool:
    return open_queue_store(config_from(args)).open(recover=False)


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _print_message(msg: QueuedMessage) -> None:
    print(f"{msg.id}  {msg.size:>9} B  received {_when(msg.received)}  from <{msg.sender}>  {msg.stage}"
          f"{'  QUARANTINED' if msg.quarantined else ''}")
    if msg.needs_key:  # a shared queue: only a node whose token holds this key prepares it
        print(f"    needs key {msg.needs_key} (its token is on another node, or on none up now: waiting)")
    forms = {c.id: c.form for c in msg.copies}
    for c in msg.copies:
        print(f"    copy {c.id}: {c.form}, {c.size} B{', mutual TLS only' if c.require_tls else ''}")
    for r in msg.recipients:
        extra = ""
        if r.state.value == "deferred":
            extra = f" next {_when(r.next_attempt)} ({r.attempts} attempts): {r.last_error or ''}"
        elif r.state.value in ("bounced", "delivered"):
            extra = f" {r.last_status or ''} {r.last_error or ''}".rstrip()
        stage = f"copy {r.copy_id} ({forms.get(r.copy_id, '?')})" if r.copy_id is not None else "received"
        print(f"    {r.state.value:<9} <{r.address}> [{stage}]{extra}")


def run_list(args: argparse.Namespace) -> int:
    with _spool(args) as spool:
        messages = spool.list()
        # a shared queue (issue 18) says which node holds which lease; the SQLite spool has none to show
        leases = {m: (owner, left) for m, owner, left in spool.leases() if left != float("inf")}
    if args.json:
        json.dump([{**m.to_json(), **({"lease": {"owner": leases[m.id][0], "seconds_left": round(leases[m.id][1], 1)}}
                                      if m.id in leases else {})} for m in messages], sys.stdout, indent=2)
        print()
        return 0
    for msg in messages:
        _print_message(msg)
        if msg.id in leases:
            owner, left = leases[msg.id]
            print(f"    lease held by {owner} ({left:.0f} s left)" if left > 0 else
                  f"    lease of {owner} expired {-left:.0f} s ago: any node may take it")
    print(f"{len(messages)} message(s) in the queue")
    return 0


def run_show(args: argparse.Namespace) -> int:
    with _spool(args) as spool:
        msg = spool.get(args.id)
    if msg is None:
        print(f"msgw: no queued message {args.id}", file=sys.stderr)
        return 1
    if args.json:
        json.dump(msg.to_json(), sys.stdout, indent=2)
        print()
    else:
        _print_message(msg)
    return 0


def run_retry(args: argparse.Namespace) -> int:
    if not args.all and not args.id:
        print("msgw: give a queue id or --all", file=sys.stderr)
        return 2
    with _spool(args) as spool:
        count = spool.retry(None if args.all else args.id)
    print(f"{count} recipient(s) scheduled for immediate retry")
    return 0 if count or args.all else 1


def run_delete(args: argparse.Namespace) -> int:
    with _spool(args) as spool:
        found = spool.delete(args.id)
    if not found:
        print(f"msgw: no queued message {args.id}", file=sys.stderr)
        return 1
    print(f"deleted {args.id}")
    return 0
