#!/usr/bin/env python3
"""tapwire's multi-host lab: a small network of Linux network namespaces on one bridge, running
the real binaries, with failures injected while traffic flows.

Hosts (one namespace each, MTU 1500, offloads off, all on the bridge of a `switch` namespace):
  prod-a, prod-b      an HTTP service (tapwire-lab-server) and a tapwire-listener capturing it;
                      the listeners find the replayers through one name, `replayers.lab`, with
                      two A records (/etc/netns/<host>/hosts), which they re-resolve
  replay-a, replay-b  the central tier: one tapwire-replayer each, both fanning out to both
                      staging hosts
  stage-a, stage-b    an HTTP server that records every request id (tapwire-lab-server)
  client              tapwire-lab-client, numbered requests to both production hosts
The namespace this script runs in joins the bridge too (10.214.0.1), to read metrics.

Steps, while traffic flows: cut replay-a's link (its bridge port down) until every listener has
moved off it, bring it back until they return; then kill -9 replay-b until they have moved,
restart it until they return. Then the traffic stops, the listeners drain, and the accounting is
printed, ending with one line `LAB_RESULT {json}`; the exit status is 0 only if the run passed.

Run as root:  deploy/lab/lab.py [--bin-dir target/release] (or `make lab`)
Everything is torn down at exit, on Ctrl-C and SIGTERM; a previous crashed run's leftovers with
the same --name are removed first (`deploy/lab/lab.py --cleanup` only cleans up).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SUBNET = "10.214.0"
REPLAYER_NAME = "replayers.lab"
GRPC_PORT = 7070
METRICS_PORT = 9090


@dataclass
class Host:
    key: str  # short, used in interface names
    role: str
    ip: str


HOSTS = [
    Host("pa", "prod-a", f"{SUBNET}.11"),
    Host("pb", "prod-b", f"{SUBNET}.12"),
    Host("ra", "replay-a", f"{SUBNET}.21"),
    Host("rb", "replay-b", f"{SUBNET}.22"),
    Host("sa", "stage-a", f"{SUBNET}.31"),
    Host("sb", "stage-b", f"{SUBNET}.32"),
    Host("cl", "client", f"{SUBNET}.41"),
]
BY_ROLE = {host.role: host for host in HOSTS}
ROLE_OF_IP = {host.ip: host.role for host in HOSTS}
CONTROL_IP = f"{SUBNET}.1"


class LabError(Exception):
    """A step that did not happen in time, or a command that failed: ends the run, loudly."""


def log(message: str) -> None:
    print(f"[lab {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(*args: str, check: bool = True) -> str:
    result = subprocess.run(args, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise LabError(f"{' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def wait_for(what: str, condition, timeout: float, interval: float = 0.1):
    """Polls `condition` until it returns something truthy; fails naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


class Network:
    """The namespaces, the bridge and the veth pairs; `remove` is idempotent."""

    def __init__(self, name: str):
        self.name = name
        self.switch = f"{name}-switch"
        self.control_port = f"{name}-ctl"  # in this namespace; at most 15 characters

    def namespace(self, host: Host) -> str:
        return f"{self.name}-{host.role}"

    def port(self, host: Host) -> str:
        """The host's bridge port, in the switch namespace."""
        return f"port-{host.key}"

    def namespaces(self) -> list[str]:
        """Every namespace the lab creates, and nothing else: cleanup touches only these."""
        return [self.switch] + [self.namespace(host) for host in HOSTS]

    def hosts_files(self) -> list[Path]:
        """The /etc/netns files giving the listeners' hosts the replayers' name."""
        return [Path("/etc/netns") / self.namespace(BY_ROLE[role]) / "hosts"
                for role in LISTENERS]

    def remove(self) -> None:
        existing = {line.split(" ")[0]
                    for line in run("ip", "netns", "list", check=False).split("\n")}
        for namespace in self.namespaces():
            if namespace not in existing:
                continue
            for pid in run("ip", "netns", "pids", namespace, check=False).split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            run("ip", "netns", "del", namespace, check=False)
        run("ip", "link", "del", self.control_port, check=False)
        for hosts in self.hosts_files():
            hosts.unlink(missing_ok=True)
            try:
                hosts.parent.rmdir()
            except OSError:
                pass  # absent, or holding something that is not ours

    def create(self) -> None:
        in_use = run("ip", "-o", "addr", "show", "to", f"{SUBNET}.0/24").strip()
        if in_use:
            raise LabError(f"{SUBNET}.0/24 is already in use on this host: {in_use}")
        run("ip", "netns", "add", self.switch)
        sw = ("ip", "-n", self.switch)
        run(*sw, "link", "add", "br0", "type", "bridge")
        run(*sw, "link", "set", "br0", "mtu", "1500", "up")
        run(*sw, "link", "set", "lo", "up")
        for host in HOSTS:
            namespace = self.namespace(host)
            run("ip", "netns", "add", namespace)
            run("ip", "link", "add", "eth0", "netns", namespace, "type", "veth",
                "peer", "name", self.port(host), "netns", self.switch)
            self._attach(self.port(host))
            inside = ("ip", "-n", namespace)
            run(*inside, "addr", "add", f"{host.ip}/24", "dev", "eth0")
            run(*inside, "link", "set", "eth0", "mtu", "1500", "up")
            run(*inside, "link", "set", "lo", "up")
            # Without offloads every send is cut into MTU-sized segments, as on a real wire.
            run("ip", "netns", "exec", namespace,
                "ethtool", "-K", "eth0", "tso", "off", "gso", "off", "gro", "off")
        run("ip", "link", "add", self.control_port, "type", "veth",
            "peer", "name", "port-ctl", "netns", self.switch)
        self._attach("port-ctl")
        run("ip", "addr", "add", f"{CONTROL_IP}/24", "dev", self.control_port)
        run("ip", "link", "set", self.control_port, "mtu", "1500", "up")
        # One name, two A records: the listeners shard over both and re-resolve it.
        for hosts in self.hosts_files():
            hosts.parent.mkdir(parents=True, exist_ok=True)
            hosts.write_text(
                "127.0.0.1 localhost\n"
                f"{BY_ROLE['replay-a'].ip} {REPLAYER_NAME}\n"
                f"{BY_ROLE['replay-b'].ip} {REPLAYER_NAME}\n")

    def _attach(self, port: str) -> None:
        sw = ("ip", "-n", self.switch)
        run(*sw, "link", "set", port, "master", "br0")
        run(*sw, "link", "set", port, "mtu", "1500", "up")
        run("ip", "netns", "exec", self.switch,
            "ethtool", "-K", port, "tso", "off", "gso", "off", "gro", "off")

    def set_link(self, host: Host, up: bool) -> None:
        run("ip", "-n", self.switch, "link", "set", self.port(host), "up" if up else "down")


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Lab:
    network: Network
    bin_dir: Path
    work: Path
    procs: dict[str, Proc] = field(default_factory=dict)

    def spawn(self, name: str, host: Host, binary: str, *args: str) -> Proc:
        path = self.bin_dir / binary
        if not path.is_file():
            raise LabError(f"{path} is missing: build it first (cargo build --bins)")
        log_path = self.work / f"{name}.log"
        with open(log_path, "ab") as out:
            # `ip netns exec` becomes the program, so signals reach tapwire itself.
            popen = subprocess.Popen(
                ["ip", "netns", "exec", self.network.namespace(host), str(path), *args],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                # Ctrl-C reaches this script alone, which then tears everything down in order.
                start_new_session=True,
                env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "info")})
        proc = Proc(name, popen, log_path)
        self.procs[name] = proc
        return proc

    def stop(self, name: str, sig=signal.SIGTERM, timeout: float = 30) -> None:
        proc = self.procs[name]
        if proc.alive():
            proc.popen.send_signal(sig)
        try:
            proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise LabError(f"{name} did not exit within {timeout:.0f}s of {sig.name}")

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.alive():
                proc.popen.kill()
                proc.popen.wait()

    def listening_addr(self, name: str) -> str:
        """The address a lab server printed, once it accepts connections."""
        def printed():
            proc = self.procs[name]
            if not proc.alive():
                raise LabError(f"{name} exited: {proc.text()[-2000:]}")
            for line in proc.text().splitlines():
                if line.startswith("listening on "):
                    return line.removeprefix("listening on ").strip()
            return None
        return wait_for(f"{name} to listen", printed, 30)

    def wait_for_line(self, name: str, needle: str) -> None:
        proc = self.procs[name]

        def logged():
            if not proc.alive():
                raise LabError(f"{name} exited: {proc.text()[-2000:]}")
            return needle in proc.text()
        wait_for(f"{name} to log '{needle}'", logged, 30)

    def start_replayer(self, role: str, staging: list[str]) -> None:
        host = BY_ROLE[role]
        args = ["--grpc-listen", f"{host.ip}:{GRPC_PORT}",
                "--metrics-listen", f"{host.ip}:{METRICS_PORT}"]
        for addr in staging:
            args += ["--target", f"http://{addr}"]
        proc = self.spawn(role, host, "tapwire-replayer", *args)

        def serving():
            if not proc.alive():
                raise LabError(f"{role} exited: {proc.text()[-2000:]}")
            return connects(host.ip, GRPC_PORT) and connects(host.ip, METRICS_PORT)
        wait_for(f"{role} to serve gRPC and metrics", serving, 30)


def connects(ip: str, port: int) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=0.5):
            return True
    except OSError:
        return False


def scrape(ip: str) -> dict[str, float]:
    """One Prometheus text page as {'name{labels}': value}; empty if it cannot be read."""
    try:
        with urllib.request.urlopen(f"http://{ip}:{METRICS_PORT}/metrics", timeout=2) as page:
            text = page.read().decode()
    except OSError:
        return {}
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def total(samples: dict[str, float], name: str, label: str = "") -> int:
    """Sum of a metric's samples (whose labels contain `label`, if given)."""
    return int(sum(value for key, value in samples.items()
                   if (key == name or key.startswith(name + "{")) and label in key))


LISTENERS = ("prod-a", "prod-b")
REPLAYERS = ("replay-a", "replay-b")
STAGING = ("stage-a", "stage-b")


class Counters:
    """Replayer counters summed over restarts: a killed replayer's last scrape is kept."""

    def __init__(self):
        self.finished = {role: {} for role in REPLAYERS}
        self.last = {role: {} for role in REPLAYERS}

    def poll(self, role: str) -> dict[str, float]:
        samples = scrape(BY_ROLE[role].ip)
        if samples:
            self.last[role] = samples
        return samples

    def restarted(self, role: str) -> None:
        for key, value in self.last[role].items():
            self.finished[role][key] = self.finished[role].get(key, 0) + value
        self.last[role] = {}

    def total(self, role: str, name: str) -> int:
        return total(self.finished[role], name) + total(self.last[role], name)


ALL_UP = {replayer: 1 for replayer in REPLAYERS}


def links_up(role: str) -> dict[str, int]:
    """Which replayers a listener's links stream to, by replayer role."""
    samples = scrape(BY_ROLE[role].ip)
    return {replayer: total(samples, "tapwire_listener_replayer_up", f"{BY_ROLE[replayer].ip}:")
            for replayer in REPLAYERS}


def wait_links(expected: dict[str, int], timeout: float) -> float:
    """Waits until every listener's links are as `expected`; returns the seconds it took."""
    started = time.monotonic()
    wait_for(f"every listener to have links {expected}",
             lambda: all(links_up(role) == expected for role in LISTENERS), timeout)
    return time.monotonic() - started


def wait_received_more(counters: Counters, role: str, more: int, timeout: float) -> None:
    """Waits until replayer `role` has received `more` records beyond now: traffic reaches it."""
    counters.poll(role)
    start = counters.total(role, "tapwire_replayer_records_received_total")

    def grown():
        counters.poll(role)
        return counters.total(role, "tapwire_replayer_records_received_total") >= start + more
    wait_for(f"{role} to receive {more} more records", grown, timeout)


def read_report(path: Path) -> dict:
    report = json.loads(path.read_text())
    return {"served": report["served"], "ids": {int(k): v for k, v in report["ids"].items()},
            "repeated_at": {int(k): v for k, v in report["repeated_at"].items()}}


def listeners_resent() -> int:
    return sum(total(scrape(BY_ROLE[role].ip), "tapwire_listener_records_resent_total")
               for role in LISTENERS)


def begin_step(steps: list, name: str) -> dict:
    """A step runs from now to the next one's start (the last, to the end of the run)."""
    step = {"step": name, "started_at": time.time(), "resent_at_start": listeners_resent()}
    steps.append(step)
    return step


def start_fleet(lab: Lab) -> dict[str, str]:
    """Starts every server, replayer and listener; returns the servers' addresses by role once
    each listener captures and links to both replayers."""
    servers = {}
    for role in STAGING + LISTENERS:
        lab.spawn(f"{role}-server", BY_ROLE[role], "tapwire-lab-server",
                  "--ip", BY_ROLE[role].ip, "--report", str(lab.work / f"{role}.json"))
    for role in STAGING + LISTENERS:
        servers[role] = lab.listening_addr(f"{role}-server")
    staging = [servers[role] for role in STAGING]
    for role in REPLAYERS:
        lab.start_replayer(role, staging)
    for role in LISTENERS:
        port = servers[role].rsplit(":", 1)[1]
        lab.spawn(f"{role}-listener", BY_ROLE[role], "tapwire-listener",
                  "--interface", "eth0", "--port", port,
                  "--replayer", f"http://{REPLAYER_NAME}:{GRPC_PORT}",
                  "--listener-id", role,
                  "--metrics-listen", f"{BY_ROLE[role].ip}:{METRICS_PORT}")
    for role in LISTENERS:
        lab.wait_for_line(f"{role}-listener", "capture started")
    wait_links(ALL_UP, 30)
    log("every listener links to both replayers through " + REPLAYER_NAME)
    return servers


def cut_and_restore_link(lab: Lab, counters: Counters, steps: list) -> None:
    """replay-a's bridge port down until every listener has moved off it, then up until they
    are all back and it takes traffic again."""
    step = begin_step(steps, "cut replay-a's link")
    lab.network.set_link(BY_ROLE["replay-a"], up=False)
    moved = wait_links({"replay-a": 0, "replay-b": 1}, 60)
    log(f"replay-a's link cut: every listener moved off it after {moved:.1f}s")
    wait_received_more(counters, "replay-b", 50, 30)
    step["restored_after_s"] = round(time.time() - step["started_at"], 2)
    lab.network.set_link(BY_ROLE["replay-a"], up=True)
    back = wait_links(ALL_UP, 60)
    log(f"replay-a's link back: every listener returned after {back:.1f}s")
    step.update(moved_after_s=round(moved, 2), returned_after_s=round(back, 2))
    wait_received_more(counters, "replay-a", 50, 30)


def kill_and_restart(lab: Lab, counters: Counters, steps: list, staging: list[str]) -> None:
    """replay-b killed (SIGKILL) until every listener has moved off it, then restarted until
    they are all back and it takes traffic again."""
    counters.poll("replay-b")
    step = begin_step(steps, "kill -9 and restart replay-b")
    lab.stop("replay-b", signal.SIGKILL)
    moved = wait_links({"replay-a": 1, "replay-b": 0}, 60)
    log(f"replay-b killed (SIGKILL): every listener moved off it after {moved:.1f}s")
    wait_received_more(counters, "replay-a", 50, 30)
    counters.restarted("replay-b")
    step["restarted_after_s"] = round(time.time() - step["started_at"], 2)
    lab.start_replayer("replay-b", staging)
    back = wait_links(ALL_UP, 60)
    log(f"replay-b restarted: every listener returned after {back:.1f}s")
    step.update(moved_after_s=round(moved, 2), returned_after_s=round(back, 2))
    wait_received_more(counters, "replay-b", 50, 30)


def wait_drained() -> dict[str, dict[str, float]]:
    """Waits until no listener holds anything unacknowledged (a replayer acknowledges only once
    both staging hosts have answered) and their captured counts have stopped moving; returns
    their last metrics pages."""
    previous = None

    def settled():
        nonlocal previous
        pages = {role: scrape(BY_ROLE[role].ip) for role in LISTENERS}
        if not all(pages.values()) or any(
                total(page, "tapwire_listener_records_buffered") for page in pages.values()):
            return None
        captured = [total(pages[role], "tapwire_listener_requests_captured_total")
                    for role in LISTENERS]
        settled_now, previous = captured == previous, captured
        return pages if settled_now else None
    return wait_for("the listeners to drain", settled, 60, interval=0.5)


def run_lab(lab: Lab, args) -> dict:
    log(f"building the network ({len(HOSTS)} hosts on one bridge, {SUBNET}.0/24, MTU 1500)")
    lab.network.create()
    servers = start_fleet(lab)
    staging = [servers[role] for role in STAGING]

    counters = Counters()
    steps = []
    begin_step(steps, "steady traffic")
    client = lab.spawn("client", BY_ROLE["client"], "tapwire-lab-client",
                       "--addr", servers["prod-a"], "--addr", servers["prod-b"],
                       "--requests", str(args.max_requests), "--rate", str(args.rate))
    log(f"client: {args.rate} requests/s to each production host (at most {args.max_requests} each)")
    for role in REPLAYERS:
        wait_received_more(counters, role, 50, 30)
    if args.failures:
        cut_and_restore_link(lab, counters, steps)
        kill_and_restart(lab, counters, steps, staging)
    if not client.alive():
        raise LabError("the client finished before the failure steps did: raise --max-requests")
    lab.stop("client")
    client_lines = [line for line in client.text().splitlines() if line.startswith("addr=")]
    log("client stopped: " + "; ".join(client_lines))

    listener_pages = wait_drained()
    for role in REPLAYERS:
        counters.poll(role)
    for role in LISTENERS:
        lab.stop(f"{role}-listener")
    for role in REPLAYERS:
        lab.stop(role)
    reports = {}
    for role in STAGING + LISTENERS:
        lab.stop(f"{role}-server")
        reports[role] = read_report(lab.work / f"{role}.json")
    return account(listener_pages, counters, reports, steps)


def account(listener_pages, counters: Counters, reports, steps) -> dict:
    served = {}
    for role in LISTENERS:
        served.update(reports[role]["ids"])
    resent = sum(total(listener_pages[role], "tapwire_listener_records_resent_total")
                 for role in LISTENERS)
    result = {"production": {}, "listeners": {}, "replayers": {}, "staging": {}, "steps": steps}
    for role in LISTENERS:
        page = listener_pages[role]
        result["production"][role] = {"served": reports[role]["served"],
                                      "distinct_ids": len(reports[role]["ids"])}
        result["listeners"][role] = {
            "captured": total(page, "tapwire_listener_requests_captured_total"),
            "sent": total(page, "tapwire_listener_records_sent_total"),
            "dropped": total(page, "tapwire_listener_records_dropped_total"),
            "resent": total(page, "tapwire_listener_records_resent_total"),
            "rerouted": total(page, "tapwire_listener_records_rerouted_total"),
            "pcap_dropped": total(page, "tapwire_listener_pcap_dropped_packets"),
        }
    for role in REPLAYERS:
        result["replayers"][role] = {
            "received": counters.total(role, "tapwire_replayer_records_received_total"),
            "duplicates_dropped": counters.total(role, "tapwire_replayer_records_duplicate_total"),
        }
    for index, step in enumerate(steps):
        following = steps[index + 1]["resent_at_start"] if index + 1 < len(steps) else resent
        step["resent"] = following - step.pop("resent_at_start")
        step["extra_copies"] = {}
    passed = bool(served)
    for role in STAGING:
        # Each copy after the first belongs to the step it arrived in.
        for step in steps:
            step["extra_copies"][role] = 0
        for sequence, copies in sorted(reports[role]["repeated_at"].items()):
            copies.sort()
            for arrived, replayer in copies[1:]:
                owner = [step for step in steps if step["started_at"] <= arrived][-1:] or steps[:1]
                owner[0]["extra_copies"][role] += 1
                examples = owner[0].setdefault("second_copies", [])
                if len(examples) < 10:
                    examples.append(
                        {"staging": role, "id": sequence,
                         "first_from": ROLE_OF_IP.get(copies[0][1], copies[0][1]),
                         "first_after_s": round(copies[0][0] - owner[0]["started_at"], 3),
                         "second_from": ROLE_OF_IP.get(replayer, replayer),
                         "second_after_s": round(arrived - owner[0]["started_at"], 3)})
        ids = reports[role]["ids"]
        missing = sorted(set(served) - set(ids))
        unexpected = sorted(set(ids) - set(served))
        extra_copies = sum(copies - 1 for copies in ids.values() if copies > 1)
        result["staging"][role] = {
            "received": reports[role]["served"],
            "distinct_ids": len(ids),
            "missing": len(missing),
            "missing_ids": missing[:20],
            "unexpected": len(unexpected),
            "extra_copies": extra_copies,
            "duplicated_ids": sorted(i for i, c in ids.items() if c > 1)[:20],
        }
        # tapwire's promise: nothing lost; a request reaches a target twice only if a listener
        # sent it again (its batch unacknowledged when a replayer died or its link was cut).
        # Steady traffic resends nothing, so it must be exactly once. A later step's copies
        # are checked against all resends, not the step's own: a second copy may arrive in a
        # later step than the resend that allows it (see README, "What passes").
        passed &= (not missing and not unexpected and extra_copies <= resent
                   and steps[0]["extra_copies"][role] == 0)
    result["served"] = len(served)
    result["resent"] = resent
    result["exactly_once"] = all(result["staging"][r]["missing"] == 0
                                 and result["staging"][r]["extra_copies"] == 0
                                 and result["staging"][r]["unexpected"] == 0 for r in STAGING)
    result["passed"] = passed
    return result


def print_accounting(result: dict) -> None:
    print("\nproduction (served by the HTTP service)")
    for role, row in result["production"].items():
        print(f"  {role:9} served {row['served']:6}  distinct ids {row['distinct_ids']:6}")
    print("listeners (from their metrics)")
    for role, row in result["listeners"].items():
        print(f"  {role:9} captured {row['captured']:6}  sent {row['sent']:6}  "
              f"dropped {row['dropped']:4}  resent {row['resent']:4}  "
              f"rerouted {row['rerouted']:5}  pcap dropped {row['pcap_dropped']}")
    print("replayers (from their metrics, summed over restarts)")
    for role, row in result["replayers"].items():
        print(f"  {role:9} received {row['received']:6}  "
              f"duplicates dropped {row['duplicates_dropped']}")
    print("staging (recorded by the server, per request id)")
    for role, row in result["staging"].items():
        print(f"  {role:9} received {row['received']:6}  distinct {row['distinct_ids']:6}  "
              f"missing {row['missing']}  unexpected {row['unexpected']}  "
              f"extra copies {row['extra_copies']}")
    print("steps (resent by the listeners meanwhile, second copies by when they arrived)")
    for step in result["steps"]:
        copies = "  ".join(f"{role} {n}" for role, n in step["extra_copies"].items())
        moved = (f"  moved after {step['moved_after_s']}s, back after {step['returned_after_s']}s"
                 if "moved_after_s" in step else "")
        print(f"  {step['step']:30} resent {step['resent']:4}  extra copies: {copies}{moved}")
    verdict = ("every request reached both staging hosts exactly once"
               if result["exactly_once"] else
               f"nothing missing; second copies within the {result['resent']} resent"
               if result["passed"] else "FAILED: requests missing, unexpected or over-copied")
    print(f"\n{result['served']} requests served by production: {verdict}\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bin-dir", type=Path, default=REPO / "target" / "release",
                        help="where the tapwire binaries are (default: target/release)")
    parser.add_argument("--name", default="twlab",
                        help="prefix of every namespace and interface (default: twlab)")
    parser.add_argument("--rate", type=int, default=100,
                        help="client requests per second to each production host")
    parser.add_argument("--max-requests", type=int, default=20000,
                        help="most requests to each production host")
    parser.add_argument("--no-failures", dest="failures", action="store_false",
                        help="skip the link cut and the kill")
    parser.add_argument("--work-dir", type=Path,
                        help="logs and reports: a new directory (default: a fresh one in /tmp)")
    parser.add_argument("--cleanup", action="store_true", help="only remove leftovers, then exit")
    args = parser.parse_args()
    if len(args.name) > 8 or not args.name.isalnum():
        parser.error("--name: at most 8 letters or digits (interface names are short)")
    if os.geteuid() != 0:
        print("lab: needs root (network namespaces, live capture)", file=sys.stderr)
        return 2
    binaries = ("tapwire-listener", "tapwire-replayer", "tapwire-lab-server", "tapwire-lab-client")
    missing = [name for name in binaries if not (args.bin_dir / name).is_file()]
    if missing and not args.cleanup:
        print(f"lab: {', '.join(missing)} not in {args.bin_dir}: build them first "
              "(cargo build --bins, or --release)", file=sys.stderr)
        return 2
    # One lab of a name at a time: a second run would tear down the first one's network.
    lock = open(f"/run/tapwire-lab-{args.name}.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"lab: a lab named {args.name} is running; wait for it or pick another --name",
              file=sys.stderr)
        return 2
    network = Network(args.name)
    network.remove()
    if args.cleanup:
        return 0
    if args.work_dir:
        # Created here, so the lab never writes, as root, into a directory someone else made.
        work = args.work_dir
        try:
            work.mkdir(parents=True, mode=0o700)
        except FileExistsError:
            print(f"lab: --work-dir {work} exists; give a new directory", file=sys.stderr)
            return 2
    else:
        work = Path(tempfile.mkdtemp(prefix=f"tapwire-lab-{args.name}-"))
    lab = Lab(network, args.bin_dir.resolve(), work)

    def interrupted(signum, _frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupted)
    started = time.monotonic()
    result = None
    try:
        result = run_lab(lab, args)
    except LabError as error:
        log(f"FAILED: {error} (logs in {work})")
        # The end of every log, for a run nobody can look at afterwards (CI).
        for path in sorted(work.glob("*.log")):
            tail = path.read_text(errors="replace").splitlines()[-5:]
            print(f"--- {path.name}\n" + "\n".join(tail), flush=True)
    except KeyboardInterrupt:
        log("interrupted")
    finally:
        # A second Ctrl-C must not cut the teardown short and leave namespaces behind.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        lab.stop_all()
        network.remove()
        log("network removed")
    if result is None:
        print("LAB_RESULT " + json.dumps({"passed": False}), flush=True)
        return 1
    result["seconds"] = round(time.monotonic() - started, 1)
    print_accounting(result)
    print("LAB_RESULT " + json.dumps(result), flush=True)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
