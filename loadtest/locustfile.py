"""Locust users for the ranking server, sending the same workload as ``python -m loadtest``.

    pip install locust   # optional: not a dependency of slimrank
    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 --headless \
        -u 20 -r 5 -t 60s --workload my_workload.yaml --rate-per-user 0.5

The request bodies come from ``loadtest.workload`` (``--workload FILE`` with the fields of
``Workload``, or the defaults: the synthetic 250-token query and 50 items); they are built
once per Locust process. Failures are named like ``python -m loadtest`` names them
(``http_429:overloaded`` ...).

Note: Locust users are closed loops (each waits for its response before the next request),
so ``users x rate-per-user`` is offered only while the server keeps up; past saturation the
offered rate drops with it and latencies look better than users would see. For open-loop
numbers against an SLO, use ``python -m loadtest run`` / ``sweep``.
"""

from __future__ import annotations

import itertools

import gevent
from locust import HttpUser, constant_throughput, events, task

from loadtest.client import classify
from loadtest.workload import RequestPool, Workload

_state: dict = {}


@events.init_command_line_parser.add_listener
def _(parser) -> None:
    parser.add_argument("--workload", default=None, help="loadtest workload file (JSON/YAML)")
    parser.add_argument("--rate-per-user", type=float, default=1.0, help="requests/s per user")
    parser.add_argument("--sequence-length", type=int, default=10000, help="requests, cycled")


@events.init.add_listener
def _build(environment, **_kw) -> None:
    """The workload's request sequence, built once per process before any user starts
    (bodies pre-serialised, so users spend their time sending)."""
    options = environment.parsed_options
    if options is None:  # imported without a command line (e.g. a library run)
        return
    w = Workload.from_file(options.workload) if options.workload else Workload()
    _state["path"] = w.path
    _state["seq"] = RequestPool(w).sequence(options.sequence_length)
    _state["next"] = itertools.count()
    # building took seconds of blocking CPU: refresh gevent's cached clock, or Locust's
    # --run-time timer (armed next, from that stale clock) fires at once
    gevent.get_hub().loop.update_now()


class RankingUser(HttpUser):
    def wait_time(self):
        return constant_throughput(self.environment.parsed_options.rate_per_user)(self)

    @task
    def score(self) -> None:
        st = _state
        req = st["seq"][next(st["next"]) % len(st["seq"])]
        with self.client.post(
            st["path"],
            data=req.body,
            headers={"content-type": "application/json"},
            name=st["path"],
            catch_response=True,
        ) as r:
            if r.status_code != 200:
                r.failure(classify(r))
            else:
                r.success()
