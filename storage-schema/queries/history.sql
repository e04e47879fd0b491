-- History: the flows in [since_ns, until_ns] that match the common filters, as full FlowRows
-- (the relay turns them back into Flows with FlowRow::to_flow).
--
-- The select list is exactly FlowRow's columns, in FlowRow's order (RowBinary reads by position;
-- a unit test keeps the two in step).
-- Parameters:
--   since_ns, until_ns  Int64   window, Unix nanoseconds, both ends inclusive
--   cluster             String  only this cluster ('' = any)
--   node_name           String  only flows observed on this node ('' = any)
--   namespace           String  only flows with an end in this namespace ('' = any)
--   pod                 String  only flows with an end that is this pod ('' = any; with
--                               namespace, the pod of that namespace)
--   verdict             String  only this verdict, e.g. DROPPED ('' = any)
--   descending          UInt8   1: newest first (Hubble's --last), 0: oldest first
--   paged               UInt8   1: only rows after the cursor below (keyset paging), 0: no cursor
--   after_time_ns       Int64   cursor: time_ns of the last row of the previous page
--   after_uuid          String  cursor: uuid of the last row of the previous page
--   limit               UInt32  at most this many rows
-- Rows come in (time_ns, uuid) order, time_ns descending when `descending`, uuid always
-- ascending; "after the cursor" means later in that order, so the next page of a long window
-- starts right after the last row of the previous one and no row is read twice or skipped.
-- Exact before merges: LIMIT 1 BY uuid returns each flow once even when a replayed copy has not
-- been merged away yet.
--
-- clickhouse-client --database periscope --param_since_ns=1700000000000000000 \
--   --param_until_ns=1700003600000000000 --param_cluster= --param_node_name= \
--   --param_namespace=shop --param_pod= --param_verdict=DROPPED --param_descending=1 \
--   --param_paged=0 --param_after_time_ns=0 --param_after_uuid= --param_limit=100 \
--   --queries-file history.sql
SELECT
    uuid, time_ns, cluster, node_name, verdict, drop_reason, drop_reason_desc, auth_type,
    flow_type, event_type, event_sub_type, traffic_direction, trace_observation_point,
    debug_capture_point, sock_xlate_point, policy_match_type, is_reply, reply, ethernet_source,
    ethernet_destination, ip_version, source_ip, destination_ip, ip_encrypted, protocol,
    source_port, destination_port, tcp_flags, icmp_type, icmp_code, source_endpoint_id,
    source_identity, source_namespace, source_pod_name, source_labels, source_workload,
    source_workload_kind, source_workload_names, source_workload_kinds, source_names,
    source_service_name, source_service_namespace, destination_endpoint_id, destination_identity,
    destination_namespace, destination_pod_name, destination_labels, destination_workload,
    destination_workload_kind, destination_workload_names, destination_workload_kinds,
    destination_names, destination_service_name, destination_service_namespace, interface_index,
    interface_name, proxy_port, trace_id, socket_cookie, cgroup_id, ingress_allowed_by,
    ingress_allowed_by_namespaces, ingress_allowed_by_kinds, ingress_allowed_by_revisions,
    ingress_allowed_by_labels, egress_allowed_by, egress_allowed_by_namespaces,
    egress_allowed_by_kinds, egress_allowed_by_revisions, egress_allowed_by_labels,
    ingress_denied_by, ingress_denied_by_namespaces, ingress_denied_by_kinds,
    ingress_denied_by_revisions, ingress_denied_by_labels, egress_denied_by,
    egress_denied_by_namespaces, egress_denied_by_kinds, egress_denied_by_revisions,
    egress_denied_by_labels, l7_type, l7_protocol, l7_latency_ns, dns_query, dns_ips, dns_ttl,
    dns_cnames, dns_observation_source, dns_rcode, dns_qtypes, dns_rrtypes, http_code, http_method,
    http_url, http_protocol, http_header_keys, http_header_values, kafka_error_code,
    kafka_api_version, kafka_api_key, kafka_correlation_id, kafka_topic, summary, bytes, packets
FROM flows
WHERE time >= toDateTime(intDiv({since_ns:Int64}, 1000000000))
    AND time < toDateTime(intDiv({until_ns:Int64}, 1000000000) + 1)
    AND time_ns >= {since_ns:Int64}
    AND time_ns <= {until_ns:Int64}
    AND ({cluster:String} = '' OR cluster = {cluster:String})
    AND ({node_name:String} = '' OR node_name = {node_name:String})
    AND ({verdict:String} = '' OR verdict = {verdict:String})
    AND ({namespace:String} = ''
        OR source_namespace = {namespace:String}
        OR destination_namespace = {namespace:String})
    AND ({pod:String} = ''
        OR (source_pod_name = {pod:String}
            AND ({namespace:String} = '' OR source_namespace = {namespace:String}))
        OR (destination_pod_name = {pod:String}
            AND ({namespace:String} = '' OR destination_namespace = {namespace:String})))
    AND ({paged:UInt8} = 0
        OR (time_ns = {after_time_ns:Int64} AND uuid > {after_uuid:String})
        OR ({descending:UInt8} = 1 AND time_ns < {after_time_ns:Int64})
        OR ({descending:UInt8} = 0 AND time_ns > {after_time_ns:Int64}))
ORDER BY if({descending:UInt8} = 1, -time_ns, time_ns), uuid
LIMIT 1 BY uuid
LIMIT {limit:UInt32}
