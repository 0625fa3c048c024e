"""Times commit -> refresh event received by a bus subscriber (the config server's relay).

    python3 commit_to_event.py SERVER_URL REPO_DIR ROUNDS [webhook]

Each round commits a change to foo.yml in REPO_DIR (the git command line) and waits for
the RefreshRemoteApplicationEvent on GET SERVER_URL/bus/events. With `webhook`, the round
also POSTs a GitHub push payload to SERVER_URL/monitor right after the commit (for remotes
the server cannot watch). Prints one JSON line with the times in milliseconds.
"""
import json
import subprocess
import sys
import threading
import time
import urllib.request

url, repo, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
webhook = len(sys.argv) > 4 and sys.argv[4] == "webhook"
events = []
ready = threading.Event()
lock = threading.Condition()


def listen():
    with urllib.request.urlopen(url + "/bus/events", timeout=60) as stream:
        ready.set()
        for raw in stream:
            line = raw.decode().strip()
            if line.startswith("data:") and "RefreshRemoteApplicationEvent" in line:
                with lock:
                    events.append(time.perf_counter())
                    lock.notify_all()


threading.Thread(target=listen, daemon=True).start()
ready.wait(10)
time.sleep(0.5)
times = []
env = {"GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@example.invalid",
       "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@example.invalid", "PATH": "/usr/bin:/bin:/usr/local/bin"}
for n in range(rounds):
    with open(f"{repo}/foo.yml", "w") as f:
        f.write(f"round: {n}\n")
    with lock:
        seen = len(events)
    started = time.perf_counter()
    subprocess.run(["git", "commit", "-qam", f"round {n}"], cwd=repo, env=env, check=True)
    if webhook:
        body = json.dumps({"commits": [{"added": [], "modified": ["foo.yml"], "removed": []}]}).encode()
        request = urllib.request.Request(url + "/monitor", data=body, method="POST",
                                         headers={"Content-Type": "application/json", "X-Github-Event": "push"})
        urllib.request.urlopen(request, timeout=10).read()
    with lock:
        if not lock.wait_for(lambda: len(events) > seen, timeout=10):
            sys.exit(f"round {n}: no event within 10 s")
        times.append((events[seen] - started) * 1000)
    time.sleep(0.3)
times.sort()
print(json.dumps({"rounds": rounds, "p50_ms": round(times[len(times) // 2], 2),
                  "p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))], 2),
                  "max_ms": round(times[-1], 2), "webhook": webhook}))
