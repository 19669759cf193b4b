#include "agent/metrics/fastpath_collector.h"

#include <map>
#include <tuple>

#include "agent/metrics/families.h"
#include "common/log.h"

namespace shunt::agent {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

struct Names {
  std::string ns, workload, pod;
};

Names Lookup(const WorkloadDirectory& dir, uint32_t id) {
  auto it = dir.find(id);
  if (it == dir.end()) return {"unknown", "unknown", "unknown"};
  return {it->second.k8s_namespace, it->second.owner, it->second.name};
}

using metrics::Family;
using metrics::Sample;

}  // namespace

const char* MsgVerdictReason(uint32_t verdict) {
  switch (verdict) {
    case SHUNT_MSG_REDIRECTED: return "redirected";
    case SHUNT_MSG_FALLBACK_PEER_NOT_READY: return "peer_not_ready";
    case SHUNT_MSG_FALLBACK_PLAIN_SOCKET: return "socket_on_stack";
    case SHUNT_MSG_FALLBACK_PEER_GONE: return "peer_gone";
    case SHUNT_MSG_FALLBACK_NO_STATE: return "no_state";
    case SHUNT_MSG_FALLBACK_PEER_UNREAD: return "peer_not_read_yet";
    case SHUNT_MSG_FALLBACK_PEER_UNSAFE: return "peer_reads_unsafely";
    case SHUNT_MSG_FALLBACK_PEER_BACKLOG: return "peer_backlog";
    case SHUNT_MSG_FALLBACK_ORDER: return "stack_bytes_unread";
    case SHUNT_MSG_FALLBACK_ZEROCOPY: return "zerocopy_sender";
    case SHUNT_MSG_FALLBACK_DRAINING: return "draining";
  }
  return "other";
}

FastpathCollector::FastpathCollector(const Fastpath& fastpath, DirectoryFn directory,
                                     size_t max_series)
    : fastpath_(fastpath), directory_(std::move(directory)), max_series_(max_series) {}

std::vector<MetricFamily> FastpathCollector::Collect() const {
  auto dir = directory_();
  auto red_msgs = Family("shunt_sockmap_redirected_messages_total",
                         "Messages sent socket-to-socket by the in-kernel redirect.",
                         MetricType::Counter);
  auto red_bytes = Family("shunt_sockmap_redirected_bytes_total",
                          "Bytes sent socket-to-socket by the in-kernel redirect.",
                          MetricType::Counter);
  auto fb_msgs = Family("shunt_sockmap_fallback_messages_total",
                        "Messages of meshed sockets that took the normal TCP/IP path, by reason.",
                        MetricType::Counter);
  auto fb_bytes = Family("shunt_sockmap_fallback_bytes_total",
                         "Bytes of meshed sockets that took the normal TCP/IP path, by reason.",
                         MetricType::Counter);
  auto sockets = Family("shunt_sockhash_sockets", "Sockets currently in the sockhash.",
                        MetricType::Gauge);
  auto sock_events = Family("shunt_sockhash_socket_events_total",
                            "Socket events of meshed pods: inserted, removed, and why a socket "
                            "stayed on the normal path.",
                            MetricType::Counter);
  auto folded = Family("shunt_metrics_series_folded",
                       "Label sets folded into workload \"other\" by the cardinality cap.",
                       MetricType::Gauge);
  auto capacity = Family("shunt_bpf_map_capacity_entries", "Configured size of each BPF map.",
                         MetricType::Gauge);
  auto rcvbuf_bound = Family(
      "shunt_sockmap_queue_bound_by_receive_buffer",
      "1 where a receiver's sockmap queue is held under a quarter of its receive buffer (this "
      "kernel's TCP drops in-window segments once a receiver's memory is full).",
      MetricType::Gauge);
  auto errors = Family("shunt_metrics_collect_error",
                       "1 when reading the BPF counters failed in this scrape.",
                       MetricType::Gauge);

  double collect_error = 0;
  size_t folded_count = 0;
  auto msgs = fastpath_.ReadMsgStats();
  if (msgs.ok()) {
    // (src, dst, verdict) -> summed values; over the cap, pairs fold into "other".
    std::map<std::tuple<uint32_t, uint32_t, uint32_t>, shunt_msg_stats> agg;
    constexpr uint32_t kOther = 0xffffffff;
    for (const auto& m : *msgs) {
      auto key = std::make_tuple(m.key.src_workload, m.key.dst_workload, m.key.verdict);
      if (!agg.count(key) && agg.size() >= max_series_) {
        key = std::make_tuple(kOther, kOther, m.key.verdict);
        ++folded_count;
      }
      agg[key].msgs += m.value.msgs;
      agg[key].bytes += m.value.bytes;
    }
    for (const auto& [key, v] : agg) {
      auto [src, dst, verdict] = key;
      Names s = src == kOther ? Names{"other", "other", "other"} : Lookup(*dir, src);
      Names d = dst == kOther ? Names{"other", "other", "other"} : Lookup(*dir, dst);
      std::vector<ClientMetric::Label> labels = {
          {"source_workload_namespace", s.ns}, {"source_workload", s.workload},
          {"source_pod", s.pod},               {"destination_workload_namespace", d.ns},
          {"destination_workload", d.workload}, {"destination_pod", d.pod}};
      if (verdict == SHUNT_MSG_REDIRECTED) {
        red_msgs.metric.push_back(Sample(labels, v.msgs, true));
        red_bytes.metric.push_back(Sample(labels, v.bytes, true));
      } else {
        labels.push_back({"reason", MsgVerdictReason(verdict)});
        fb_msgs.metric.push_back(Sample(labels, v.msgs, true));
        fb_bytes.metric.push_back(Sample(labels, v.bytes, true));
      }
    }
  } else {
    collect_error = 1;
    SHUNT_LOG_EVERY_N_SEC(WARNING, 30) << "read message counters: " << msgs.status().message();
  }

  auto socks = fastpath_.ReadSockStats();
  if (socks.ok()) {
    std::map<uint32_t, std::pair<uint64_t, uint64_t>> in_out;
    static constexpr const char* kEvents[] = {
        "inserted",        "removed",       "sockhash_full",    "insert_error",
        "peer_not_local",  "stats_full",    "skip_blocking",    "skip_learned",
        "skip_rcvlowat",   "read_blocking", "read_splice",      "read_rcvlowat",
        "evicted",         "unprotected",   "read_fionread",    "skip_unlearned",
        "skip_foreign_address", "insert_collision", "reader_slots_full",
        "connection_event_lost", "connection_not_measured"};
    static_assert(std::size(kEvents) == SHUNT_SOCK_EVENT_MAX);
    for (const auto& s : *socks) {
      if (s.key.event == SHUNT_SOCK_INSERTED) in_out[s.key.workload_id].first += s.value;
      if (s.key.event == SHUNT_SOCK_REMOVED || s.key.event == SHUNT_SOCK_EVICTED) {
        in_out[s.key.workload_id].second += s.value;
      }
      if (s.key.event >= SHUNT_SOCK_EVENT_MAX) continue;
      Names n = Lookup(*dir, s.key.workload_id);
      sock_events.metric.push_back(Sample({{"workload_namespace", n.ns},
                                           {"workload", n.workload},
                                           {"pod", n.pod},
                                           {"event", kEvents[s.key.event]}},
                                          s.value, true));
    }
    for (const auto& [id, io] : in_out) {
      Names n = Lookup(*dir, id);
      double live = io.first > io.second ? io.first - io.second : 0;
      sockets.metric.push_back(
          Sample({{"workload_namespace", n.ns}, {"workload", n.workload}, {"pod", n.pod}}, live,
                 false));
    }
  } else {
    collect_error = 1;
  }

  const auto& c = fastpath_.config();
  capacity.metric.push_back(Sample({{"map", SHUNT_MAP_SOCKHASH}}, c.sockhash_size, false));
  capacity.metric.push_back(Sample({{"map", SHUNT_MAP_PODS}}, c.pods_size, false));
  capacity.metric.push_back(Sample({{"map", SHUNT_MAP_ENDPOINTS}}, c.endpoints_size, false));
  capacity.metric.push_back(Sample({{"map", SHUNT_MAP_MSG_STATS}}, c.stats_size, false));
  capacity.metric.push_back(Sample({{"map", SHUNT_MAP_SOCK_STATS}}, c.stats_size, false));
  folded.metric.push_back(Sample({}, folded_count, false));
  errors.metric.push_back(Sample({}, collect_error, false));
  rcvbuf_bound.metric.push_back(
      Sample({}, fastpath_.queue_bound_by_receive_buffer() ? 1 : 0, false));

  return {red_msgs,    red_bytes, fb_msgs,  fb_bytes,     sockets,
          sock_events, folded,    capacity, rcvbuf_bound, errors};
}

}  // namespace shunt::agent
