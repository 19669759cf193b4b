#!/usr/bin/env python3
"""Writes shunt's Grafana dashboards (Grafana JSON, schemaVersion 39) into a directory.

Usage: generate.py [OUT_DIR (default: this directory)]. The JSON files committed next to this
script are its output: tests/unit/unit.cmake checks that they are (DashboardsGenerated), that they
type-check against Grafana's published schema (scripts/check-dashboards.sh, npm @grafana/schema),
and tests/e2e/dashboards_test.cc runs every panel's query against a real Prometheus server.
Panels are described panel by panel in docs/dashboards.md.
"""
import json, os, sys
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = sys.argv[1] if len(sys.argv) > 1 else HERE
# The panel-by-panel description goes to docs/ (or next to the JSON when OUT_DIR is given).
DOCS = os.path.join(OUT, "dashboards.md") if len(sys.argv) > 1 else os.path.join(
    HERE, "..", "..", "docs", "dashboards.md")
DS = {"type": "prometheus", "uid": "${datasource}"}
def var_ds():
    return {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
            "hide": 0, "refresh": 1, "regex": "", "options": []}
def var_q(name, label, query, all_value=".*"):
    return {"name": name, "label": label, "type": "query", "datasource": DS,
            "query": {"query": query, "refId": name},
            "includeAll": True, "multi": True, "allValue": all_value,
            "refresh": 2, "sort": 1, "hide": 0, "regex": "", "options": []}
class D:
    def __init__(self, uid, title, desc):
        self.d = {"uid": uid, "title": title, "description": desc, "tags": ["shunt"],
                  "timezone": "browser", "schemaVersion": 39, "version": 1, "editable": True,
                  "graphTooltip": 1, "refresh": "30s", "time": {"from": "now-1h", "to": "now"},
                  "fiscalYearStartMonth": 0, "liveNow": False, "weekStart": "",
                  "annotations": {"list": []}, "links": [], "templating": {"list": [var_ds()]}, "panels": []}
        self.x = 0; self.y = 0; self.id = 1
    def var(self, *a, **k):
        self.d["templating"]["list"].append(var_q(*a, **k))
    def row(self, title):
        if self.x: self.y += 8; self.x = 0
        self.d["panels"].append({"id": self.id, "type": "row", "title": title, "collapsed": False,
                                 "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": []})
        self.id += 1; self.y += 1
    def panel(self, kind, title, desc, targets, unit="short", w=12, h=8, options=None, instant=False):
        if self.x + w > 24: self.x = 0; self.y += h
        p = {"id": self.id, "type": kind, "title": title, "description": desc, "datasource": DS,
             "gridPos": {"h": h, "w": w, "x": self.x, "y": self.y},
             "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
             "options": options or {}, "targets": []}
        for i, (expr, legend) in enumerate(targets):
            t = {"refId": chr(ord("A") + i), "datasource": DS, "expr": expr, "legendFormat": legend}
            if instant or kind in ("table", "stat", "bargauge"):
                t["instant"] = True; t["range"] = False
                if kind == "table": t["format"] = "table"
            else:
                t["range"] = True
            p["targets"].append(t)
        self.d["panels"].append(p)
        self.id += 1; self.x += w
        if self.x >= 24: self.x = 0; self.y += h
    def check(self):
        # What the schema types leave open: every query target has a refId and an expr.
        for p in self.d["panels"]:
            for t in p.get("targets", []):
                assert set(t) <= {"refId", "datasource", "expr", "legendFormat", "instant", "range",
                                  "format"} and t["refId"] and t["expr"], (p["title"], t)
    def save(self, path):
        self.check()
        with open(path, "w") as f: json.dump(self.d, f, indent=2); f.write("\n")

R = "[$__rate_interval]"
# A family that has no series while all is well (no fallback, every policy enforced) is given a
# zero series (from shunt_agent_info, always there), so that its panel shows 0, not "No data".
# ---- Mesh overview
m = D("shunt-mesh-overview", "shunt / Mesh overview",
      "Requests, success rate, latency and TCP traffic where shunt's agents see them: HTTP and gRPC read at L7 where they arrive (reporter=destination), every TCP connection of meshed pods from the kernel, connections the relay carries, bytes the in-node fast path splices.")
m.var("namespace", "Namespace", "label_values(shunt_requests_total, destination_service_namespace)")
m.var("service", "Service", 'label_values(shunt_requests_total{destination_service_namespace=~"$namespace"}, destination_service_name)')
SEL = 'destination_service_namespace=~"$namespace", destination_service_name=~"$service"'
m.row("Requests (L7)")
m.panel("stat", "Requests per second", "All requests to the selected Services, per second.",
        [(f'sum(rate(shunt_requests_total{{{SEL}}}{R}))', "req/s")], unit="reqps", w=6)
m.panel("stat", "Success rate", "Share of requests answered with a status other than 5xx (0: no response).",
        [(f'(sum(rate(shunt_requests_total{{{SEL}, response_code!~"5..|0"}}{R})) or sum(rate(shunt_requests_total{{{SEL}}}{R})) * 0) / sum(rate(shunt_requests_total{{{SEL}}}{R}))', "success")], unit="percentunit", w=6)
m.panel("stat", "p99 latency", "99th percentile of the request duration, from request head to response end.",
        [(f'histogram_quantile(0.99, sum by (le) (rate(shunt_request_duration_seconds_bucket{{{SEL}}}{R})))', "p99")], unit="s", w=6)
m.panel("stat", "Denied requests per second", "Requests answered 403 (or PERMISSION_DENIED) by an AccessPolicy's L7 rules.",
        [(f'sum(rate(shunt_policy_denied_requests_total{R}))', "denied/s")], unit="reqps", w=6)
m.panel("timeseries", "Requests per second by Service", "Per destination Service.",
        [(f'sum by (destination_service_namespace, destination_service_name) (rate(shunt_requests_total{{{SEL}}}{R}))', "{{destination_service_name}}.{{destination_service_namespace}}")], unit="reqps")
m.panel("timeseries", "Requests per second by response code", "HTTP status (0: the exchange broke) and gRPC status.",
        [(f'sum by (response_code, grpc_response_status) (rate(shunt_requests_total{{{SEL}}}{R}))', "{{response_code}} {{grpc_response_status}}")], unit="reqps")
m.panel("timeseries", "Latency by Service (p50, p95, p99)", "Quantiles of shunt_request_duration_seconds.",
        [(f'histogram_quantile({q}, sum by (le, destination_service_namespace, destination_service_name) (rate(shunt_request_duration_seconds_bucket{{{SEL}}}{R})))', f"p{int(q*100)} {{{{destination_service_name}}}}.{{{{destination_service_namespace}}}}") for q in (0.5, 0.95, 0.99)], unit="s", w=24)
m.panel("timeseries", "Success rate by source workload", "Non-5xx share, by calling workload.",
        [(f'(sum by (source_workload_namespace, source_workload) (rate(shunt_requests_total{{{SEL}, response_code!~"5..|0"}}{R})) or sum by (source_workload_namespace, source_workload) (rate(shunt_requests_total{{{SEL}}}{R})) * 0) / sum by (source_workload_namespace, source_workload) (rate(shunt_requests_total{{{SEL}}}{R}))', "{{source_workload}}.{{source_workload_namespace}}")], unit="percentunit")
m.panel("timeseries", "Body bytes per second", "Request and response bodies of the selected Services.",
        [(f'sum(rate(shunt_request_bytes_total{{{SEL}}}{R}))', "requests"), (f'sum(rate(shunt_response_bytes_total{{{SEL}}}{R}))', "responses")], unit="Bps")
m.row("TCP (L4)")
m.panel("timeseries", "TCP bytes per second by workload", "Every TCP connection arriving at a meshed pod (spliced in the node, relayed, or plain), measured by the kernel at the server's end (reporter=destination) when the connection ends: in = client to server.",
        [(f'sum by (destination_workload) (rate(shunt_connection_received_bytes_total{{reporter="destination", {SEL}}}{R}))', "{{destination_workload}} in"), (f'sum by (destination_workload) (rate(shunt_connection_sent_bytes_total{{reporter="destination", {SEL}}}{R}))', "{{destination_workload}} out")], unit="Bps")
m.panel("timeseries", "TCP connections per second", "Established and ended at meshed servers (reporter=destination), and connect() calls of meshed clients that never established.",
        [(f'sum(rate(shunt_connections_opened_total{{reporter="destination", {SEL}}}{R}))', "opened"), (f'sum(rate(shunt_connections_closed_total{{reporter="destination", {SEL}}}{R}))', "closed"), (f'sum(rate(shunt_connection_failures_total{{reporter="source", {SEL}}}{R})) or on() sum(shunt_agent_info) * 0', "failed connects")], unit="cps")
m.panel("timeseries", "Connection setup and TCP round-trip time (p50, p99)", "At meshed clients (reporter=source): setup is connect() to established, RTT TCP's smoothed round-trip time at a connection's end.",
        [(f'histogram_quantile({q}, sum by (le) (rate(shunt_connection_{h}_seconds_bucket{{reporter="source", {SEL}}}{R})))', f"{n} p{int(q*100)}") for h, n in (("setup", "setup"), ("rtt", "RTT")) for q in (0.5, 0.99)], unit="s")
m.panel("timeseries", "TCP retransmissions per second by workload", "Segments retransmitted by meshed servers' sockets, by destination workload.",
        [(f'sum by (destination_workload) (rate(shunt_connection_retransmitted_segments_total{{reporter="destination", {SEL}}}{R}))', "{{destination_workload}}")], unit="ops")
m.panel("timeseries", "Relayed TCP connections per second", "Connections the relay carries where they arrive (its upstream connected), opened and closed.",
        [(f'sum(rate(shunt_tcp_connections_opened_total{{{SEL}}}{R}))', "opened"), (f'sum(rate(shunt_tcp_connections_closed_total{{{SEL}}}{R}))', "closed")], unit="cps")
m.panel("timeseries", "In-node fast path: bytes spliced per second", "Bytes moved socket to socket between meshed pods of one node (sk_msg), by destination workload.",
        [(f'sum by (destination_workload) (rate(shunt_sockmap_redirected_bytes_total{R}))', "{{destination_workload}}")], unit="Bps")
m.panel("timeseries", "In-node fast path: fallback bytes per second by reason", "Sends of spliced sockets that took the normal path, and why.",
        [(f'sum by (reason) (rate(shunt_sockmap_fallback_bytes_total{R})) or on() label_replace(sum(shunt_agent_info) * 0, "reason", "none", "", "")', "{{reason}}")], unit="Bps")
m.save(os.path.join(OUT, "mesh-overview.json"))

# ---- API cost
c = D("shunt-api-cost", "shunt / Per-pod API cost",
      "What each calling pod spent on Services an ApiCostPolicy prices (routes and LLM tokens), known from the mesh: no keys or headers. Cost counters are in whole units of each policy's currency.")
c.var("namespace", "Namespace", "label_values(shunt_api_cost_total, source_workload_namespace)")
c.var("workload", "Workload", 'label_values(shunt_api_cost_total{source_workload_namespace=~"$namespace"}, source_workload)')
c.var("currency", "Currency", "label_values(shunt_api_cost_total, currency)")
S = 'source_workload_namespace=~"$namespace", source_workload=~"$workload"'
SC = S + ', currency=~"$currency"'
c.row("Spend")
c.panel("stat", "Spent in the time range", "By currency.",
        [(f'sum by (currency) (increase(shunt_api_cost_total{{{SC}}}[$__range]))', "{{currency}}")], w=8)
c.panel("stat", "Priced requests in the time range", "Requests to priced Services.",
        [(f'sum(increase(shunt_api_requests_total{{{S}}}[$__range]))', "requests")], w=8)
c.panel("stat", "Unpriced and usage missing", "Requests whose model has no price (unpriced) and successful token requests whose response reported no usage (usage_missing): counted, never guessed.",
        [(f'sum by (result) (increase(shunt_api_requests_total{{{S}, result=~"unpriced|usage_missing"}}[$__range]))', "{{result}}")], w=8)
c.panel("timeseries", "Spend per hour by namespace", "Cost rate, per hour.",
        [(f'sum by (source_workload_namespace, currency) (rate(shunt_api_cost_total{{{SC}}}{R})) * 3600', "{{source_workload_namespace}} {{currency}}")], w=12)
c.panel("timeseries", "Spend per hour by model", "Cost rate, per hour, by model (other: a model the policy does not list).",
        [(f'sum by (model, currency) (rate(shunt_api_cost_total{{{SC}}}{R})) * 3600', "{{model}} {{currency}}")], w=12)
c.panel("table", "Top spenders (workloads)", "The ten calling workloads that spent most in the time range.",
        [(f'topk(10, sum by (source_workload_namespace, source_workload, currency) (increase(shunt_api_cost_total{{{SC}}}[$__range])))', "")], w=12)
c.panel("table", "Spend by pod", "Each calling pod's spend in the time range, by Service and model.",
        [(f'sum by (source_workload_namespace, source_pod, destination_service_name, model, currency) (increase(shunt_api_cost_total{{{SC}}}[$__range]))', "")], w=12)
c.row("Tokens and requests")
c.panel("timeseries", "Tokens per second by type", "As billed: input (not from a cache), cached_input, cache_creation_input, output, reasoning.",
        [(f'sum by (type) (rate(shunt_api_tokens_total{{{S}}}{R}))', "{{type}}")], w=12)
c.panel("table", "Tokens by model and type", "In the time range.",
        [(f'sum by (model, type) (increase(shunt_api_tokens_total{{{S}}}[$__range]))', "")], w=12)
c.panel("timeseries", "Requests per second by outcome", "priced, failed (non-2xx: route price only), unpriced, usage_missing.",
        [(f'sum by (result) (rate(shunt_api_requests_total{{{S}}}{R}))', "{{result}}")], w=12)
c.row("LLM calls (OpenTelemetry GenAI)")
c.panel("timeseries", "Time to first token (p50, p95)", "Streamed calls: from the request head to the first event, measured where the call arrives (gen_ai_server_time_to_first_token_seconds).",
        [(f'histogram_quantile({q}, sum by (le, gen_ai_request_model) (rate(gen_ai_server_time_to_first_token_seconds_bucket{{{S}}}{R})))', f"p{int(q*100)} {{{{gen_ai_request_model}}}}") for q in (0.5, 0.95)], unit="s", w=12)
c.panel("timeseries", "Call duration (p50, p95)", "Request head to response end, by model and operation (gen_ai_client_operation_duration_seconds).",
        [(f'histogram_quantile({q}, sum by (le, gen_ai_request_model, gen_ai_operation_name) (rate(gen_ai_client_operation_duration_seconds_bucket{{{S}}}{R})))', f"p{int(q*100)} {{{{gen_ai_request_model}}}} {{{{gen_ai_operation_name}}}}") for q in (0.5, 0.95)], unit="s", w=12)
c.panel("timeseries", "Tokens per call (mean) by type", "gen_ai_client_token_usage: input (cached included) and output (reasoning included) per call that reported usage.",
        [(f'sum by (gen_ai_token_type) (rate(gen_ai_client_token_usage_sum{{{S}}}{R})) / sum by (gen_ai_token_type) (rate(gen_ai_client_token_usage_count{{{S}}}{R}))', "{{gen_ai_token_type}}")], w=12)
c.panel("timeseries", "Responses read on after their client left", "The upstream bills a stream whose client went away: shunt reads it to its usage (complete), to its bound (cut), or the server ends first (broken).",
        [(f'sum by (result) (rate(shunt_relay_usage_drains_total{R}))', "{{result}}")], w=12)
c.save(os.path.join(OUT, "api-cost.json"))

# ---- Agent health
a = D("shunt-agent-health", "shunt / Agent health",
      "Each node's agent and the controller: policy in sync, maps, fast-path fallbacks, the relay's connections and budgets.")
a.var("instance", "Agent", 'label_values(shunt_agent_info, instance)')
I = 'instance=~"$instance"'
a.row("Policy")
a.panel("stat", "Agents in sync", "Agents whose policy in force is applied and enforced as written (shunt_agent_synced).",
        [(f'sum(shunt_agent_synced{{{I}}})', "in sync"), (f'count(shunt_agent_info{{{I}}})', "agents")], w=6)
a.panel("stat", "Policy version", "The version each agent runs.",
        [(f'shunt_policy_version{{{I}}}', "{{instance}}")], w=6)
a.panel("stat", "Controller: agents connected", "Policy streams the controller serves.",
        [('sum(shunt_controller_connected_agents)', "agents")], w=6)
a.panel("timeseries", "Controller: ACKs and NACKs per second", "A NACK leaves the agent on its last good version.",
        [(f'sum(rate(shunt_controller_acks_total{R}))', "acks"), (f'sum(rate(shunt_controller_nacks_total{R}))', "nacks")], unit="ops", w=6)
a.panel("timeseries", "Policies not enforced as written", "Per agent (a map full, a failed write, a policy it cannot read).",
        [(f'sum by (instance) (shunt_agent_policy_not_enforced{{{I}}}) or sum by (instance) (shunt_agent_info{{{I}}}) * 0', "{{instance}}")], w=12)
a.panel("timeseries", "Rejected policy updates per second", "The previous policy stayed in force.",
        [(f'sum by (instance) (rate(shunt_policy_errors_total{{{I}}}{R}))', "{{instance}}")], unit="ops", w=12)
a.row("Kernel maps and the fast path")
a.panel("bargauge", "Service and policy maps: fill", "Entries against capacity, per map.",
        [(f'max by (map) (shunt_socklb_map_entries{{{I}}}) / max by (map) (shunt_socklb_map_capacity_entries{{{I}}})', "{{map}}")], unit="percentunit", w=12)
a.panel("timeseries", "Sockets in the sockhash", "Spliced sockets now, per agent.",
        [(f'sum by (instance) (shunt_sockhash_sockets{{{I}}})', "{{instance}}")], w=12)
a.panel("timeseries", "Fast-path socket events per second", "Why sockets were kept off the fast path, evicted or found unsafe (docs/fastpath.md).",
        [(f'sum by (event) (rate(shunt_sockhash_socket_events_total{{{I}}}{R}))', "{{event}}")], unit="ops", w=12)
a.panel("timeseries", "Fast-path fallback sends per second by reason", "Sends of spliced sockets that took the normal path.",
        [(f'sum by (reason) (rate(shunt_sockmap_fallback_messages_total{{{I}}}{R})) or on() label_replace(sum(shunt_agent_info{{{I}}}) * 0, "reason", "none", "", "")', "{{reason}}")], unit="ops", w=12)
a.row("Relay (TPROXY capture)")
a.panel("timeseries", "Captured pods and relayed connections", "Pods whose inbound connections are captured, and the connections the relay carries now.",
        [(f'sum by (instance) (shunt_capture_pods{{{I}}})', "pods {{instance}}"), (f'sum by (instance) (shunt_relay_active_connections{{{I}}})', "connections {{instance}}")], w=12)
a.panel("timeseries", "Relay connections per second by outcome", "accepted, refused by policy, over a budget, upstream failures, timeouts, resets.",
        [(f'sum by (result) (rate(shunt_relay_connections_total{{{I}}}{R}))', "{{result}}")], unit="cps", w=12)
a.panel("timeseries", "Relay: buffered bytes and budget waits", "Bytes the relay holds, and reads held back by a pod's buffer budget.",
        [(f'sum by (instance) (shunt_relay_buffered_bytes{{{I}}})', "buffered {{instance}}"), (f'sum by (instance) (rate(shunt_relay_buffer_budget_waits_total{{{I}}}{R}))', "waits/s {{instance}}")], w=12)
a.panel("timeseries", "Metric series folded into other", "Label sets beyond --max-metric-series (requests, connections, cost).",
        [(" + ".join(f'(sum by (instance) (rate(shunt_{fam}_metrics_folded_total{{{I}}}{R})) or on(instance) sum by (instance) (shunt_agent_info{{{I}}}) * 0)' for fam in ("request", "tcp", "connection", "api_cost")), "{{instance}}")], unit="ops", w=12)
a.save(os.path.join(OUT, "agent-health.json"))


# ---- docs/dashboards.md
def docs(dashboards):
    out = ["# Grafana dashboards", "",
           "Three dashboards ship in [deploy/grafana/](../deploy/grafana/) as Grafana JSON (schemaVersion 39;",
           "they go into the Helm chart once it exists): import them into Grafana with a Prometheus data",
           "source that scrapes every agent (`--metrics-addr`) and the controller. They are written by",
           "`deploy/grafana/generate.py`, as this page is (edit it, not the JSON: `ctest -R",
           "DashboardsGenerated` fails when they differ), type-checked against Grafana's published schema",
           "(`@grafana/schema`, offline: `scripts/check-dashboards.sh`, `ctest -R DashboardSchema`), and",
           "every panel's query is run against a real Prometheus server scraping a 2-node test bed after",
           "traffic of each kind went through it, with the template variables set to All and to the first",
           "value each variable finds: none may fail or be empty",
           "(`DashboardsTest.EveryPanelsQueryFindsTheTrafficInARealPrometheus`). Metrics and labels:",
           "[metrics.md](metrics.md).", ""]
    for f, d in dashboards:
        out.append(f"## {d['title']} (`{f}.json`, uid `{d['uid']}`)")
        out.append(d["description"])
        out.append("")
        vars_ = [v for v in d["templating"]["list"] if v["type"] == "query"]
        out.append("Variables: " + ", ".join(
            f"`{v['name']}` (`{v['query']['query']}`, multi, All = `{v['allValue']}`)" for v in vars_)
            + "; `datasource` (a Prometheus data source).")
        out.append("")
        out.append("| panel | shows | query |")
        out.append("| --- | --- | --- |")
        for p in d["panels"]:
            if p["type"] == "row":
                out.append(f"| **{p['title']}** | | |")
                continue
            q = "<br>".join("`" + t["expr"].replace("|", "\\|") + "`" for t in p["targets"])
            out.append(f"| {p['title']} ({p['type']}, {p['fieldConfig']['defaults']['unit']}) | "
                       f"{p['description']} | {q} |")
        out.append("")
    out.append("A family that has no series while all is well (no fast-path fallback, every policy")
    out.append("enforced) is given a zero series from `shunt_agent_info`, so that its panel shows 0")
    out.append("rather than \"No data\".")
    with open(DOCS, "w") as f:
        f.write("\n".join(out) + "\n")

docs([("mesh-overview", m.d), ("api-cost", c.d), ("agent-health", a.d)])
