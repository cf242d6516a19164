"""New request ids: random, unique, and never the same in two forked workers."""

from __future__ import annotations

import os
import re

from manifold.server.middleware.request_id import new_request_id

_ID = re.compile(r"^req_[0-9a-f]{24}$")


def test_new_ids_are_96_random_bits_and_do_not_repeat() -> None:
    ids = [new_request_id([]) for _ in range(3000)]  # several reads of the pool
    assert all(_ID.match(i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_a_safe_client_id_is_kept_and_an_unsafe_one_replaced() -> None:
    assert new_request_id([(b"x-request-id", b"abc-123")]) == "abc-123"
    assert _ID.match(new_request_id([(b"x-request-id", b"no spaces\r\n")]))


def test_a_forked_worker_does_not_hand_out_its_parents_ids() -> None:
    new_request_id([])  # the pool is read: a child that kept it would go on with the same ids as the parent
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, then out without running the parent's test machinery
        try:
            os.write(write, " ".join(new_request_id([]) for _ in range(5)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split())
    os.waitpid(pid, 0)
    parent = {new_request_id([]) for _ in range(5)}
    assert len(child) == 5
    assert not child & parent
