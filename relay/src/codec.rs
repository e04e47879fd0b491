//! GetFlows responses in their encoded form: what the relay forwards from peers to clients.
//!
//! A relay in the middle of a GetFlows stream only needs, of each response, its merge key
//! (time and node name) and which `response_types` variant it carries. Decoding whole `Flow`s
//! (a few dozen strings each) only to encode them again for the client was most of the relay's
//! work, so on the forwarding path responses stay encoded:
//!
//! - [`EncodedResponse::parse`] keeps the bytes as received (a zero-copy slice of the gRPC
//!   receive buffer, which tonic allocates 8 KiB at a time or one message at a time: a held
//!   response keeps that allocation alive, shared with its neighbours in the stream) and reads
//!   only the top-level fields of the response (`node_name` = 1000,
//!   `time` = 1001, the variant), and the flow's own `time` (1) / `node_name` (11) only when the
//!   response lacks them;
//! - [`EncodedResponse::renamed`] rewrites node names (`cluster/node`) by splicing the two
//!   `node_name` fields, without decoding anything else;
//! - [`FlowsCodec`] is the tonic codec of both ends: the relay's client side decodes peers'
//!   responses into [`EncodedResponse`]s, its server side writes them out as they are.
//!
//! Everything that needs the flow itself decodes it into the one proto `Flow`
//! ([`EncodedResponse::decode`]): the ingest stream (store, window, alerts), node-name filters
//! applied by the relay, the rare node status and lost events. Malformed bytes are rejected
//! where the relay reads them (never a panic); a flow the relay does not look into is passed on
//! as the peer sent it, for the client to decode, as a proxy would.
use std::borrow::Cow;
use std::marker::PhantomData;
use std::ops::Range;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use periscope_proto::observer::{GetFlowsRequest, GetFlowsResponse};
use prost::Message;
use prost::encoding::{WireType, decode_key, decode_varint, encode_key, encode_varint};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// `GetFlowsResponse.flow`.
const RESPONSE_FLOW: u32 = 1;
/// `GetFlowsResponse.node_status`.
const RESPONSE_NODE_STATUS: u32 = 2;
/// `GetFlowsResponse.lost_events`.
const RESPONSE_LOST_EVENTS: u32 = 3;
/// `GetFlowsResponse.node_name`.
const RESPONSE_NODE_NAME: u32 = 1000;
/// `GetFlowsResponse.time`.
const RESPONSE_TIME: u32 = 1001;
/// `Flow.time`.
const FLOW_TIME: u32 = 1;
/// `Flow.node_name`.
const FLOW_NODE_NAME: u32 = 11;
/// `Flow.uuid`.
const FLOW_UUID: u32 = 34;

/// Which `response_types` variant a response carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A flow.
    Flow,
    /// A node status event.
    NodeStatus,
    /// A lost events notice.
    LostEvents,
    /// None (or one this relay does not know).
    Other,
}

/// One encoded `GetFlowsResponse` and its merge key.
#[derive(Clone, Debug)]
pub struct EncodedResponse {
    bytes: Bytes,
    kind: Kind,
    /// `time` of the response, else of the flow (ns since the epoch, 0 when unset).
    time: i128,
    /// `node_name` of the response, else of the flow, as a range of `bytes` (valid UTF-8).
    node: Range<u32>,
}

/// A malformed response.
fn malformed(what: &str) -> Status {
    Status::internal(format!("malformed GetFlowsResponse: {what}"))
}

/// One field of an encoded message.
struct Field {
    number: u32,
    wire: WireType,
    /// The whole field (key included).
    span: Range<usize>,
    /// The payload of a length-delimited field, the value bytes of the others.
    value: Range<usize>,
}

/// The top-level fields of the encoded message `buf` (bounds-checked; groups are refused).
fn fields(buf: &[u8]) -> impl Iterator<Item = Result<Field, Status>> + '_ {
    let mut pos = 0;
    std::iter::from_fn(move || {
        if pos >= buf.len() {
            return None;
        }
        let start = pos;
        let mut rest = &buf[pos..];
        let field = (|| {
            let (number, wire) = decode_key(&mut rest).map_err(|e| malformed(&e.to_string()))?;
            let mut value_start = buf.len() - rest.len();
            let value_len = match wire {
                WireType::Varint => {
                    decode_varint(&mut rest).map_err(|e| malformed(&e.to_string()))?;
                    buf.len() - rest.len() - value_start
                }
                WireType::SixtyFourBit => 8,
                WireType::ThirtyTwoBit => 4,
                WireType::LengthDelimited => {
                    let len = decode_varint(&mut rest).map_err(|e| malformed(&e.to_string()))?;
                    value_start = buf.len() - rest.len();
                    usize::try_from(len).map_err(|_| malformed("field length"))?
                }
                WireType::StartGroup | WireType::EndGroup => {
                    return Err(malformed("groups are not supported"));
                }
            };
            let end = value_start
                .checked_add(value_len)
                .filter(|end| *end <= buf.len())
                .ok_or_else(|| malformed("truncated field"))?;
            Ok(Field {
                number,
                wire,
                span: start..end,
                value: value_start..end,
            })
        })();
        match &field {
            Ok(f) => pos = f.span.end,
            // Stop after the first error.
            Err(_) => pos = buf.len(),
        }
        Some(field)
    })
}

/// ns since the epoch of an encoded `google.protobuf.Timestamp`.
fn timestamp_nanos(buf: &[u8]) -> Result<i128, Status> {
    let (mut seconds, mut nanos) = (0i64, 0i32);
    for f in fields(buf) {
        let f = f?;
        if f.wire != WireType::Varint {
            continue;
        }
        let v = decode_varint(&mut &buf[f.value.clone()]).map_err(|e| malformed(&e.to_string()))?;
        match f.number {
            1 => seconds = v as i64,
            2 => nanos = v as i32,
            _ => {}
        }
    }
    Ok(seconds as i128 * 1_000_000_000 + nanos as i128)
}

/// A string field's value, checked.
fn string(buf: &[u8], f: &Field) -> Result<Range<u32>, Status> {
    if f.wire != WireType::LengthDelimited {
        return Err(malformed("node_name is not a string"));
    }
    std::str::from_utf8(&buf[f.value.clone()]).map_err(|_| malformed("node_name is not UTF-8"))?;
    Ok(f.value.start as u32..f.value.end as u32)
}

impl EncodedResponse {
    /// Reads the merge key of the encoded response `bytes`, keeping the bytes.
    pub fn parse(bytes: Bytes) -> Result<Self, Status> {
        if u32::try_from(bytes.len()).is_err() {
            return Err(malformed("larger than 4 GiB"));
        }
        let mut kind = Kind::Other;
        let mut flow = None;
        let mut time = None;
        let mut node: Option<Range<u32>> = None;
        for f in fields(&bytes) {
            let f = f?;
            match (f.number, f.wire) {
                (RESPONSE_FLOW, WireType::LengthDelimited) => {
                    kind = Kind::Flow;
                    flow = Some(f.value.clone());
                }
                (RESPONSE_NODE_STATUS, WireType::LengthDelimited) => kind = Kind::NodeStatus,
                (RESPONSE_LOST_EVENTS, WireType::LengthDelimited) => kind = Kind::LostEvents,
                (RESPONSE_NODE_NAME, _) => node = Some(string(&bytes, &f)?),
                (RESPONSE_TIME, WireType::LengthDelimited) => {
                    time = Some(timestamp_nanos(&bytes[f.value.clone()])?);
                }
                _ => {}
            }
        }
        // A response without time or node name: the flow's (like `GetFlowsResponse` decoding
        // and reading `r.time.or(f.time)`).
        if let (Kind::Flow, Some(flow)) = (kind, flow)
            && (time.is_none() || node.as_ref().is_none_or(|n| n.is_empty()))
        {
            let payload = &bytes[flow.clone()];
            for f in fields(payload) {
                let f = f?;
                match (f.number, f.wire) {
                    (FLOW_TIME, WireType::LengthDelimited) if time.is_none() => {
                        time = Some(timestamp_nanos(&payload[f.value.clone()])?);
                    }
                    (FLOW_NODE_NAME, _) if node.as_ref().is_none_or(|n| n.is_empty()) => {
                        let r = string(payload, &f)?;
                        node = Some(r.start + flow.start as u32..r.end + flow.start as u32);
                    }
                    _ => {}
                }
            }
        }
        Ok(EncodedResponse {
            bytes,
            kind,
            time: time.unwrap_or(0),
            node: node.unwrap_or(0..0),
        })
    }

    /// Encodes `r`.
    pub fn encode(r: &GetFlowsResponse) -> Self {
        Self::parse(Bytes::from(r.encode_to_vec())).expect("an encoded GetFlowsResponse parses")
    }

    /// Decodes the whole response.
    pub fn decode(&self) -> Result<GetFlowsResponse, Status> {
        GetFlowsResponse::decode(self.bytes.clone()).map_err(|e| malformed(&e.to_string()))
    }

    /// The variant it carries.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Time (ns since the epoch): the response's, else the flow's; 0 when unset.
    pub fn time(&self) -> i128 {
        self.time
    }

    /// Node name: the response's, else the flow's.
    pub fn node_name(&self) -> &str {
        let r = self.node.start as usize..self.node.end as usize;
        std::str::from_utf8(&self.bytes[r]).unwrap_or_default()
    }

    /// The encoded bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The flow's uuid (empty when it has none or is not a flow).
    pub fn flow_uuid(&self) -> Result<&str, Status> {
        let Some(flow) = self.flow_payload()? else {
            return Ok("");
        };
        let mut uuid = "";
        for f in fields(flow) {
            let f = f?;
            if f.number == FLOW_UUID && f.wire == WireType::LengthDelimited {
                uuid = std::str::from_utf8(&flow[f.value.clone()])
                    .map_err(|_| malformed("uuid is not UTF-8"))?;
            }
        }
        Ok(uuid)
    }

    fn flow_payload(&self) -> Result<Option<&[u8]>, Status> {
        if self.kind != Kind::Flow {
            return Ok(None);
        }
        let mut flow = None;
        for f in fields(&self.bytes) {
            let f = f?;
            if f.number == RESPONSE_FLOW && f.wire == WireType::LengthDelimited {
                flow = Some(&self.bytes[f.value]);
            }
        }
        Ok(flow)
    }

    /// A flow response with the node names of the response and of the flow renamed by
    /// `rename` (which borrows when a name stays); None when no name changes. Only the two
    /// `node_name` fields are rewritten, the rest is copied as it is.
    pub fn renamed<'a>(
        &'a self,
        rename: impl Fn(&'a str) -> Cow<'a, str>,
    ) -> Result<Option<EncodedResponse>, Status> {
        debug_assert_eq!(self.kind, Kind::Flow, "only flows are renamed in place");
        let name = |buf: &'a [u8], f: &Field| -> Result<Option<String>, Status> {
            let old = std::str::from_utf8(&buf[f.value.clone()])
                .map_err(|_| malformed("node_name is not UTF-8"))?;
            Ok(match rename(old) {
                Cow::Borrowed(_) => None,
                Cow::Owned(new) => Some(new),
            })
        };
        // What changes: (span in `bytes`, replacement field).
        let bytes: &'a [u8] = &self.bytes;
        let mut edits: Vec<(Range<usize>, BytesMut)> = Vec::new();
        for f in fields(bytes) {
            let f = f?;
            match (f.number, f.wire) {
                (RESPONSE_NODE_NAME, WireType::LengthDelimited) => {
                    if let Some(new) = name(bytes, &f)? {
                        edits.push((f.span, string_field(RESPONSE_NODE_NAME, &new)));
                    }
                }
                (RESPONSE_FLOW, WireType::LengthDelimited) => {
                    let flow = &bytes[f.value.clone()];
                    let mut inner: Vec<(Range<usize>, BytesMut)> = Vec::new();
                    for g in fields(flow) {
                        let g = g?;
                        if g.number == FLOW_NODE_NAME
                            && g.wire == WireType::LengthDelimited
                            && let Some(new) = name(flow, &g)?
                        {
                            inner.push((g.span, string_field(FLOW_NODE_NAME, &new)));
                        }
                    }
                    if !inner.is_empty() {
                        let payload = splice(flow, &inner);
                        let mut field = BytesMut::with_capacity(payload.len() + 8);
                        encode_key(RESPONSE_FLOW, WireType::LengthDelimited, &mut field);
                        encode_varint(payload.len() as u64, &mut field);
                        field.put_slice(&payload);
                        edits.push((f.span, field));
                    }
                }
                _ => {}
            }
        }
        if edits.is_empty() {
            return Ok(None);
        }
        Self::parse(splice(bytes, &edits).freeze()).map(Some)
    }
}

/// An encoded string field.
fn string_field(number: u32, s: &str) -> BytesMut {
    let mut b = BytesMut::with_capacity(s.len() + 8);
    encode_key(number, WireType::LengthDelimited, &mut b);
    encode_varint(s.len() as u64, &mut b);
    b.put_slice(s.as_bytes());
    b
}

/// `buf` with the ranges of `edits` (in order, not overlapping) replaced.
fn splice(buf: &[u8], edits: &[(Range<usize>, BytesMut)]) -> BytesMut {
    let extra: usize = edits.iter().map(|(_, b)| b.len()).sum();
    let mut out = BytesMut::with_capacity(buf.len() + extra);
    let mut at = 0;
    for (span, with) in edits {
        out.put_slice(&buf[at..span.start]);
        out.put_slice(with);
        at = span.end;
    }
    out.put_slice(&buf[at..]);
    out
}

/// A message as it goes over the wire in one direction of [`FlowsCodec`].
pub trait Wire: Sized + Send + 'static {
    /// Writes the message.
    fn write(self, dst: &mut EncodeBuf<'_>) -> Result<(), Status>;
    /// Reads the message from exactly its bytes.
    fn read(src: &mut DecodeBuf<'_>) -> Result<Self, Status>;
}

impl Wire for EncodedResponse {
    fn write(self, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&self.bytes);
        Ok(())
    }

    fn read(src: &mut DecodeBuf<'_>) -> Result<Self, Status> {
        // Zero-copy: a slice of the stream's receive buffer.
        EncodedResponse::parse(src.copy_to_bytes(src.remaining()))
    }
}

impl Wire for GetFlowsRequest {
    fn write(self, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        self.encode(dst)
            .map_err(|e| Status::internal(format!("encoding GetFlowsRequest: {e}")))
    }

    fn read(src: &mut DecodeBuf<'_>) -> Result<Self, Status> {
        GetFlowsRequest::decode(src).map_err(|e| Status::internal(e.to_string()))
    }
}

/// The GetFlows codec of the relay: `E` goes out, `D` comes in. The client side
/// (`FlowsCodec<GetFlowsRequest, EncodedResponse>`) keeps peers' responses encoded; the server
/// side (`FlowsCodec<EncodedResponse, GetFlowsRequest>`) writes them out as they are.
pub struct FlowsCodec<E, D>(PhantomData<fn(E) -> D>);

impl<E, D> Default for FlowsCodec<E, D> {
    fn default() -> Self {
        FlowsCodec(PhantomData)
    }
}

/// One direction of [`FlowsCodec`].
pub struct WireCoder<T>(PhantomData<fn(T) -> T>);

impl<T: Wire> Encoder for WireCoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.write(dst)
    }
}

impl<T: Wire> Decoder for WireCoder<T> {
    type Item = T;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<T>, Status> {
        T::read(src).map(Some)
    }
}

impl<E: Wire, D: Wire> Codec for FlowsCodec<E, D> {
    type Encode = E;
    type Decode = D;
    type Encoder = WireCoder<E>;
    type Decoder = WireCoder<D>;

    fn encoder(&mut self) -> WireCoder<E> {
        WireCoder(PhantomData)
    }

    fn decoder(&mut self) -> WireCoder<D> {
        WireCoder(PhantomData)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use periscope_proto::flow::{Endpoint, Flow, LostEvent, LostEventSource};
    use periscope_proto::observer::get_flows_response::ResponseTypes;
    use periscope_proto::relay::NodeStatusEvent;
    use proptest::prelude::*;
    use prost_types::Timestamp;

    fn ts(seconds: i64, nanos: i32) -> Option<Timestamp> {
        Some(Timestamp { seconds, nanos })
    }

    fn flow(node: &str, time: Option<Timestamp>) -> Flow {
        Flow {
            time,
            node_name: node.into(),
            uuid: "u-1".into(),
            source: Some(Endpoint {
                pod_name: "web-0".into(),
                labels: vec!["k8s:app=web".into()],
                ..Default::default()
            }),
            summary: "TCP Flags: SYN".into(),
            ..Default::default()
        }
    }

    fn encode(r: &GetFlowsResponse) -> EncodedResponse {
        EncodedResponse::parse(Bytes::from(r.encode_to_vec())).unwrap()
    }

    #[test]
    fn keys_from_the_response_else_from_the_flow() {
        let f = flow("n1", ts(5, 7));
        let r = encode(&GetFlowsResponse {
            node_name: "outer".into(),
            time: ts(9, 1),
            response_types: Some(ResponseTypes::Flow(f.clone())),
        });
        assert_eq!(r.kind(), Kind::Flow);
        assert_eq!((r.time(), r.node_name()), (9_000_000_001, "outer"));
        assert_eq!(r.flow_uuid().unwrap(), "u-1");
        // Without them (e.g. a field mask on the response): the flow's.
        let r = encode(&GetFlowsResponse {
            response_types: Some(ResponseTypes::Flow(f)),
            ..Default::default()
        });
        assert_eq!((r.time(), r.node_name()), (5_000_000_007, "n1"));
        // Negative times (before the epoch) survive the varint.
        let r = encode(&GetFlowsResponse {
            time: ts(-2, 500),
            response_types: Some(ResponseTypes::Flow(flow("n1", None))),
            ..Default::default()
        });
        assert_eq!(r.time(), -2_000_000_000 + 500);
        let r = encode(&GetFlowsResponse {
            node_name: "relay".into(),
            time: ts(1, 0),
            response_types: Some(ResponseTypes::NodeStatus(NodeStatusEvent {
                node_names: vec!["n1".into()],
                ..Default::default()
            })),
        });
        assert_eq!(r.kind(), Kind::NodeStatus);
        assert_eq!(r.flow_uuid().unwrap(), "");
        let r = encode(&GetFlowsResponse {
            response_types: Some(ResponseTypes::LostEvents(LostEvent {
                source: LostEventSource::PerfEventRingBuffer as i32,
                num_events_lost: 3,
                ..Default::default()
            })),
            ..Default::default()
        });
        assert_eq!(r.kind(), Kind::LostEvents);
        assert_eq!(encode(&GetFlowsResponse::default()).kind(), Kind::Other);
    }

    #[test]
    fn renaming_rewrites_both_node_names_only() {
        let f = flow("n1", ts(5, 7));
        let whole = GetFlowsResponse {
            node_name: "n1".into(),
            time: ts(5, 7),
            response_types: Some(ResponseTypes::Flow(f.clone())),
        };
        let r = encode(&whole);
        fn to_c1(n: &str) -> Cow<'_, str> {
            if n.contains('/') {
                Cow::Borrowed(n)
            } else {
                Cow::Owned(format!("c1/{n}"))
            }
        }
        let renamed = r.renamed(to_c1).unwrap().expect("renamed");
        assert_eq!(renamed.node_name(), "c1/n1");
        assert_eq!(renamed.time(), r.time());
        let mut want = whole.clone();
        want.node_name = "c1/n1".into();
        if let Some(ResponseTypes::Flow(f)) = &mut want.response_types {
            f.node_name = "c1/n1".into();
        }
        assert_eq!(renamed.decode().unwrap(), want);
        // Nothing to rename: None, and the bytes stay.
        assert!(renamed.renamed(to_c1).unwrap().is_none());
        // An empty name stays empty (absent).
        let anonymous = encode(&GetFlowsResponse {
            response_types: Some(ResponseTypes::Flow(flow("", None))),
            ..Default::default()
        });
        assert!(anonymous.renamed(Cow::Borrowed).unwrap().is_none());
    }

    fn arb_flow() -> impl Strategy<Value = (GetFlowsResponse, bool)> {
        (
            "[a-z/]{0,12}",
            "[a-z]{0,12}",
            proptest::option::of((-5i64..5_000_000_000, 0i32..1_000_000_000)),
            proptest::option::of((-5i64..5_000_000_000, 0i32..1_000_000_000)),
            "[a-z0-9-]{0,40}",
            any::<bool>(),
        )
            .prop_map(|(outer, inner, t1, t2, uuid, rename)| {
                let mut f = flow(
                    &inner,
                    t2.map(|(s, n)| Timestamp {
                        seconds: s,
                        nanos: n,
                    }),
                );
                f.uuid = uuid;
                (
                    GetFlowsResponse {
                        node_name: outer,
                        time: t1.map(|(s, n)| Timestamp {
                            seconds: s,
                            nanos: n,
                        }),
                        response_types: Some(ResponseTypes::Flow(f)),
                    },
                    rename,
                )
            })
    }

    proptest! {
        #[test]
        fn agrees_with_decoding((r, _) in arb_flow()) {
            let e = encode(&r);
            let Some(ResponseTypes::Flow(f)) = &r.response_types else { unreachable!() };
            let t = r.time.as_ref().or(f.time.as_ref());
            let node = if r.node_name.is_empty() { &f.node_name } else { &r.node_name };
            prop_assert_eq!(e.time(), crate::fanout::nanos(t));
            prop_assert_eq!(e.node_name(), node.as_str());
            prop_assert_eq!(e.flow_uuid().unwrap(), f.uuid.as_str());
            prop_assert_eq!(e.decode().unwrap(), r);
        }

        #[test]
        fn renaming_equals_renaming_the_decoded((r, prefix) in arb_flow()) {
            let rename = |n: &str| -> String {
                if prefix && !n.is_empty() && !n.contains('/') { format!("x/{n}") } else { n.to_string() }
            };
            let e = encode(&r);
            let got = e
                .renamed(|n| {
                    let new = rename(n);
                    if new == n { Cow::Borrowed(n) } else { Cow::Owned(new) }
                })
                .unwrap()
                .unwrap_or(e);
            let mut want = r.clone();
            want.node_name = rename(&want.node_name);
            if let Some(ResponseTypes::Flow(f)) = &mut want.response_types {
                f.node_name = rename(&f.node_name);
            }
            prop_assert_eq!(got.decode().unwrap(), want);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(e) = EncodedResponse::parse(Bytes::from(bytes)) {
                let _ = (e.node_name(), e.time(), e.flow_uuid(), e.decode());
                if e.kind() == Kind::Flow {
                    let _ = e.renamed(|n| Cow::Owned(format!("c/{n}")));
                }
            }
        }
    }
}
