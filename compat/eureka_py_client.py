#!/usr/bin/env python3
"""Drives the real py-eureka-client (0.13.3, PyPI) against an rtalpha registry.

Run by crates/rtalpha/tests/eureka_clients.rs with the venv that compat/setup.sh
builds; it can also be run by hand against any registry:

    .compat/venv/bin/python compat/eureka_py_client.py http://127.0.0.1:8761

App B must already be registered (the test does it over plain HTTP). The script, using
only the client's own API for every Eureka call:

1. registers app A (1 s renewal interval) and prints `REGISTERED <APP> <ID>`; with
   --handshake it then waits for one line on stdin, so the caller can look at the
   registry while A is registered;
2. finds app B through the client's discovery (full fetch and deltas, XML) with the
   expected id, host and port, and resolves it with walk_nodes;
3. checks that heartbeats arrive: the registry's leaseInfo.lastRenewalTimestamp for A
   advances and the heartbeats are answered 200;
4. sets a status override (status_update OUT_OF_SERVICE), checks the registry and the
   client's own discovery see it, then deletes it (delete_status_override) and checks A
   is UP again (Eureka answers the next heartbeat 404 and the client re-registers);
5. stops the client (re-POST with status DOWN, then DELETE) and checks A is gone;
   prints `DEREGISTERED <APP> <ID>` and `OK`.

Any failure exits 1 with `py-client: FAILED: ...` and the HTTP exchanges so far on
stderr. Progress goes to stderr, the protocol lines above to stdout.

Two bugs of py-eureka-client 0.13.3 are fenced off here so that they cannot make the
test flaky (see HeartbeatGuard): stop() does not stop the heartbeat thread once it has
started (its next beat sees the client as not registered and registers it again), and
that thread shares an asyncio.Lock with calls made from the main thread's event loop.
"""

import argparse
import asyncio
import logging
import select
import sys
import threading
import time
import traceback

from py_eureka_client import eureka_basic, eureka_client, http_client
from py_eureka_client import logger as client_logger

APP_A = "appa"
CLIENT_METADATA = {"compat-client": "py-eureka-client"}


class Failure(Exception):
    """A check failed; the message says which and why."""


def log(message):
    print(f"py-client: {message}", file=sys.stderr, flush=True)


def route_client_logs_to_stderr():
    """The library logs to stdout by default; stdout carries this script's protocol."""
    target = logging.getLogger("compat.py_eureka_client")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("py-eureka-client: %(levelname)s %(message)s"))
    target.addHandler(handler)
    target.propagate = False
    client_logger.set_custom_logger(target)


class RecordingHttpClient(http_client.HttpClient):
    """The client's own HTTP client, recording every exchange for the checks and the
    failure report (installed with the library's set_http_client hook)."""

    def __init__(self):
        super().__init__()
        self.lock = threading.Lock()
        self.exchanges = []  # (seq, method, url, status or None, error text)

    def _record(self, method, url, status, error=""):
        with self.lock:
            self.exchanges.append((len(self.exchanges), method, url, status, error))

    async def urlopen(self, request=None, data=None, timeout=None):
        if isinstance(request, http_client.HttpRequest):
            method, url = request.method, request.url
        else:
            method, url = "GET", str(request)
        try:
            response = await super().urlopen(request, data, timeout)
        except http_client.HTTPError as err:
            body = err.read().decode("utf-8", "replace")[:300] if err.fp else ""
            self._record(method, url, err.code, body)
            raise
        except Exception as err:
            self._record(method, url, None, f"{type(err).__name__}: {err}")
            raise
        self._record(method, url, response.raw_response.status_code)
        return response

    def since(self, mark):
        with self.lock:
            return list(self.exchanges[mark:])

    def mark(self):
        with self.lock:
            return len(self.exchanges)

    def dump(self):
        with self.lock:
            for seq, method, url, status, error in self.exchanges:
                extra = f"  {error}" if error else ""
                print(f"  #{seq} {method} {url} -> {status}{extra}", file=sys.stderr)


class HeartbeatGuard:
    """Wraps the client's heartbeat cycle (heartbeat + delta fetch) in a thread lock.

    The main thread holds the lock around its own client calls, so they never run
    concurrently with a cycle (the client shares one asyncio.Lock between both event
    loops), and `stop()` sets a flag under the lock so that no cycle runs after the
    client deregistered (0.13.3's Timer.cancel() cannot stop a running heartbeat loop).
    """

    def __init__(self, client):
        self.lock = threading.Lock()
        self.stopped = False
        original = client._EurekaClient__heartbeat

        async def guarded():
            with self.lock:
                if self.stopped:
                    return
                await original()

        client._EurekaClient__heartbeat = guarded

    def stop(self):
        with self.lock:
            self.stopped = True


def wait_until(what, predicate, timeout):
    """Polls `predicate` until it returns a true value, at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise Failure(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def wait_for_stdin_line(timeout):
    ready, _, _ = select.select([sys.stdin], [], [], timeout)
    if not ready:
        raise Failure(f"no go-ahead on stdin within {timeout}s")
    if not sys.stdin.readline():
        raise Failure("stdin closed before the go-ahead")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("registry", help="the registry's base URL, e.g. http://127.0.0.1:8761")
    parser.add_argument("--port", type=int, default=9001, help="app A's port")
    parser.add_argument("--app-b", default="APPB")
    parser.add_argument("--app-b-id", default="127.0.0.1:appb:9002")
    parser.add_argument("--app-b-host", default="127.0.0.1")
    parser.add_argument("--app-b-port", type=int, default=9002)
    parser.add_argument("--handshake", action="store_true",
                        help="after registering, wait for a line on stdin")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="the longest any single wait may take, in seconds")
    return parser.parse_args()


class Run:
    def __init__(self, args):
        self.args = args
        self.server = args.registry.rstrip("/") + "/eureka/"
        self.app = APP_A.upper()
        self.instance_id = f"127.0.0.1:{APP_A}:{args.port}"
        self.http = RecordingHttpClient()
        http_client.set_http_client(self.http)
        self.errors = []  # (error type, exception) reported through on_error
        self.loop = asyncio.new_event_loop()
        self.client = eureka_client.EurekaClient(
            eureka_server=self.server,
            app_name=APP_A,
            instance_host="127.0.0.1",
            instance_ip="127.0.0.1",
            instance_port=args.port,
            renewal_interval_in_secs=1,
            duration_in_secs=10,
            metadata=dict(CLIENT_METADATA),
            on_error=lambda kind, err: self.errors.append((kind, err)),
        )
        self.guard = HeartbeatGuard(self.client)

    # -- helpers --------------------------------------------------------------------

    def call(self, what, make_coroutine):
        """Runs one client call from the main thread, never during a heartbeat cycle,
        and fails if the client reported an error meanwhile."""
        before = len(self.errors)
        with self.guard.lock:
            self.loop.run_until_complete(make_coroutine())
        self.check_no_errors(what, before)

    def check_no_errors(self, what, since=0):
        new = self.errors[since:]
        if new:
            raise Failure(f"{what}: the client reported errors: "
                          + "; ".join(f"{kind}: {err!r}" for kind, err in new))

    def registry_instance(self):
        """A as the registry has it, read with the client's own GET apps/{APP}/{id}."""
        return self.loop.run_until_complete(
            eureka_basic.get_app_instance(self.server, self.app, self.instance_id))

    def registry_has_no_instance(self):
        try:
            self.registry_instance()
        except http_client.HTTPError as err:
            return err.code == 404
        return False

    def discovered(self, app, instance_id):
        applications = self.client.applications
        if applications is None:
            return None
        return applications.get_application(app).get_instance(instance_id)

    def expect_exchange(self, since, method, path_end, status):
        for _, m, url, s, _ in self.http.since(since):
            if m == method and url.split("?")[0].endswith(path_end):
                if s != status:
                    raise Failure(f"{method} ...{path_end} was answered {s}, expected {status}")
                return
        raise Failure(f"the client sent no {method} ...{path_end}")

    def heartbeats_ok(self, since):
        prefix = f"apps/{self.app}/"
        return [e for e in self.http.since(since)
                if e[1] == "PUT" and prefix in e[2] and "/status" not in e[2].split("?")[0]
                and e[3] == 200]

    # -- the steps ----------------------------------------------------------------

    def register(self):
        log(f"registering {self.app} at {self.server}")
        mark = self.http.mark()
        self.call("start()", self.client.start)
        self.expect_exchange(mark, "POST", f"apps/{self.app}", 204)
        self.expect_exchange(mark, "GET", "apps/", 200)
        if self.client.applications is None:
            raise Failure("the first full fetch (GET apps/) gave the client no registry")
        instance = self.registry_instance()
        if instance.status != "UP":
            raise Failure(f"registered {self.app} has status {instance.status}, expected UP")
        if instance.metadata.get("compat-client") != CLIENT_METADATA["compat-client"]:
            raise Failure(f"registered {self.app} has metadata {instance.metadata}")
        print(f"REGISTERED {self.app} {self.instance_id}", flush=True)
        if self.args.handshake:
            wait_for_stdin_line(self.args.timeout * 3)

    def discover(self):
        a = self.args
        log(f"discovering {a.app_b}")

        def found():
            applications = self.client.applications
            return applications and applications.get_application(a.app_b).up_instances

        instances = wait_until(f"{a.app_b} in the client's discovery", found, a.timeout)
        if len(instances) != 1:
            raise Failure(f"{a.app_b} has {len(instances)} UP instances, expected 1: "
                          + ", ".join(i.instanceId for i in instances))
        b = instances[0]
        got = (b.instanceId, b.hostName, b.ipAddr, b.port.port, b.port.enabled)
        want = (a.app_b_id, a.app_b_host, a.app_b_host, a.app_b_port, True)
        if got != want:
            raise Failure(f"{a.app_b} discovered as (id, host, ip, port, enabled) {got}, expected {want}")
        with self.guard.lock:
            url = self.loop.run_until_complete(self.client.walk_nodes(
                a.app_b, "/ping", prefer_ip=True, walker=lambda u: u))
        if url != f"http://{a.app_b_host}:{a.app_b_port}/ping":
            raise Failure(f"walk_nodes resolved {a.app_b} to {url}")
        own = wait_until(f"{self.app} itself in the client's discovery",
                         lambda: self.discovered(self.app, self.instance_id), a.timeout)
        if own.status != "UP" or own.port.port != a.port:
            raise Failure(f"{self.app} discovered with status {own.status}, port {own.port.port}")

    def heartbeats(self):
        log("checking heartbeats")
        mark = self.http.mark()
        first = self.registry_instance()
        lease = first.leaseInfo
        if (lease.renewalIntervalInSecs, lease.durationInSecs) != (1, 10):
            raise Failure("the registry holds leaseInfo (renewal, duration) "
                          f"{(lease.renewalIntervalInSecs, lease.durationInSecs)}, expected (1, 10)")
        wait_until("two heartbeats answered 200", lambda: len(self.heartbeats_ok(mark)) >= 2,
                   self.args.timeout)

        def renewed():
            now = self.registry_instance()
            return now if now.leaseInfo.lastRenewalTimestamp > lease.lastRenewalTimestamp else None

        later = wait_until("lastRenewalTimestamp to advance", renewed, self.args.timeout)
        log(f"lastRenewalTimestamp {lease.lastRenewalTimestamp} -> {later.leaseInfo.lastRenewalTimestamp}")
        self.check_no_errors("heartbeats")

    def status_override(self):
        log("status_update(OUT_OF_SERVICE)")
        mark = self.http.mark()
        self.call("status_update", lambda: self.client.status_update("OUT_OF_SERVICE"))
        self.expect_exchange(mark, "PUT", f"{self.app}/{self.instance_id.replace(':', '%3A')}/status", 200)
        instance = self.registry_instance()
        if (instance.status, instance.overriddenstatus) != ("OUT_OF_SERVICE", "OUT_OF_SERVICE"):
            raise Failure("after status_update the registry has (status, overriddenstatus) "
                          f"{(instance.status, instance.overriddenstatus)}, expected OUT_OF_SERVICE twice")
        wait_until("the client's discovery (delta) to show OUT_OF_SERVICE",
                   lambda: getattr(self.discovered(self.app, self.instance_id), "status", None)
                   == "OUT_OF_SERVICE", self.args.timeout)
        # The override holds across heartbeats.
        beat_mark = self.http.mark()
        wait_until("a heartbeat under the override", lambda: self.heartbeats_ok(beat_mark),
                   self.args.timeout)
        if self.registry_instance().status != "OUT_OF_SERVICE":
            raise Failure("a heartbeat undid the OUT_OF_SERVICE override")
        self.check_no_errors("heartbeats under the override")

        log("delete_status_override()")
        mark = self.http.mark()
        errors_before = len(self.errors)
        with self.guard.lock:
            self.loop.run_until_complete(self.client.delete_status_override())
        self.expect_exchange(mark, "DELETE", f"{self.app}/{self.instance_id.replace(':', '%3A')}/status", 200)

        def back_up():
            try:
                i = self.registry_instance()
            except http_client.HTTPError:
                return None
            return i if (i.status, i.overriddenstatus) == ("UP", "UNKNOWN") else None

        wait_until("the registry to show A UP with no override", back_up, self.args.timeout)
        # Eureka: with no `value`, the deleted override leaves UNKNOWN, so the next
        # heartbeat is answered 404 and the client registers again (it reports that
        # through on_error). Nothing else may fail.
        kinds = {kind for kind, _ in self.errors[errors_before:]}
        failed = [e for e in self.http.since(mark) if e[3] is None or e[3] >= 300]
        unexpected = [e for e in failed if not (e[1] == "PUT" and e[3] == 404 and "/status" not in e[2])]
        if unexpected or kinds - {eureka_client.ERROR_STATUS_UPDATE}:
            raise Failure("after delete_status_override: unexpected failures "
                          f"{[(m, u, s) for _, m, u, s, _ in unexpected]}, error kinds {sorted(kinds)}")
        log(f"after delete_status_override: {len(failed)} heartbeat(s) answered 404, "
            "then the client registered again")
        del self.errors[errors_before:]
        wait_until("the client's discovery to show A UP again",
                   lambda: getattr(self.discovered(self.app, self.instance_id), "status", None) == "UP",
                   self.args.timeout)

    def stop(self):
        log("stop()")
        self.guard.stop()
        mark = self.http.mark()
        before = len(self.errors)
        self.loop.run_until_complete(self.client.stop())
        self.check_no_errors("stop()", before)
        sent = [(m, url.split("?")[0].rsplit("/", 2)[-2:], s) for _, m, url, s, _ in self.http.since(mark)]
        expected = [("POST", ["apps", self.app], 204),
                    ("DELETE", [self.app, self.instance_id.replace(":", "%3A")], 200)]
        if sent != expected:
            raise Failure(f"stop() sent {sent}, expected {expected}")
        if not self.registry_has_no_instance():
            raise Failure(f"{self.app} is still registered after stop()")
        print(f"DEREGISTERED {self.app} {self.instance_id}", flush=True)


def main():
    args = parse_args()
    route_client_logs_to_stderr()
    run = Run(args)
    try:
        run.register()
        run.discover()
        run.heartbeats()
        run.status_override()
        run.stop()
    except Exception as failure:  # a Failure, or the client or a check blew up
        if isinstance(failure, Failure):
            log(f"FAILED: {failure}")
        else:
            log(f"FAILED: {type(failure).__name__}: {failure}")
            traceback.print_exc()
        log("HTTP exchanges:")
        run.http.dump()
        return 1
    print("OK", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
