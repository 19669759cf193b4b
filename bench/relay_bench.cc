// Cross-node pod-to-pod benchmark of the in-pod capture and relay (docs/capture.md): a client pod
// of node 1 to a server pod of node 0, direct (the server pod unmeshed), through shunt's relay
// (the server pod meshed, the agent with --capture: TPROXY in the pod's namespace, an upstream as
// the client, bytes spliced in the kernel), and through HAProxy and nginx placed where shunt is:
// in the server pod's namespace, the inbound connection TPROXY'd to them and their upstream made
// as the client's IP, one thread (process) each as shunt's relay. One server pod per path, so one
// path's rules never touch another's. Measured in the same run, rounds interleaved, medians:
// bulk throughput (testpeer, iperf3), 1 KiB request/response latency (p50, p99), HTTP/1.1
// keep-alive requests per second (wrk against an nginx origin: a port shunt passes opaque, one
// it reads request by request), HTTP/2 requests per second (h2load, h2c, read by shunt stream by
// stream), the CPU and memory at a fixed 1000 req/s and with 10,000 idle connections (shunt and
// HAProxy),
// the ratios against direct and the latency each proxy adds, and issue 9's targets. Not a test:
// it asserts nothing and is run by hand (README).
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "bench/bench_util.h"
#include "common/status_macros.h"
#include "tests/e2e/e2e_util.h"
#include "tests/testbed/testbed.h"

ABSL_FLAG(int, seconds, 3, "Duration of each bulk throughput, iperf3 and wrk run.");
ABSL_FLAG(int, rounds, 5, "Interleaved rounds per path; the median is reported.");
ABSL_FLAG(int, pingpong_count, 20000, "Request/response exchanges per latency run.");
ABSL_FLAG(bool, iperf3, true, "Also measure bulk throughput with iperf3 (if installed).");
ABSL_FLAG(bool, wrk, true, "Also measure HTTP/1.1 keep-alive req/s with wrk (if installed).");
ABSL_FLAG(int, wrk_connections, 16, "wrk's keep-alive connections (one wrk thread).");
ABSL_FLAG(bool, h2load, true, "Also measure HTTP/2 req/s with h2load (if installed).");
ABSL_FLAG(int, fixed_rps_seconds, 10, "Duration of the fixed 1000 req/s run (CPU, RSS); 0: off.");
ABSL_FLAG(int, threads, 1,
          "Threads of each proxy: shunt's --proxy-loops, HAProxy's nbthread, nginx's "
          "worker_processes (the load generators and servers are the same either way).");
ABSL_FLAG(bool, paths, true,
          "Measure the four paths side by side (bulk, latency, HTTP through the TCP relays); "
          "false: only the fixed-rate, idle and L7 like-for-like sections.");
ABSL_FLAG(int, idle_connections, 10000, "Idle connections held for the memory figure; 0: off.");

namespace {

using shunt::testbed::Pod;
using shunt::testbed::ProcessPtr;
using shunt::testbed::Testbed;

using shunt::bench::Client;
using shunt::bench::Median;

constexpr int kSinkPort = 9100, kEchoPort = 9101, kIperfPort = 5201, kHttpPort = 8080;
// The origin's ports that shunt reads as HTTP (an L7 rule there): HTTP/1.1 and h2c.
constexpr int kHttpL7Port = 8081, kH2Port = 8082;
constexpr int kIdlePort = 9102;  // the idle connections' server
// The peers' TPROXY target, the port shunt's listener has (--capture-port).
constexpr int kPeerPort = 15008;
constexpr char kPeerTable[] = "shunt_bench_peer";
constexpr int kPeerRouteTable = 1442;  // not the agent's 1441 and 0x5a1 (other pods, but still)
constexpr char kPeerMark[] = "0x5b1";
constexpr auto kCmdTimeout = std::chrono::seconds(20);

// j[key] as a number; 0 when j is no object (a failed client's {}).
double Num(const nlohmann::json& j, const char* key) {
  return j.is_object() ? j.value(key, 0.0) : 0;
}

// Runs argv in the pod; an error carrying its output when it fails.
absl::StatusOr<shunt::testbed::Output> RunIn(Testbed& bed, const Pod& pod,
                                             const std::vector<std::string>& argv,
                                             std::chrono::milliseconds timeout = kCmdTimeout) {
  ASSIGN_OR_RETURN(shunt::testbed::Output out, bed.Run(pod, argv, timeout));
  if (out.exit_code != 0) {
    return absl::InternalError(
        absl::StrCat(absl::StrJoin(argv, " "), ": exit ", out.exit_code, ": ", out.err, out.out));
  }
  return out;
}

absl::Status WriteFile(const std::string& path, const std::string& text) {
  std::ofstream f(path);
  f << text;
  f.close();
  return f ? absl::OkStatus() : absl::InternalError(absl::StrCat("cannot write ", path));
}

// Waits (10 s at most) until something listens on TCP `port` in the pod.
absl::Status WaitListening(Testbed& bed, const Pod& pod, int port) {
  for (int i = 0; i < 200; ++i) {
    auto out = bed.Run(pod, {"ss", "-Hltn", absl::StrCat("sport = :", port)}, kCmdTimeout);
    if (out.ok() && out->exit_code == 0 && !out->out.empty()) return absl::OkStatus();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return absl::DeadlineExceededError(absl::StrCat("nothing listens on ", port, " in ", pod.name));
}

// WaitListening, the process's stderr in the error.
absl::Status Listening(Testbed& bed, const Pod& pod, int port, shunt::testbed::Process& p) {
  absl::Status s = WaitListening(bed, pod, port);
  if (s.ok()) return s;
  return absl::Status(s.code(), absl::StrCat(s.message(), ": ", p.Stderr(), p.Stdout()));
}

// What shunt's capture installs in a pod (agent/capture/pod_capture.cc), for a proxy of the bench
// in that pod's namespace: new inbound TCP connections to the pod's address TPROXY'd to
// kPeerPort (their destination is local: no mark is needed to deliver them), and the server's
// replies to the proxy's upstream (addressed to the client's IP) routed back to the local stack
// instead of out of the pod. The agent finds its upstreams by their SO_MARK; HAProxy's and
// nginx's carry none, so an upstream is known by its first packet's source, not an address of
// the pod (the client's, a transparent socket's), and its connection is marked. (A rule by
// source port would also catch the proxy's own replies to the client: its accepted socket has
// the server's port.) The rules live only in the pod's namespace (removed with it at teardown,
// also after a crash); the destructor removes them before.
class PeerCapture {
 public:
  static absl::StatusOr<std::unique_ptr<PeerCapture>> Install(Testbed& bed, const Pod& pod) {
    std::unique_ptr<PeerCapture> c(new PeerCapture(bed, pod));
    RETURN_IF_ERROR(RunIn(bed, pod, c->Route("add")).status());
    c->route_ = true;
    RETURN_IF_ERROR(RunIn(bed, pod, c->Rule("add")).status());
    c->rule_ = true;
    const std::string script = absl::StrCat(
        "table inet ", kPeerTable, " {\n", "  chain prerouting {\n",
        "    type filter hook prerouting priority mangle; policy accept;\n",
        "    iifname \"lo\" return\n",  // the proxy's own upstream connections
        "    meta l4proto != tcp return\n", "    tcp dport ", kPeerPort, " return\n",
        // The counter runs only when tproxy found a transparent listener (it breaks the rule
        // otherwise): what the proxy really got.
        "    meta nfproto ipv4 tcp flags & (fin | syn | rst | ack) == syn fib daddr type local "
        "tproxy ip to :",
        kPeerPort, " counter accept\n", "  }\n", "  chain output {\n",
        "    type route hook output priority mangle; policy accept;\n",
        "    meta l4proto tcp ct state new ip saddr != { ", pod.ipv4,
        ", 127.0.0.0/8 } ct mark set ", kPeerMark, "\n", "    ct direction reply ct mark ",
        kPeerMark, " meta mark set ", kPeerMark, "\n", "  }\n", "}\n");
    const std::string path = absl::StrCat(bed.work_dir(), "/", pod.name, "-peer.nft");
    RETURN_IF_ERROR(WriteFile(path, script));
    RETURN_IF_ERROR(RunIn(bed, pod, {"nft", "-f", path}).status());
    c->table_ = true;
    return c;
  }
  ~PeerCapture() {
    if (table_) RunIn(bed_, pod_, {"nft", "delete", "table", "inet", kPeerTable}).IgnoreError();
    if (rule_) RunIn(bed_, pod_, Rule("del")).IgnoreError();
    if (route_) RunIn(bed_, pod_, Route("del")).IgnoreError();
  }
  PeerCapture(const PeerCapture&) = delete;
  PeerCapture& operator=(const PeerCapture&) = delete;

  // Connections TPROXY handed to the proxy's listener so far.
  double Captured() {
    auto out = RunIn(bed_, pod_, {"nft", "list", "chain", "inet", kPeerTable, "prerouting"});
    std::smatch m;
    if (!out.ok() || !std::regex_search(out->out, m, std::regex("counter packets ([0-9]+)"))) {
      return -1;
    }
    return std::stod(m[1]);
  }

 private:
  PeerCapture(Testbed& bed, const Pod& pod) : bed_(bed), pod_(pod) {}
  static std::vector<std::string> Rule(const char* verb) {
    return {"ip",
            "rule",
            verb,
            "fwmark",
            kPeerMark,
            "lookup",
            absl::StrCat(kPeerRouteTable),
            "priority",
            absl::StrCat(kPeerRouteTable)};
  }
  static std::vector<std::string> Route(const char* verb) {
    return {"ip",    "route",     verb,
            "local", "0.0.0.0/0", "dev",
            "lo",    "table",     absl::StrCat(kPeerRouteTable)};
  }
  Testbed& bed_;
  const Pod& pod_;
  bool route_ = false, rule_ = false, table_ = false;
};

// HAProxy in TCP mode, --threads threads, defaults otherwise (no splice): a transparent listener
// (IP_TRANSPARENT), the upstream to the connection's original destination from the client's IP.
absl::StatusOr<ProcessPtr> StartHaproxy(Testbed& bed, const Pod& pod) {
  const std::string cfg = absl::StrCat(bed.work_dir(), "/", pod.name, "-haproxy.cfg");
  RETURN_IF_ERROR(WriteFile(
      cfg, absl::StrCat("global\n  nbthread ", absl::GetFlag(FLAGS_threads), "\n  maxconn 9000\n",
                        "defaults\n  mode tcp\n",
                        "  timeout connect 10s\n  timeout client 10m\n  timeout server 10m\n",
                        "listen relay\n  bind 0.0.0.0:", kPeerPort, " transparent\n",
                        "  source 0.0.0.0 usesrc clientip\n",
                        "  server original_destination 0.0.0.0\n")));  // same address and port
  ASSIGN_OR_RETURN(ProcessPtr p, bed.Spawn(pod, {"haproxy", "-db", "-f", cfg}));
  RETURN_IF_ERROR(Listening(bed, pod, kPeerPort, *p));
  return p;
}

// HAProxy as an HTTP proxy, where shunt reads HTTP (L7 like for like): `mode http`, the same
// transparent listener and upstream as the client; an HTTP/2 client's preface makes the
// frontend HTTP/2 (HAProxy upgrades on it), and the origin's HTTP/2 port (kH2Port, h2c only) is
// spoken to in HTTP/2, the others in HTTP/1.1 with keep-alive.
absl::StatusOr<ProcessPtr> StartHaproxyHttp(Testbed& bed, const Pod& pod) {
  const std::string cfg = absl::StrCat(bed.work_dir(), "/", pod.name, "-haproxy-http.cfg");
  RETURN_IF_ERROR(WriteFile(
      cfg, absl::StrCat("global\n  nbthread ", absl::GetFlag(FLAGS_threads), "\n  maxconn 9000\n",
                        "defaults\n  mode http\n  timeout connect 10s\n  timeout client 10m\n",
                        "  timeout server 10m\n  timeout http-keep-alive 10m\n",
                        "frontend relay\n  bind 0.0.0.0:", kPeerPort, " transparent\n",
                        "  use_backend h2 if { dst_port ", kH2Port, " }\n  default_backend h1\n",
                        "backend h1\n  source 0.0.0.0 usesrc clientip\n  server o 0.0.0.0\n",
                        "backend h2\n  source 0.0.0.0 usesrc clientip\n",
                        "  server o 0.0.0.0 proto h2\n")));
  ASSIGN_OR_RETURN(ProcessPtr p, bed.Spawn(pod, {"haproxy", "-db", "-f", cfg}));
  RETURN_IF_ERROR(Listening(bed, pod, kPeerPort, *p));
  return p;
}

// nginx's files of one instance: its own prefix, pid and logs under the run's work dir.
std::string NginxDir(Testbed& bed, const Pod& pod, const std::string& role) {
  std::string dir = absl::StrCat(bed.work_dir(), "/", pod.name, "-nginx-", role);
  std::filesystem::create_directories(dir);
  return dir;
}

std::string NginxMain(const std::string& dir, int workers = 1) {
  return absl::StrCat("pid ", dir, "/nginx.pid;\nuser root;\nworker_processes ", workers,
                      ";\ndaemon off;\n", "error_log ", dir, "/error.log warn;\n",
                      "events { worker_connections 4096; }\n");
}

// nginx 1.22's stream `listen` has no `transparent` (only its proxy_bind has): the listener is
// made IP_TRANSPARENT by this launcher and handed to nginx through NGINX=<fd>;, the way nginx
// inherits its listeners across a binary upgrade (nginx matches it to `listen` by address).
constexpr char kTransparentListenerLauncher[] = R"(
import os, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_IP, 19, 1)  # IP_TRANSPARENT
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(511)
os.set_inheritable(s.fileno(), True)
os.environ["NGINX"] = "%d;" % s.fileno()
os.execvp(sys.argv[2], sys.argv[2:])
)";

// nginx's stream proxy, one worker process: the inherited transparent listener, the upstream to
// the original destination ($server_addr:$server_port of the TPROXY'd socket) from the client's
// IP (proxy_bind $remote_addr transparent), a FIN passed on as one (proxy_half_close, as shunt).
absl::StatusOr<ProcessPtr> StartNginxStream(Testbed& bed, const Pod& pod) {
  const std::string dir = NginxDir(bed, pod, "stream");
  std::string load;
  for (const char* m : {"/usr/lib/nginx/modules/ngx_stream_module.so",
                        "/usr/share/nginx/modules/ngx_stream_module.so"}) {
    if (std::filesystem::exists(m)) {
      load = absl::StrCat("load_module ", m, ";\n");
      break;
    }
  }
  const std::string conf = dir + "/nginx.conf";
  RETURN_IF_ERROR(WriteFile(
      conf, absl::StrCat(load, NginxMain(dir, absl::GetFlag(FLAGS_threads)),
                         "stream {\n  server {\n    listen ", kPeerPort,
                         ";\n    proxy_pass $server_addr:$server_port;\n",
                         "    proxy_bind $remote_addr transparent;\n    proxy_half_close on;\n",
                         "    proxy_timeout 10m;\n  }\n}\n")));
  ASSIGN_OR_RETURN(ProcessPtr p, bed.Spawn(pod, {"python3", "-c", kTransparentListenerLauncher,
                                                 absl::StrCat(kPeerPort), "nginx", "-p", dir + "/",
                                                 "-e", dir + "/error.log", "-c", conf}));
  RETURN_IF_ERROR(Listening(bed, pod, kPeerPort, *p));
  return p;
}

// The HTTP/1.1 origin wrk talks to: nginx, one worker, a fixed 64-byte body, keep-alive.
absl::StatusOr<ProcessPtr> StartNginxOrigin(Testbed& bed, const Pod& pod) {
  const std::string dir = NginxDir(bed, pod, "origin");
  std::string temp;
  for (const char* t : {"client_body", "proxy", "fastcgi", "uwsgi", "scgi"}) {
    absl::StrAppend(&temp, "  ", t, "_temp_path ", dir, "/", t, ";\n");
  }
  const std::string conf = dir + "/nginx.conf";
  RETURN_IF_ERROR(
      WriteFile(conf, absl::StrCat(NginxMain(dir), "http {\n  access_log off;\n", temp,
                                   "  keepalive_requests 100000000;\n  server {\n    listen ",
                                   kHttpPort, ";\n    listen ", kHttpL7Port, ";\n    listen ",
                                   kH2Port, " http2;\n    location / { return 200 \"",
                                   std::string(63, 'x'), "\\n\"; }\n  }\n}\n")));
  ASSIGN_OR_RETURN(ProcessPtr p, bed.Spawn(pod, {"nginx", "-p", dir + "/", "-e", dir + "/error.log",
                                                 "-c", conf}));
  RETURN_IF_ERROR(Listening(bed, pod, kHttpPort, *p));
  return p;
}

bool Installed(const char* tool) {
  for (const char* dir : {"/usr/bin/", "/usr/sbin/", "/usr/local/bin/", "/usr/local/sbin/"}) {
    if (std::filesystem::exists(std::string(dir) + tool)) return true;
  }
  return false;
}

// iperf3 client in `pod` to `ip`: received Gbit/s, or 0 (said on stderr).
double Iperf3(Testbed& bed, const Pod& pod, const std::string& ip, int seconds) {
  auto out = RunIn(
      bed, pod,
      {"iperf3", "-c", ip, "-p", absl::StrCat(kIperfPort), "-t", absl::StrCat(seconds), "--json"},
      std::chrono::seconds(seconds + 30));
  if (!out.ok()) {
    std::fprintf(stderr, "iperf3: %s\n", std::string(out.status().message()).c_str());
    return 0;
  }
  auto j = nlohmann::json::parse(out->out, nullptr, false);
  if (j.is_discarded()) return 0;
  return Num(j["end"]["sum_received"], "bits_per_second") / 1e9;
}

// wrk (one thread, keep-alive) in `pod` against the origin at `ip`: requests per second, or 0.
double Wrk(Testbed& bed, const Pod& pod, const std::string& ip, int seconds, int connections,
           int port = kHttpPort) {
  auto out = RunIn(bed, pod,
                   {"wrk", "-t1", absl::StrCat("-c", connections), absl::StrCat("-d", seconds, "s"),
                    absl::StrCat("http://", ip, ":", port, "/")},
                   std::chrono::seconds(seconds + 30));
  std::smatch m;
  if (!out.ok() || !std::regex_search(out->out, m, std::regex("Requests/sec:\\s+([0-9.]+)"))) {
    std::fprintf(stderr, "wrk: %s\n",
                 out.ok() ? out->out.c_str() : std::string(out.status().message()).c_str());
    return 0;
  }
  // Non-2xx answers or socket errors mean the path is broken, not fast.
  if (out->out.find("Non-2xx") != std::string::npos) return 0;
  return std::stod(m[1]);
}

// h2load (one thread) in `pod` against `url`: requests per second, or 0 when any request did not
// succeed. `extra`: more options (--h1, -c, -m, --rps, -D).
double H2load(Testbed& bed, const Pod& pod, const std::string& url,
              const std::vector<std::string>& extra, int seconds) {
  std::vector<std::string> argv = {"h2load", "-t1"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  argv.push_back(url);
  auto out = RunIn(bed, pod, argv, std::chrono::seconds(seconds + 30));
  std::smatch m, codes;
  if (!out.ok() ||
      !std::regex_search(out->out, m, std::regex("finished in [^,]+, ([0-9.]+) req/s")) ||
      !std::regex_search(out->out, codes,
                         std::regex("requests: ([0-9]+) total, [0-9]+ started, [0-9]+ done, "
                                    "([0-9]+) succeeded, ([0-9]+) failed"))) {
    std::fprintf(stderr, "h2load: %s\n",
                 out.ok() ? out->out.c_str() : std::string(out.status().message()).c_str());
    return 0;
  }
  if (std::stol(codes[3]) != 0 || out->out.find(" 0 2xx") != std::string::npos) {
    std::fprintf(stderr, "h2load: requests failed: %s\n", out->out.c_str());
    return 0;
  }
  return std::stod(m[1]);
}

// CPU seconds (user + system) a process used so far, and its resident memory (KiB).
double CpuSeconds(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  const size_t close = stat.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream rest(stat.substr(close + 2));
  std::string field;
  double utime = 0, stime = 0;
  for (int i = 3; i <= 15 && rest >> field; ++i) {
    if (i == 14) utime = std::stod(field);
    if (i == 15) stime = std::stod(field);
  }
  return (utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}
// A field of /proc/<pid>/status in KiB: VmRSS (all resident pages, also the shared libraries'
// file pages, shared with every process that maps them), RssAnon (the process's own memory).
double RssKiB(pid_t pid, const std::string& field = "VmRSS:") {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(f, line);) {
    if (line.rfind(field, 0) == 0) return std::stod(line.substr(field.size()));
  }
  return 0;
}

// Python's asyncio holding every connection until its client closes it: the idle connections'
// server (argv: port, ready file).
constexpr char kPyIdleServer[] = R"(
import asyncio, resource, sys
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
async def hold(r, w):
    await r.read()
    w.close()
async def main():
    s = await asyncio.start_server(hold, "0.0.0.0", int(sys.argv[1]), backlog=8192)
    open(sys.argv[2], "w").close()
    await s.serve_forever()
asyncio.run(main())
)";
// The idle connections themselves: argv: address, port, count, ready file, stop file. Opened
// 500 at a time; the ready file says how many connected.
constexpr char kPyIdleClient[] = R"(
import os, resource, socket, sys, time
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
addr, port, n, ready, stop = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
socks, failed = [], 0
for i in range(n):
    try:
        socks.append(socket.create_connection((addr, port), timeout=10))
    except OSError:
        failed += 1
    if i % 500 == 499:
        time.sleep(0.05)
with open(ready + ".tmp", "w") as f:
    f.write("%d %d" % (len(socks), failed))
os.rename(ready + ".tmp", ready)
while not os.path.exists(stop):
    time.sleep(0.1)
)";

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  Testbed::InstallSignalTeardown();
  // Descriptors for the idle connections (two per connection in the relay and HAProxy), as
  // many as the hard limit allows (inherited by the agent and the peers).
  rlimit nofile{};
  if (getrlimit(RLIMIT_NOFILE, &nofile) == 0) {
    nofile.rlim_cur = nofile.rlim_max;
    setrlimit(RLIMIT_NOFILE, &nofile);
  }
  // Servers on node 0, one pod per path; clients on node 1, one pod per path.
  auto created = shunt::bench::CreateTestbed(2, 4);
  if (!created) return 1;
  Testbed& bed = *created;
  auto fail = [](const char* what, const absl::Status& s) {
    std::fprintf(stderr, "%s: %s\n", what, std::string(s.message()).c_str());
    return 1;
  };
  const Pod& meshed = bed.pod(0, 0);
  auto policy = bed.WritePolicyFile("policy.json", {{meshed.name, true}});
  if (!policy.ok()) return 1;
  shunt::e2e::AgentProcess agent(
      bed, bed.node(0), *policy,
      {"--capture", absl::StrCat("--proxy-loops=", absl::GetFlag(FLAGS_threads))});
  if (absl::Status s = agent.Start(); !s.ok()) return fail("agent", s);
  for (int i = 0; i < 100; ++i) {  // until the pod is captured
    auto m = agent.Scrape();
    if (m.ok() && shunt::e2e::SumSamples(*m, "shunt_capture_pods") == 1) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  // An L7 rule (a DENY of /admin* no request makes) at the meshed pod's ports kHttpL7Port and
  // kH2Port: shunt reads every request there (HTTP/1.1, HTTP/2); kHttpPort stays opaque.
  {
    std::ifstream in(*policy);
    nlohmann::json doc = nlohmann::json::parse(in, nullptr, false);
    if (doc.is_discarded()) return fail("policy", absl::InternalError("unreadable policy file"));
    for (auto& w : doc["workloads"]) {
      if (w["name"] == meshed.name) w["labels"] = {{"bench", "shunt"}};
    }
    doc["accessPolicies"] =
        nlohmann::json::array({{{"namespace", "default"},
                                {"name", "l7-read"},
                                {"action", "DENY"},
                                {"target", {{"matchLabels", {{"bench", "shunt"}}}}},
                                {"from", nlohmann::json::array()},
                                {"ports", {{{"from", kHttpL7Port}}, {{"from", kH2Port}}}},
                                {"l7", {{{"paths", {"/admin*"}}}}}}});
    if (absl::Status w = WriteFile(*policy + ".tmp", doc.dump()); !w.ok()) return fail("policy", w);
    std::filesystem::rename(*policy + ".tmp", *policy);
    for (int i = 0; i < 200; ++i) {
      auto m = agent.Scrape();
      if (m.ok() && shunt::e2e::SumSamples(*m, "shunt_policy_version") >= 2) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    std::this_thread::sleep_for(std::chrono::seconds(1));  // the capture's pass: its L7 ports
  }
  struct Path {
    const char* name;
    const Pod* client;
    const Pod* server;
  };
  const std::vector<Path> paths = {{"direct", &bed.pod(1, 1), &bed.pod(0, 1)},
                                   {"shunt", &bed.pod(1, 0), &meshed},
                                   {"haproxy", &bed.pod(1, 2), &bed.pod(0, 2)},
                                   {"nginx", &bed.pod(1, 3), &bed.pod(0, 3)}};
  const bool iperf3 = absl::GetFlag(FLAGS_iperf3) && Installed("iperf3");
  const bool wrk = absl::GetFlag(FLAGS_wrk) && Installed("wrk") && Installed("nginx");
  const bool h2load = absl::GetFlag(FLAGS_h2load) && Installed("h2load") && Installed("nginx");
  std::vector<ProcessPtr> servers,
      nginxes;  // nginxes: stopped with SIGTERM (a master and a worker)
  for (const auto& p : paths) {
    for (const auto& [port, mode] : {std::pair{kSinkPort, "sink"}, {kEchoPort, "echo"}}) {
      auto s = shunt::e2e::StartTestpeerServer(
          bed, *p.server,
          {absl::StrCat("--port=", port), std::string("--mode=") + mode, "--bind=::"});
      if (!s.ok()) return fail("server", s.status());
      servers.push_back(std::move(*s));
    }
    if (iperf3) {
      auto s = bed.Spawn(*p.server, {"iperf3", "-s", "-p", absl::StrCat(kIperfPort)});
      if (!s.ok()) return fail("iperf3 server", s.status());
      servers.push_back(std::move(*s));
      if (absl::Status w = WaitListening(bed, *p.server, kIperfPort); !w.ok()) {
        return fail("iperf3 server", w);
      }
    }
    if (wrk || h2load) {
      auto s = StartNginxOrigin(bed, *p.server);
      if (!s.ok()) return fail("nginx origin", s.status());
      nginxes.push_back(std::move(*s));
    }
  }
  // The peers, each in its own server pod with its own capture rules.
  std::map<std::string, std::unique_ptr<PeerCapture>> captures;
  pid_t haproxy_pid = -1;
  for (const auto& p : paths) {
    const std::string name = p.name;
    if (name != "haproxy" && name != "nginx") continue;
    auto c = PeerCapture::Install(bed, *p.server);
    if (!c.ok()) return fail("peer capture", c.status());
    captures[name] = std::move(*c);
    auto proc = name == "haproxy" ? StartHaproxy(bed, *p.server) : StartNginxStream(bed, *p.server);
    if (!proc.ok()) return fail(p.name, proc.status());
    if (name == "haproxy") haproxy_pid = (*proc)->pid();
    (name == "nginx" ? nginxes : servers).push_back(std::move(*proc));
  }

  const int seconds = absl::GetFlag(FLAGS_seconds), rounds = absl::GetFlag(FLAGS_rounds);
  const std::string secs = absl::StrCat("--seconds=", seconds);
  const std::string count = absl::StrCat("--count=", absl::GetFlag(FLAGS_pingpong_count));
  std::map<std::string, std::vector<double>> gbps, iperf, p50, p99, rps, rps_l7, h2rps;
  if (absl::GetFlag(FLAGS_paths)) {
    for (int r = 0; r < rounds; ++r) {
      std::string line = absl::StrCat("round ", r + 1, ":");
      for (size_t k = 0; k < paths.size(); ++k) {
        const Path& p = paths[(k + r) % paths.size()];  // each round starts with another path
        const std::string& ip = p.server->ipv4;
        gbps[p.name].push_back(
            Num(Client(bed, *p.client, {"bulk", absl::StrCat("--to=", ip, ":", kSinkPort), secs}),
                "gbit_per_s"));
        if (iperf3) iperf[p.name].push_back(Iperf3(bed, *p.client, ip, seconds));
        auto pp = Client(bed, *p.client,
                         {"pingpong", absl::StrCat("--to=", ip, ":", kEchoPort), "--size=1024",
                          count, "--warmup=1000"});
        p50[p.name].push_back(Num(pp, "p50_us"));
        p99[p.name].push_back(Num(pp, "p99_us"));
        if (wrk) {
          rps[p.name].push_back(
              Wrk(bed, *p.client, ip, seconds, absl::GetFlag(FLAGS_wrk_connections)));
          rps_l7[p.name].push_back(
              Wrk(bed, *p.client, ip, seconds, absl::GetFlag(FLAGS_wrk_connections), kHttpL7Port));
        }
        if (h2load) {
          h2rps[p.name].push_back(H2load(bed, *p.client,
                                         absl::StrCat("http://", ip, ":", kH2Port, "/"),
                                         {"-c16", "-m10", "-D", absl::StrCat(seconds)}, seconds));
        }
        char figures[96];
        std::snprintf(figures, sizeof(figures), " %s %.2f Gbit/s p50 %.1f us |", p.name,
                      gbps[p.name].back(), p50[p.name].back());
        line += figures;
      }
      std::fprintf(stderr, "%s\n", line.c_str());
    }

    std::printf("cross-node pod-to-pod, %d interleaved rounds (median), 1024 B messages, %u CPUs\n",
                rounds, std::thread::hardware_concurrency());
    std::printf(
        "shunt, haproxy, nginx: in the server pod's namespace, TPROXY in, upstream as the client's "
        "IP,\n%d thread(s) each (shunt's relay --proxy-loops, HAProxy nbthread, nginx "
        "worker_processes)\n",
        absl::GetFlag(FLAGS_threads));
    const std::vector<std::string> cols = {"direct", "shunt", "haproxy", "nginx"};
    std::printf("%-34s", "metric");
    for (const auto& c : cols) std::printf(" %10s", c.c_str());
    std::printf("\n");
    auto row = [&](const char* metric, std::map<std::string, std::vector<double>>& v) {
      if (v.empty()) return;
      std::printf("%-34s", metric);
      for (const auto& c : cols) std::printf(" %10.2f", Median(v[c]));
      std::printf("\n");
    };
    row("bulk throughput (Gbit/s)", gbps);
    row("iperf3 throughput (Gbit/s)", iperf);
    row("req/resp p50 latency (us)", p50);
    row("req/resp p99 latency (us)", p99);
    row("HTTP/1.1 keep-alive (req/s)", rps);
    row("HTTP/1.1, shunt L7 (req/s)", rps_l7);
    row("HTTP/2 h2c, shunt L7 (req/s)", h2rps);

    std::printf("\n%-34s %10s", "against direct", "");
    for (size_t i = 1; i < cols.size(); ++i) std::printf(" %10s", cols[i].c_str());
    std::printf("\n");
    auto ratio = [&](const char* metric, std::map<std::string, std::vector<double>>& v) {
      if (v.empty()) return;
      const double d = Median(v["direct"]);
      std::printf("%-34s %10s", metric, "");
      for (size_t i = 1; i < cols.size(); ++i) {
        std::printf(" %9.2fx", d > 0 ? Median(v[cols[i]]) / d : 0);
      }
      std::printf("\n");
    };
    auto added = [&](const char* metric, std::map<std::string, std::vector<double>>& v) {
      const double d = Median(v["direct"]);
      std::printf("%-34s %10s", metric, "");
      for (size_t i = 1; i < cols.size(); ++i) std::printf(" %+10.2f", Median(v[cols[i]]) - d);
      std::printf("\n");
    };
    ratio("bulk throughput", gbps);
    ratio("iperf3 throughput", iperf);
    ratio("req/resp p50 latency", p50);
    ratio("req/resp p99 latency", p99);
    ratio("HTTP/1.1 req/s (shunt: opaque TCP)", rps);
    ratio("HTTP/1.1 req/s (shunt: L7)", rps_l7);
    ratio("HTTP/2 req/s (shunt: L7)", h2rps);
    added("added p50 latency (us)", p50);
    added("added p99 latency (us)", p99);

    // Issue 9's targets, said plainly (nothing asserted).
    const double add_shunt = Median(p50["shunt"]) - Median(p50["direct"]);
    const double add_haproxy = Median(p50["haproxy"]) - Median(p50["direct"]);
    std::printf("\nissue 9 targets:\n");
    auto verdict = [](double shunt_added, double haproxy_added) -> std::string {
      if (haproxy_added <= 0) return "HAProxy added nothing above direct in this run: not judged";
      const double share = shunt_added / haproxy_added;
      char out[64];
      std::snprintf(out, sizeof(out), "%.2fx of HAProxy's (target <= 0.50x): %s", share,
                    share <= 0.5 ? "met" : "not met");
      return out;
    };
    const double add_shunt99 = Median(p99["shunt"]) - Median(p99["direct"]);
    const double add_haproxy99 = Median(p99["haproxy"]) - Median(p99["direct"]);
    std::printf(
        "  opaque TCP adds at most half the latency HAProxy adds: p50 shunt %+.2f us, HAProxy "
        "%+.2f us: %s\n",
        add_shunt, add_haproxy, verdict(add_shunt, add_haproxy).c_str());
    std::printf("    (p99: shunt %+.2f us, HAProxy %+.2f us: %s)\n", add_shunt99, add_haproxy99,
                verdict(add_shunt99, add_haproxy99).c_str());
    const double bulk =
        Median(gbps["direct"]) > 0 ? Median(gbps["shunt"]) / Median(gbps["direct"]) : 0;
    std::printf("  at least 0.9x direct bulk throughput: shunt %.2fx (testpeer bulk): %s", bulk,
                bulk >= 0.9 ? "met" : "not met");
    if (iperf3) {
      const double ib =
          Median(iperf["direct"]) > 0 ? Median(iperf["shunt"]) / Median(iperf["direct"]) : 0;
      std::printf("; %.2fx (iperf3): %s", ib, ib >= 0.9 ? "met" : "not met");
    }
    std::printf("\n");
    auto vs_haproxy = [&](const char* what, std::map<std::string, std::vector<double>>& v) {
      if (v.empty()) return;
      const double h = Median(v["haproxy"]), x = Median(v["shunt"]);
      std::printf(
          "  %s at least HAProxy's (%d thread(s) each; HAProxy in TCP mode): shunt %.0f, "
          "HAProxy %.0f: %.2fx: %s\n",
          what, absl::GetFlag(FLAGS_threads), x, h, h > 0 ? x / h : 0,
          h > 0 && x >= h ? "met" : "not met");
    };
    vs_haproxy("HTTP/1.1 req/s (shunt reading every request)", rps_l7);
    vs_haproxy("HTTP/2 req/s (shunt reading every stream)", h2rps);

  }  // --paths
  // The agent's CPU and memory at a fixed 1000 req/s (h2load: 10 keep-alive HTTP/1.1
  // connections, 100 req/s each), through shunt's L7 port, its opaque port, and HAProxy.
  const int fixed = absl::GetFlag(FLAGS_fixed_rps_seconds);
  if (fixed > 0 && h2load) {
    std::printf("\nat a fixed 1000 req/s for %d s (HTTP/1.1, 10 connections):\n", fixed);
    struct Fixed {
      const char* name;
      const Path* path;
      int port;
      pid_t pid;
    };
    const std::vector<Fixed> runs = {
        {"shunt, L7 (every request read)", &paths[1], kHttpL7Port, agent.pid()},
        {"shunt, opaque TCP", &paths[1], kHttpPort, agent.pid()},
        {"HAProxy, TCP mode", &paths[2], kHttpPort, haproxy_pid}};
    for (const Fixed& f : runs) {
      const double cpu0 = CpuSeconds(f.pid);
      const auto t0 = std::chrono::steady_clock::now();
      const double got = H2load(bed, *f.path->client,
                                absl::StrCat("http://", f.path->server->ipv4, ":", f.port, "/"),
                                {"--h1", "-c10", "--rps=100", "-D", absl::StrCat(fixed)}, fixed);
      const double wall =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const double vcpu = (CpuSeconds(f.pid) - cpu0) / wall;
      std::printf("  %-32s %7.0f req/s  %.3f vCPU  RSS %.1f MB, of it private %.1f MB%s\n", f.name,
                  got, vcpu, RssKiB(f.pid) / 1024.0, RssKiB(f.pid, "RssAnon:") / 1024.0,
                  f.pid == agent.pid() ? " (the whole agent: fast path, policy, metrics too)" : "");
    }
    std::printf(
        "  target (issue 9): at most 0.05 vCPU and 12 MB per 1000 req/s (RSS counts the "
        "shared libraries' pages, shared with other processes; private: anonymous pages)\n");
  }

  // Memory held by idle connections through shunt and through HAProxy.
  // At most what the agent's descriptors allow (two per idle relayed connection, a margin kept).
  const int idle_n = std::min<int>(absl::GetFlag(FLAGS_idle_connections),
                                   static_cast<int>((nofile.rlim_cur - 2000) / 2));
  if (idle_n > 0) {
    std::printf(
        "\n%d idle connections held open (asked %d; the descriptor limit here is %llu: "
        "two per idle relayed connection):\n",
        idle_n, absl::GetFlag(FLAGS_idle_connections),
        static_cast<unsigned long long>(nofile.rlim_cur));
    for (const Path* p : {&paths[1], &paths[2]}) {
      const pid_t pid = std::string(p->name) == "shunt" ? agent.pid() : haproxy_pid;
      const std::string tag = absl::StrCat(bed.work_dir(), "/idle-", p->name);
      auto server = bed.Spawn(*p->server, {"/usr/bin/python3", "-c", kPyIdleServer,
                                           absl::StrCat(kIdlePort), tag + "-server"});
      if (!server.ok()) return fail("idle server", server.status());
      if (!shunt::e2e::WaitForFile(tag + "-server"))
        return fail("idle server", absl::DeadlineExceededError("not up"));
      const double rss0 = RssKiB(pid), cpu0 = CpuSeconds(pid);
      auto avail = [] {
        std::ifstream f("/proc/meminfo");
        for (std::string line; std::getline(f, line);) {
          if (line.rfind("MemAvailable:", 0) == 0) return std::stod(line.substr(13));
        }
        return 0.0;
      };
      const double avail0 = avail();
      auto client = bed.Spawn(*p->client, {"/usr/bin/python3", "-c", kPyIdleClient, p->server->ipv4,
                                           absl::StrCat(kIdlePort), absl::StrCat(idle_n),
                                           tag + "-ready", tag + "-stop"});
      if (!client.ok()) return fail("idle client", client.status());
      std::string counts;
      for (int i = 0; i < 600 && counts.empty(); ++i) {
        std::ifstream r(tag + "-ready");
        std::getline(r, counts);
        if (counts.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
      if (counts.empty()) counts = "(not all open within 60 s)";
      std::this_thread::sleep_for(std::chrono::seconds(1));
      const double rss1 = RssKiB(pid), avail1 = avail();
      std::printf(
          "  %-8s connected/failed %-12s process RSS %+.1f MB (%.1f KB each), node memory "
          "%+.1f MB (%.1f KB each; both sides' sockets, pipes), %.2f CPU s to open them\n",
          p->name, counts.c_str(), (rss1 - rss0) / 1024.0, (rss1 - rss0) / idle_n,
          (avail0 - avail1) / 1024.0, (avail0 - avail1) / idle_n, CpuSeconds(pid) - cpu0);
      WriteFile(tag + "-stop", "").IgnoreError();
      (*client)->Stop(SIGTERM, std::chrono::seconds(20)).IgnoreError();
      (*server)->Stop(SIGTERM, std::chrono::seconds(5)).IgnoreError();
      std::this_thread::sleep_for(
          std::chrono::seconds(5));  // closed before the next one's baseline
    }
  }

  // L7 like for like: shunt reading every request against HAProxy as an HTTP proxy (above it is
  // HAProxy's TCP relay, which reads no request), same pod, same capture, rounds interleaved.
  if ((wrk || h2load) && haproxy_pid > 0) {
    for (auto& s : servers) {
      if (s->pid() == haproxy_pid) s->Stop(SIGTERM, std::chrono::seconds(5)).IgnoreError();
    }
    // A fresh HAProxy for each of its measurements (wrk, h2load): one instance's figures fell from
    // ~65k to ~12-17k req/s from its second run on (state of its own we did not pin down; its
    // first run is the one reported, the comparison most favourable to it).
    std::map<std::string, std::vector<double>> h1, h2;
    std::map<std::string, std::map<std::string, std::vector<double>>> cpu;  // us per request
    bool ran = true;
    for (int r = 0; r < rounds && ran; ++r) {
      for (int k = 0; k < 2 && ran; ++k) {
        const Path& p = paths[(k + r) % 2 == 0 ? 1 : 2];
        const std::string ip = p.server->ipv4;
        const std::string name = p.name == std::string("shunt") ? "shunt" : "haproxy";
        // One measurement (wrk or h2load), through a HAProxy of its own when it is HAProxy's.
        auto measure = [&](const std::string& what, auto run) {
          ProcessPtr http;
          if (name == "haproxy") {
            auto h = StartHaproxyHttp(bed, *p.server);
            if (!h.ok()) {
              std::fprintf(stderr, "haproxy (http mode): %s: section skipped\n",
                           h.status().ToString().c_str());
              ran = false;
              return 0.0;
            }
            http = std::move(*h);
          }
          // CPU per request of the proxy's process (the whole agent for shunt).
          const pid_t pid = http ? http->pid() : agent.pid();
          const double cpu0 = CpuSeconds(pid);
          const double v = run();
          if (v > 0) cpu[what][name].push_back((CpuSeconds(pid) - cpu0) * 1e6 / (v * seconds));
          if (http) http->Stop(SIGTERM, std::chrono::seconds(5)).IgnoreError();
          return v;
        };
        if (wrk) {
          h1[name].push_back(measure("h1", [&] {
            return Wrk(bed, *p.client, ip, seconds, absl::GetFlag(FLAGS_wrk_connections),
                       kHttpL7Port);
          }));
        }
        if (h2load && ran) {
          h2[name].push_back(measure("h2", [&] {
            return H2load(bed, *p.client, absl::StrCat("http://", ip, ":", kH2Port, "/"),
                          {"-c16", "-m10", "-D", absl::StrCat(seconds)}, seconds);
          }));
        }
        std::fprintf(stderr,
                     "L7 like for like, round %d: %s HTTP/1.1 %.0f req/s, HTTP/2 %.0f req/s\n",
                     r + 1, name.c_str(), h1[name].empty() ? 0 : h1[name].back(),
                     h2[name].empty() ? 0 : h2[name].back());
      }
    }
    if (!ran) h1.clear(), h2.clear();
    std::printf(
        "\nL7 like for like: shunt reading every request, HAProxy in HTTP mode (mode http, "
        "the same capture), %d thread(s) each, %d rounds (median):\n",
        absl::GetFlag(FLAGS_threads), rounds);
    auto like = [&](const char* what, std::map<std::string, std::vector<double>>& v,
                    const std::string& key) {
      if (v.empty()) return;
      const double x = Median(v["shunt"]), h = Median(v["haproxy"]);
      std::printf("  %-28s shunt %9.0f  HAProxy %9.0f  %.2fx: %s\n", what, x, h, h > 0 ? x / h : 0,
                  h > 0 && x >= h ? "met" : "not met");
      auto& c = cpu[key];
      if (!c["shunt"].empty() && !c["haproxy"].empty()) {
        const double cx = Median(c["shunt"]), ch = Median(c["haproxy"]);
        std::printf("  %-28s shunt %9.2f  HAProxy %9.2f  %.2fx\n", "  CPU us per request", cx, ch,
                    ch > 0 ? cx / ch : 0);
      }
    };
    like("HTTP/1.1 req/s (wrk)", h1, "h1");
    like("HTTP/2 h2c req/s (h2load)", h2, "h2");
  }

  auto m = agent.Scrape();
  const double relayed = m.ok() ? shunt::e2e::SumSamples(*m, "shunt_relay_bytes_total",
                                                         {{"direction", "to_upstream"}})
                                : 0;
  std::printf("through the proxies, not around them: shunt relayed %.0f bytes to the server pod",
              relayed);
  for (auto& [name, c] : captures)
    std::printf("; %s took %.0f connections", name.c_str(), c->Captured());
  std::printf("\n");

  for (auto& n : nginxes) n->Stop(SIGTERM, std::chrono::seconds(5)).IgnoreError();
  captures.clear();
  agent.Stop().IgnoreError();
  shunt::e2e::UninstallAgent(bed, bed.node(0)).IgnoreError();
  bed.Teardown();
  return 0;
}
