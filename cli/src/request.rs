//! Building the `GetFlowsRequest` exactly like `hubble observe` 0.12 does.

use std::time::SystemTime;

use periscope_proto::flow::FlowFilter;
use periscope_proto::observer::GetFlowsRequest;
use periscope_proto::observer::get_flows_request::Experimental;
use prost::Message;
use prost_types::{DescriptorProto, FieldMask, FileDescriptorSet, Timestamp};

use crate::filter::{FilterBuilder, FilterError};
use crate::time::{parse_time, timestamp_is_valid};

/// How many flows a plain `observe` asks for (hubble's `FlowPrintCount`).
pub const DEFAULT_NUMBER: u64 = 20;

/// Field mask paths of `--experimental-use-default-field-masks`: what the
/// compact/dict/table printers read.
pub const DEFAULT_FIELD_MASK: &[&str] = &[
    "time",
    "source.identity",
    "source.namespace",
    "source.pod_name",
    "destination.identity",
    "destination.namespace",
    "destination.pod_name",
    "source_service",
    "destination_service",
    "l4",
    "IP",
    "ethernet",
    "l7",
    "Type",
    "node_name",
    "is_reply",
    "event_type",
    "verdict",
    "Summary",
];

/// A request that cannot be built; nothing is sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// A filter flag was rejected (conflict, bad value, stray `--not`).
    #[error(transparent)]
    Filter(#[from] FilterError),
    /// Selector flags that cannot be combined, bad times, bad raw filters...
    #[error("{0}")]
    Invalid(String),
}

/// The selector flags of `observe` (which flows, from when, how many).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    /// `--last N`: the newest N flows (0 = not given).
    pub last: u64,
    /// `--first N`: the oldest N flows (0 = not given).
    pub first: u64,
    /// `--all`: every buffered flow.
    pub all: bool,
    /// `-f/--follow`: keep streaming new flows.
    pub follow: bool,
    /// `--since T` as given (relative duration or absolute time).
    pub since: Option<String>,
    /// `--until T` as given; ignored when following.
    pub until: Option<String>,
}

/// Everything that goes into a `GetFlowsRequest`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowsQuery {
    /// Selector flags.
    pub selector: Selector,
    /// Filter flags in command-line order, as `(flag, value)` with the long flag
    /// name without `--` (`("not", "")`, `("from-ip", "10.0.0.1")`, ...).
    pub filters: Vec<(String, String)>,
    /// `--allowlist` values: JSON FlowFilters (one or more per value).
    pub allowlist: Vec<String>,
    /// `--denylist` values.
    pub denylist: Vec<String>,
    /// `--experimental-field-mask` paths (proto field names of `flow.Flow`).
    pub field_mask: Vec<String>,
}

/// Builds the request hubble 0.12.3 would send, or the error it would print
/// without sending anything. `now` anchors relative `--since`/`--until` times.
///
/// ```
/// use periscope_cli::request::{FlowsQuery, Selector, flows_request};
///
/// let query = FlowsQuery {
///     selector: Selector { follow: true, ..Selector::default() },
///     filters: vec![("verdict".into(), "DROPPED".into())],
///     ..FlowsQuery::default()
/// };
/// let request = flows_request(&query, std::time::SystemTime::now()).unwrap();
/// assert!(request.follow);
/// assert_eq!(request.number, 0);
/// assert_eq!(request.whitelist[0].verdict, [2]);
/// ```
pub fn flows_request(query: &FlowsQuery, now: SystemTime) -> Result<GetFlowsRequest, RequestError> {
    let mut builder = FilterBuilder::default();
    for (flag, value) in &query.filters {
        builder.set(flag, value)?;
    }
    let (mut whitelist, mut blacklist) = builder.finish()?;

    let s = &query.selector;
    let first = s.first > 0;
    let last = s.last > 0;
    let invalid = |m: &str| Err(RequestError::Invalid(m.to_owned()));
    if first && last {
        return invalid("cannot set both --first and --last");
    }
    if first && s.all {
        return invalid("cannot set both --first and --all");
    }
    if first && s.follow {
        return invalid("cannot set both --first and --follow");
    }
    if last && s.all {
        return invalid("cannot set both --last and --all");
    }

    let since = s
        .since
        .as_deref()
        .map(|t| selector_time(t, now, "since"))
        .transpose()?;
    // --until is dropped when following: the stream has no end.
    let until = match s.until.as_deref() {
        Some(t) if !s.follow => Some(selector_time(t, now, "until")?),
        _ => None,
    };

    let mut number = s.last;
    if since.is_none() && until.is_none() && !first {
        if s.all {
            number = u64::MAX;
        } else if number == 0 && !s.follow {
            number = DEFAULT_NUMBER;
        }
    }
    if first {
        number = s.first;
    }

    whitelist.extend(raw_filters(&query.allowlist, "allowlist")?);
    blacklist.extend(raw_filters(&query.denylist, "denylist")?);

    let experimental = if query.field_mask.is_empty() {
        None
    } else {
        Some(Experimental {
            field_mask: Some(flow_field_mask(&query.field_mask)?),
        })
    };

    Ok(GetFlowsRequest {
        number,
        follow: s.follow,
        blacklist,
        whitelist,
        since,
        until,
        first,
        experimental,
    })
}

fn selector_time(text: &str, now: SystemTime, which: &str) -> Result<Timestamp, RequestError> {
    let ts = parse_time(text, now)
        .map_err(|e| RequestError::Invalid(format!("failed to parse the {which} time: {e}")))?;
    if !timestamp_is_valid(&ts) {
        return Err(RequestError::Invalid(format!(
            "failed to convert `{which}` timestamp to proto: out of range"
        )));
    }
    Ok(ts)
}

/// Decodes `--allowlist`/`--denylist` values: protobuf JSON FlowFilters (proto
/// or lowerCamelCase names, enums by name or number), several per value allowed.
pub fn raw_filters(values: &[String], flag: &str) -> Result<Vec<FlowFilter>, RequestError> {
    let mut filters = Vec::new();
    for value in values {
        for filter in serde_json::Deserializer::from_str(value).into_iter::<FlowFilter>() {
            filters.push(filter.map_err(|e| {
                RequestError::Invalid(format!(
                    "invalid --{flag} flag: failed to decode '{value}': {e}"
                ))
            })?);
        }
    }
    Ok(filters)
}

/// A FieldMask over `flow.Flow`, every path checked against the schema (like
/// `fieldmaskpb.New`).
pub fn flow_field_mask(paths: &[String]) -> Result<FieldMask, RequestError> {
    let set = FileDescriptorSet::decode(periscope_proto::FILE_DESCRIPTOR_SET)
        .map_err(|e| RequestError::Invalid(format!("reading the flow schema: {e}")))?;
    for path in paths {
        if !valid_path(&set, ".flow.Flow", path) {
            return Err(RequestError::Invalid(format!(
                "failed to construct field mask: proto: invalid path {path:?} for message \"flow.Flow\""
            )));
        }
    }
    Ok(FieldMask {
        paths: paths.to_vec(),
    })
}

fn valid_path(set: &FileDescriptorSet, message: &str, path: &str) -> bool {
    let mut current = find_message(set, message);
    let mut segments = path.split('.').peekable();
    while let Some(segment) = segments.next() {
        let Some(message) = current else {
            return false;
        };
        let Some(field) = message.field.iter().find(|f| f.name() == segment) else {
            return false;
        };
        if segments.peek().is_some() {
            // Only singular message fields can be descended into.
            let repeated = field.label() == prost_types::field_descriptor_proto::Label::Repeated;
            if repeated || field.type_name().is_empty() {
                return false;
            }
            current = find_message(set, field.type_name());
        }
    }
    true
}

/// A message descriptor by full name (`.flow.Flow`, `.flow.Layer4`...).
fn find_message<'a>(set: &'a FileDescriptorSet, full_name: &str) -> Option<&'a DescriptorProto> {
    fn search<'a>(
        prefix: &str,
        messages: &'a [DescriptorProto],
        full_name: &str,
    ) -> Option<&'a DescriptorProto> {
        messages.iter().find_map(|m| {
            let name = format!("{prefix}.{}", m.name());
            if name == full_name {
                Some(m)
            } else if full_name.starts_with(&format!("{name}.")) {
                search(&name, &m.nested_type, full_name)
            } else {
                None
            }
        })
    }
    set.file.iter().find_map(|file| {
        let prefix = format!(".{}", file.package());
        full_name
            .starts_with(&format!("{prefix}."))
            .then(|| search(&prefix, &file.message_type, full_name))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_mask_paths() {
        let ok = |p: &[&str]| flow_field_mask(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let defaults: Vec<&str> = DEFAULT_FIELD_MASK.to_vec();
        assert!(ok(&defaults).is_ok());
        assert!(ok(&["l4.TCP.flags.SYN", "IP.ipVersion", "l7.http.url"]).is_ok());
        assert!(ok(&["source.pod"]).is_err());
        assert!(ok(&["time.seconds.x"]).is_err());
        assert!(ok(&["source.workloads.name"]).is_err());
        assert!(ok(&["ip"]).is_err());
    }
}
