#!/usr/bin/env python3
"""Benchmarks of herald's Redis bridge with loadgen (issue 11, second sitting): starts its own redis-server,
herald nodes (release build) and, for `nchan`, nginx+Nchan instances on free loopback ports, runs loadgen, samples
each process's CPU (and the bridge threads') from /proc over the middle of the measured window, stops everything
it started by PID, and prints one JSON line per run.

Usage (from the repository root, after `cargo build --release -p herald -p loadgen`):
  scripts/cluster-loadgen.py ceiling RUNS     redis-benchmark -c 1 -P 64 PUBLISH (no subscriber, redis-cli, herald)
  scripts/cluster-loadgen.py bridge RUNS      1 publisher on node A, 1 subscriber on node B, one Redis
  scripts/cluster-loadgen.py scaling RUNS     1 node / 2 nodes on 1 Redis / 2 nodes on 2 Redis, same subscribers
  scripts/cluster-loadgen.py nchan RUNS       2 herald nodes vs 2 nginx+Nchan on one Redis: subs on one, pubs on other
Environment: TLS=1 (bridge: rediss:// to Redis's TLS port), PIPELINE (ceiling: -P, default 64), DURATION (default 10), WARMUP (2), WINDOW (loadgen --window), SUBS, TOPICS, PUBS, SIZE override the
scenario's loadgen settings."""
import json, os, shutil, signal, socket, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(ROOT, "target", "release")
NCHAN = os.environ.get("NCHAN_START", "/work/shared/peers/nginx-nchan/start")
TICK = os.sysconf("SC_CLK_TCK")
started = []
dirs = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def start(cmd, env=None, **kw):
    p = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, **kw)
    started.append(p)
    return p


def stop_all():
    while started:
        p = started.pop()
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    while dirs:
        shutil.rmtree(dirs.pop(), ignore_errors=True)


def ticks(stat_path):
    try:
        with open(stat_path) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime
    except OSError:
        return 0


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except OSError:
                pass
    return out


def process_cpu(pid, tree=False):
    total = ticks(f"/proc/{pid}/stat")
    if tree:
        total += sum(ticks(f"/proc/{c}/stat") for c in children(pid))
    return total


def thread_cpu(pid, name):
    total = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/comm") as f:
                if f.read().strip() == name:
                    total += ticks(f"/proc/{pid}/task/{t}/stat")
        except OSError:
            pass
    return total


def redis(port=None):
    port = port or free_port()
    d = tempfile.mkdtemp(prefix="herald-bench-redis-")
    dirs.append(d)
    p = start(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", d, "--loglevel", "warning"])
    wait_port(port)
    return p, port


def tls_redis():
    """A Redis with a TLS port (certificate for 127.0.0.1 from a CA made now with openssl): (process, plain
    port, TLS port, CA file)."""
    d = tempfile.mkdtemp(prefix="herald-bench-redis-")
    dirs.append(d)
    f = lambda n: os.path.join(d, n)
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)
    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
        "-subj", "/CN=bench CA", "-keyout", f("ca.key"), "-out", f("ca.pem"))
    run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=redis",
        "-keyout", f("redis.key"), "-out", f("redis.csr"))
    with open(f("ext"), "w") as e:
        e.write("subjectAltName=IP:127.0.0.1\n")
    run("openssl", "x509", "-req", "-in", f("redis.csr"), "-CA", f("ca.pem"), "-CAkey", f("ca.key"),
        "-CAcreateserial", "-days", "1", "-extfile", f("ext"), "-out", f("redis.pem"))
    port, tls_port = free_port(), free_port()
    p = start(["redis-server", "--port", str(port), "--tls-port", str(tls_port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", d, "--loglevel", "warning", "--tls-cert-file", f("redis.pem"),
               "--tls-key-file", f("redis.key"), "--tls-ca-cert-file", f("ca.pem"), "--tls-auth-clients", "no"])
    wait_port(port)
    return p, port, tls_port, f("ca.pem")


def herald(urls, workers=1, extra=()):
    port = free_port()
    cmd = [os.path.join(REL, "herald"), "--listen", f"127.0.0.1:{port}", "--workers", str(workers), "--no-pin"]
    if urls:
        cmd += ["--cluster-redis-urls", ",".join(urls), "--cluster-max-pending", "1000000"]
    p = start(cmd + list(extra))
    wait_port(port)
    if urls:
        end = time.time() + 10
        while b'"state":"ok"' not in http_get(port, "/healthz"):
            if time.time() > end:
                raise SystemExit("cluster links never came up")
            time.sleep(0.05)
    return p, port


def nchan(redis_port, workers=1):
    port = free_port()
    env = {"NCHAN_REDIS_URL": f"redis://127.0.0.1:{redis_port}", "NCHAN_REDIS_STORAGE_MODE": "nostore",
           "NCHAN_WORKERS": str(workers)}
    p = start([NCHAN, str(port)], env=env)
    wait_port(port)
    time.sleep(0.5)
    return p, port


def http_get(port, path):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            buf = b""
            while True:
                c = s.recv(65536)
                if not c:
                    return buf
                buf += c
    except OSError:
        return b""


def loadgen(sub_urls, pub_urls, probes, subs, topics, pubs, size, window):
    """Runs loadgen fanout; `probes` maps a name to a function giving CPU ticks. Returns (report, cpu seconds
    per name over the sampled part of the window, sampled seconds)."""
    duration = float(os.environ.get("DURATION", "10"))
    warmup = float(os.environ.get("WARMUP", "2"))
    out = tempfile.mktemp(prefix="herald-bench-", suffix=".json")
    cmd = [os.path.join(REL, "loadgen"), "fanout", "--url", ",".join(sub_urls), "--pub-url", ",".join(pub_urls),
           "--subs", str(subs), "--topics", str(topics), "--pubs", str(pubs), "--size", str(size),
           "--duration", f"{duration}s", "--warmup", f"{warmup}s", "--threads", "1", "--no-pin",
           "--quiet", "--json", out]
    if window:
        cmd += ["--window", str(window)]
    lg = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    probes = dict(probes, loadgen=lambda: process_cpu(lg.pid))
    # Connections and the probe take well under a second here: sample from 0.5 s into the window to 0.5 s
    # before its end.
    time.sleep(warmup + 0.5 + (subs + pubs) / 10000)
    t0, c0 = time.time(), {k: f() for k, f in probes.items()}
    time.sleep(max(1.0, duration - 1.0))
    t1, c1 = time.time(), {k: f() for k, f in probes.items()}
    _, err = lg.communicate()
    try:
        with open(out) as f:
            report = json.load(f)
        os.unlink(out)
    except (OSError, ValueError):
        raise SystemExit(f"loadgen failed: {err.decode(errors='replace')[-2000:]}")
    return report, {k: (c1[k] - c0[k]) / TICK for k in probes}, t1 - t0


def emit(name, report, cpu, secs, extra=None):
    d, t, lat, c = report["delivery"], report["throughput"], report["latency"], report["counters"]
    delivered = t["delivered_msgs_per_s"]
    line = {"scenario": name, **(extra or {}),
            "published_per_s": round(t["published_msgs_per_s"]), "delivered_per_s": round(delivered),
            "lost": d["lost"], "duplicates": c["duplicates"], "reordered": c["reordered"],
            "gap_notices": c["gap_notices"], "p50_ms": round(lat["p50_ns"] / 1e6, 2),
            "p99_ms": round(lat["p99_ns"] / 1e6, 2), "sampled_s": round(secs, 2),
            "cpu_pct": {k: round(100 * v / secs, 1) for k, v in cpu.items()},
            # CPU per delivered message, every process counted (ns), and per process
            "ns_per_delivery": {k: round(1e9 * v / secs / delivered) for k, v in cpu.items() if delivered}}
    print(json.dumps(line), flush=True)


def ws_subscribe(port, path):
    """A WebSocket upgrade to `path` on herald at `port`; the socket is returned unread (herald's bridge reads
    Redis whatever its subscribers do)."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(4096)
    return s


def ceiling(runs):
    """redis-benchmark's PUBLISH with no subscriber, with redis-cli as the subscriber (it cannot keep up: Redis
    may drop it at its output-buffer limit, reported), and with a herald node's bridge as the subscriber (the
    channel has a local /sub subscriber there; the benchmark's payloads are not envelopes, so the bridge reads
    and drops them)."""
    payload = "x" * 82  # a 64-byte payload in herald's 18-byte envelope
    for _ in range(runs):
        for with_sub in os.environ.get("CEILING_SUBS", "none,redis-cli,herald").split(","):
            rp, port = redis()
            if with_sub == "redis-cli":
                start(["redis-cli", "-p", str(port), "--raw", "subscribe", "herald:rb"])
                time.sleep(0.3)
            elif with_sub == "herald":
                _, hport = herald([f"redis://127.0.0.1:{port}"])
                held = ws_subscribe(hport, "/sub/rb")
                end = time.time() + 5
                while numsub(port) != ["1"] and time.time() < end:
                    time.sleep(0.05)
            c0, t0 = process_cpu(rp.pid), time.time()
            res = subprocess.run(["redis-benchmark", "-p", str(port), "-c", "1", "-P", os.environ.get("PIPELINE", "64"),
                                  "-n", "2000000", "-q",
                                  "PUBLISH", "herald:rb", payload], capture_output=True, text=True)
            c1, t1 = process_cpu(rp.pid), time.time()
            left = numsub(port)
            print(json.dumps({"scenario": "ceiling", "pipeline": os.environ.get("PIPELINE", "64"),
                              "subscriber": with_sub, "subscriber_still_there": left, "loadavg": os.getloadavg()[0],
                              "redis_benchmark": res.stdout.strip().splitlines()[-1:],
                              "redis_cpu_s": round((c1 - c0) / TICK, 2), "wall_s": round(t1 - t0, 2)}), flush=True)
            stop_all()


def numsub(port):
    r = subprocess.run(["redis-cli", "-p", str(port), "pubsub", "numsub", "herald:rb"], capture_output=True,
                       text=True)
    return r.stdout.split()[-1:] if r.stdout else None


def env_int(k, default):
    return int(os.environ.get(k, default))


def herald_probes(name, p):
    return {f"{name}": lambda: process_cpu(p.pid), f"{name}.bridge": lambda: thread_cpu(p.pid, "herald-cluster")}


def bridge(runs):
    subs, topics, pubs = env_int("SUBS", 1), env_int("TOPICS", 1), env_int("PUBS", 1)
    size, window = env_int("SIZE", 64), env_int("WINDOW", 4096)
    tls = os.environ.get("TLS") == "1"
    for _ in range(runs):
        if tls:
            rp, _, tport, ca = tls_redis()
            url, extra = f"rediss://127.0.0.1:{tport}", ["--cluster-tls-ca-file", ca]
        else:
            (rp, rport), extra = redis(), []
            url = f"redis://127.0.0.1:{rport}"
        a, aport = herald([url], extra=["--cluster-node-id", "A", *extra])
        b, bport = herald([url], extra=["--cluster-node-id", "B", *extra])
        probes = {"redis": lambda: process_cpu(rp.pid), **herald_probes("A", a), **herald_probes("B", b)}
        report, cpu, secs = loadgen([f"ws://127.0.0.1:{bport}"], [f"ws://127.0.0.1:{aport}"], probes, subs,
                                    topics, pubs, size, window)
        emit("bridge", report, cpu, secs, {"tls": tls, "window": window, "loadavg": os.getloadavg()[0]})
        stop_all()


def scaling(runs):
    subs, topics, pubs = env_int("SUBS", 1000), env_int("TOPICS", 10), env_int("PUBS", 10)
    size, window = env_int("SIZE", 64), env_int("WINDOW", 200)
    # Interleaved (one run of each setup, RUNS times), so a change in the machine's load hits every setup.
    for _ in range(runs):
        for setup in ("1 node", "2 nodes, 1 Redis", "2 nodes, 2 Redis"):
            probes = {}
            if setup == "1 node":
                n, port = herald([], workers=2)
                probes["node"] = lambda n=n: process_cpu(n.pid)
                sub_urls = pub_urls = [f"ws://127.0.0.1:{port}"]
            else:
                instances = [redis() for _ in range(1 if setup == "2 nodes, 1 Redis" else 2)]
                urls = [f"redis://127.0.0.1:{rport}" for _, rport in instances]
                for i, (rp, _) in enumerate(instances):
                    probes[f"redis{i}"] = lambda rp=rp: process_cpu(rp.pid)
                nodes = [herald(urls) for _ in range(2)]
                for i, (p, _) in enumerate(nodes):
                    probes.update(herald_probes(f"node{i}", p))
                # Subscribers and publishers dealt over both nodes: half of each message's subscribers are
                # on the other node.
                sub_urls = pub_urls = [f"ws://127.0.0.1:{port}" for _, port in nodes]
            report, cpu, secs = loadgen(sub_urls, pub_urls, probes, subs, topics, pubs, size, window)
            emit("scaling", report, cpu, secs, {"setup": setup, "window": window, "loadavg": os.getloadavg()[0]})
            stop_all()


def versus_nchan(runs):
    subs, topics, pubs = env_int("SUBS", 100), env_int("TOPICS", 1), env_int("PUBS", 1)
    size, window = env_int("SIZE", 64), env_int("WINDOW", 32)
    for server in ("herald", "nchan"):
        for _ in range(runs):
            rp, rport = redis()
            probes = {"redis": lambda: process_cpu(rp.pid)}
            if server == "herald":
                (a, aport), (b, bport) = herald([f"redis://127.0.0.1:{rport}"]), herald([f"redis://127.0.0.1:{rport}"])
                probes.update(herald_probes("subs-node", a))
                probes.update(herald_probes("pubs-node", b))
            else:
                (a, aport), (b, bport) = nchan(rport), nchan(rport)
                probes["subs-node"] = lambda: process_cpu(a.pid, tree=True)
                probes["pubs-node"] = lambda: process_cpu(b.pid, tree=True)
            report, cpu, secs = loadgen([f"ws://127.0.0.1:{aport}"], [f"ws://127.0.0.1:{bport}"], probes, subs,
                                        topics, pubs, size, window)
            emit("nchan", report, cpu, secs, {"server": server, "window": window, "loadavg": os.getloadavg()[0]})
            stop_all()


def main():
    scenario, runs = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3
    try:
        {"ceiling": ceiling, "bridge": bridge, "scaling": scaling, "nchan": versus_nchan}[scenario](runs)
    finally:
        stop_all()


main()
