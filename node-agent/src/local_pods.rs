//! The agent's own endpoints without a topology file (a DaemonSet): the pods of the Kubernetes
//! source whose `spec.nodeName` is this node, each attached at the host-side interface its CNI
//! routes the pod's address to.
//!
//! CNIs that give every pod a veth (Calico, Cilium's veth mode, the test bed) install a host
//! route per pod address to the pod's host-side interface (`10.0.1.5 dev cali1234 scope link`).
//! The agent reads the routing table of the pods' network namespace (`--netns`) over netlink
//! (an `RTM_GETROUTE` and an `RTM_GETLINK` dump on a `NETLINK_ROUTE` socket) and, per pod
//! address, takes the most specific route of the main table: a host route (`/32`, `/128`)
//! without a gateway to a `veth` (or `netkit`) device names the pod's interface. Anything else
//! (no route yet: the CNI is still setting the pod up; only a subnet or default route; a
//! gateway; a device that is not a veth) leaves the pod unattached, with the reason, until a
//! later look finds its route.
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use periscope_topology::Pod;

/// The routing table the main table's unicast routes and the interfaces of a namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteTable {
    /// Routes (every table; [`place_ip`] looks at the main table's unicast routes only).
    pub routes: Vec<Route>,
    /// Interfaces by index.
    pub links: BTreeMap<u32, Link>,
}

/// One route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Destination prefix (the unspecified address of the family for a default route).
    pub dst: IpAddr,
    /// Prefix length.
    pub prefix_len: u8,
    /// Output interface index (None: multipath or unreachable routes).
    pub oif: Option<u32>,
    /// Gateway.
    pub gateway: Option<IpAddr>,
    /// Routing table id.
    pub table: u32,
    /// Route type (`RTN_UNICAST` = 1, …).
    pub kind: u8,
}

/// An interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// Name.
    pub name: String,
    /// Link kind (`veth`, `bridge`, `netkit`…; None for physical devices and loopback).
    pub kind: Option<String>,
}

/// The main routing table's id.
pub const RT_TABLE_MAIN: u32 = 254;
/// Unicast route type.
pub const RTN_UNICAST: u8 = 1;
/// Link kinds of per-pod host interfaces.
pub const POD_LINK_KINDS: &[&str] = &["veth", "netkit"];

/// Why a pod address has no interface to attach to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotAttached {
    /// No route covers the address (the CNI has not set the pod up yet).
    NoRoute,
    /// The most specific route is a subnet or default route, not one for the pod.
    NoHostRoute(String),
    /// The route goes via a gateway.
    Gateway(String),
    /// The route names no single device (multipath, unreachable).
    NoDevice(String),
    /// The route's device is not a veth.
    NotVeth {
        /// The route.
        route: String,
        /// The device's kind.
        kind: Option<String>,
    },
    /// Another pod is attached at the same interface.
    InterfaceTaken {
        /// The interface.
        ifname: String,
        /// The pod attached there.
        pod: String,
    },
}

impl fmt::Display for NotAttached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotAttached::NoRoute => write!(f, "no route (the CNI has not set the pod up yet?)"),
            NotAttached::NoHostRoute(r) => write!(f, "only route is {r}, not a per-pod route"),
            NotAttached::Gateway(r) => write!(f, "routed via a gateway ({r}), not to a pod veth"),
            NotAttached::NoDevice(r) => write!(f, "route {r} names no single device"),
            NotAttached::NotVeth { route, kind } => write!(
                f,
                "route {route} goes to a device of kind {}, not a pod veth",
                kind.as_deref().unwrap_or("none (physical or loopback)")
            ),
            NotAttached::InterfaceTaken { ifname, pod } => {
                write!(f, "its interface {ifname} is attached for {pod}")
            }
        }
    }
}

impl RouteTable {
    fn describe(&self, r: &Route) -> String {
        let mut s = format!("{}/{}", r.dst, r.prefix_len);
        if r.prefix_len == 0 {
            s = "default".into();
        }
        if let Some(gw) = r.gateway {
            s.push_str(&format!(" via {gw}"));
        }
        if let Some(oif) = r.oif {
            match self.links.get(&oif) {
                Some(l) => s.push_str(&format!(" dev {}", l.name)),
                None => s.push_str(&format!(" dev #{oif}")),
            }
        }
        s
    }
}

/// Whether `prefix/len` contains `ip` (same family).
fn contains(prefix: IpAddr, len: u8, ip: IpAddr) -> bool {
    match (prefix, ip) {
        (IpAddr::V4(p), IpAddr::V4(a)) => {
            let len = u32::from(len.min(32));
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(p) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(p), IpAddr::V6(a)) => {
            let len = u32::from(len.min(128));
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            u128::from(p) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

/// The host-side interface of the pod address `ip`: the device of the most specific unicast
/// route of the main table covering it, when that is a host route without gateway to a veth.
pub fn place_ip(table: &RouteTable, ip: IpAddr) -> Result<String, NotAttached> {
    let route = table
        .routes
        .iter()
        .filter(|r| r.table == RT_TABLE_MAIN && r.kind == RTN_UNICAST)
        .filter(|r| contains(r.dst, r.prefix_len, ip))
        .max_by_key(|r| r.prefix_len)
        .ok_or(NotAttached::NoRoute)?;
    let host_len = if ip.is_ipv4() { 32 } else { 128 };
    let described = table.describe(route);
    if route.prefix_len != host_len {
        return Err(NotAttached::NoHostRoute(described));
    }
    if route.gateway.is_some() {
        return Err(NotAttached::Gateway(described));
    }
    let link = route
        .oif
        .and_then(|i| table.links.get(&i))
        .ok_or_else(|| NotAttached::NoDevice(described.clone()))?;
    if !link
        .kind
        .as_deref()
        .is_some_and(|k| POD_LINK_KINDS.contains(&k))
    {
        return Err(NotAttached::NotVeth {
            route: described,
            kind: link.kind.clone(),
        });
    }
    Ok(link.name.clone())
}

/// A pod of this node that is not attached, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unattached {
    /// The pod's addresses.
    pub ips: Vec<IpAddr>,
    /// Why (for the first address).
    pub reason: NotAttached,
}

/// This node's pods: those attached (with [`Pod::interface`] set) and those not.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LocalPods {
    /// Pods with their host-side interface, by source key (`namespace/name`).
    pub attached: BTreeMap<String, Pod>,
    /// Pods without one, by `namespace/name`.
    pub unattached: BTreeMap<String, Unattached>,
}

/// Places the pods of `node` among `pods` (the Kubernetes source's, by key): each at the
/// interface of its IPv4 address's route, else its IPv6 address's. Pods of other nodes are left
/// out. Two pods routed to the same interface: the first by key keeps it.
pub fn place(node: &str, pods: &BTreeMap<String, Pod>, table: &RouteTable) -> LocalPods {
    let mut out = LocalPods::default();
    let mut taken: BTreeMap<String, String> = BTreeMap::new();
    for (key, pod) in pods.iter().filter(|(_, p)| p.node == node && !p.external) {
        let mut ips = pod.ips.clone();
        ips.sort_by_key(|ip| ip.is_ipv6());
        let mut first_err = None;
        let mut found = None;
        for ip in &ips {
            match place_ip(table, *ip) {
                Ok(ifname) => {
                    found = Some(ifname);
                    break;
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        let result = match found {
            Some(ifname) => match taken.get(&ifname) {
                Some(other) => Err(NotAttached::InterfaceTaken {
                    ifname,
                    pod: other.clone(),
                }),
                None => Ok(ifname),
            },
            None => Err(first_err.unwrap_or(NotAttached::NoRoute)),
        };
        match result {
            Ok(ifname) => {
                taken.insert(ifname.clone(), pod.full_name());
                let mut p = pod.clone();
                p.interface = Some(ifname);
                out.attached.insert(key.clone(), p);
            }
            Err(reason) => {
                out.unattached.insert(
                    pod.full_name(),
                    Unattached {
                        ips: pod.ips.clone(),
                        reason,
                    },
                );
            }
        }
    }
    out
}

impl LocalPods {
    /// The source keys of the attached pods.
    pub fn attached_keys(&self) -> BTreeSet<&str> {
        self.attached.keys().map(String::as_str).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Netlink.
// ---------------------------------------------------------------------------------------------

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const RTMSG_LEN: usize = 12;
const IFINFOMSG_LEN: usize = 16;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_TABLE: u16 = 15;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
/// Flag bits of an attribute type (NLA_F_NESTED, NLA_F_NET_BYTEORDER).
const NLA_TYPE_MASK: u16 = 0x3fff;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The attributes (type, payload) in `buf`; a truncated attribute ends the list.
fn attributes(mut buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            break;
        }
        out.push((ty, &buf[4..len]));
        buf = &buf[align4(len).min(buf.len())..];
    }
    out
}

fn ip_of(family: u8, b: &[u8]) -> Option<IpAddr> {
    match (i32::from(family), b.len()) {
        (libc::AF_INET, 4) => Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
        (libc::AF_INET6, 16) => {
            let a: [u8; 16] = b.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(a)))
        }
        _ => None,
    }
}

fn u32_of(b: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(..4)?.try_into().ok()?))
}

/// Parses the payload of an `RTM_NEWROUTE` message (rtmsg + attributes). None for families
/// other than IPv4 and IPv6 and for malformed messages.
pub fn parse_route(payload: &[u8]) -> Option<Route> {
    if payload.len() < RTMSG_LEN {
        return None;
    }
    let family = payload[0];
    let prefix_len = payload[1];
    let table = u32::from(payload[4]);
    let kind = payload[7];
    let unspecified = match i32::from(family) {
        libc::AF_INET => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        libc::AF_INET6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    let mut route = Route {
        dst: unspecified,
        prefix_len,
        oif: None,
        gateway: None,
        table,
        kind,
    };
    for (ty, data) in attributes(&payload[RTMSG_LEN..]) {
        match ty {
            RTA_DST => route.dst = ip_of(family, data)?,
            RTA_OIF => route.oif = u32_of(data),
            RTA_GATEWAY => route.gateway = ip_of(family, data),
            RTA_TABLE => route.table = u32_of(data)?,
            _ => {}
        }
    }
    Some(route)
}

/// Parses the payload of an `RTM_NEWLINK` message (ifinfomsg + attributes): (index, link).
pub fn parse_link(payload: &[u8]) -> Option<(u32, Link)> {
    if payload.len() < IFINFOMSG_LEN {
        return None;
    }
    let index = u32::from_ne_bytes(payload[4..8].try_into().ok()?);
    let mut name = None;
    let mut kind = None;
    for (ty, data) in attributes(&payload[IFINFOMSG_LEN..]) {
        match ty {
            IFLA_IFNAME => name = Some(c_string(data)),
            IFLA_LINKINFO => {
                kind = attributes(data)
                    .into_iter()
                    .find(|(t, _)| *t == IFLA_INFO_KIND)
                    .map(|(_, d)| c_string(d));
            }
            _ => {}
        }
    }
    Some((index, Link { name: name?, kind }))
}

fn c_string(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// A NETLINK_ROUTE socket, closed on drop.
struct NetlinkSocket(std::os::fd::OwnedFd);

impl NetlinkSocket {
    fn open() -> io::Result<Self> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain socket(2) call; the fd is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let sock = NetlinkSocket(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
        let timeout = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        // SAFETY: valid option value of the right size.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&sock.0),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(sock)
    }

    /// Sends a dump request of `msg_type` with `header` (rtmsg / ifinfomsg, family unspecified)
    /// and returns the payloads of the `reply_type` messages of the answer.
    fn dump(&self, msg_type: u16, header_len: usize, reply_type: u16) -> io::Result<Vec<Vec<u8>>> {
        use std::os::fd::AsRawFd;
        let fd = self.0.as_raw_fd();
        let seq: u32 = 1;
        let len = NLMSG_HDRLEN + header_len;
        let mut req = vec![0u8; len];
        req[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
        req[4..6].copy_from_slice(&msg_type.to_ne_bytes());
        req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        req[8..12].copy_from_slice(&seq.to_ne_bytes());
        // The family (first byte of rtmsg and ifinfomsg) stays AF_UNSPEC: every family.
        // SAFETY: the kernel's netlink socket address, zeroed: pid 0, no groups.
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: buffer and address are valid for the given lengths.
        let sent = unsafe {
            libc::sendto(
                fd,
                req.as_ptr().cast(),
                req.len(),
                0,
                (&kernel as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: buf is valid for writes of its length.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut msgs = &buf[..n as usize];
            while msgs.len() >= NLMSG_HDRLEN {
                let mlen = u32::from_ne_bytes(msgs[0..4].try_into().expect("4 bytes")) as usize;
                let mtype = u16::from_ne_bytes([msgs[4], msgs[5]]);
                let mseq = u32::from_ne_bytes(msgs[8..12].try_into().expect("4 bytes"));
                if mlen < NLMSG_HDRLEN || mlen > msgs.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "truncated netlink message",
                    ));
                }
                let payload = &msgs[NLMSG_HDRLEN..mlen];
                if mseq == seq {
                    match mtype {
                        NLMSG_DONE => return Ok(out),
                        NLMSG_ERROR => {
                            let errno = payload
                                .get(..4)
                                .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
                                .unwrap_or(0);
                            if errno != 0 {
                                return Err(io::Error::from_raw_os_error(-errno));
                            }
                        }
                        t if t == reply_type => out.push(payload.to_vec()),
                        _ => {}
                    }
                }
                msgs = &msgs[align4(mlen).min(msgs.len())..];
            }
        }
    }
}

/// Reads the routes and interfaces of the current network namespace.
fn read_here() -> io::Result<RouteTable> {
    let sock = NetlinkSocket::open()?;
    let links = sock
        .dump(RTM_GETLINK, IFINFOMSG_LEN, RTM_NEWLINK)?
        .iter()
        .filter_map(|p| parse_link(p))
        .collect();
    let routes = sock
        .dump(RTM_GETROUTE, RTMSG_LEN, RTM_NEWROUTE)?
        .iter()
        .filter_map(|p| parse_route(p))
        .collect();
    Ok(RouteTable { routes, links })
}

/// Reads the routes and interfaces of the network namespace `netns` (an open
/// `/run/netns/<name>` or `/proc/<pid>/ns/net`), or of the agent's own namespace. The reading
/// happens on a short-lived thread that enters the namespace, so no thread of the agent ever
/// changes namespace for it.
pub fn read_route_table(netns: Option<&std::fs::File>) -> io::Result<RouteTable> {
    std::thread::scope(|s| {
        s.spawn(|| {
            if let Some(ns) = netns {
                use std::os::fd::AsRawFd;
                // SAFETY: setns on a valid namespace fd affects only this thread, which ends
                // after the read.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            read_here()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("route reader panicked")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn route(dst: &str, len: u8, oif: Option<u32>, gw: Option<&str>) -> Route {
        Route {
            dst: ip(dst),
            prefix_len: len,
            oif,
            gateway: gw.map(ip),
            table: RT_TABLE_MAIN,
            kind: RTN_UNICAST,
        }
    }

    fn link(name: &str, kind: Option<&str>) -> Link {
        Link {
            name: name.into(),
            kind: kind.map(Into::into),
        }
    }

    /// A node as Calico sets it up: eth0 with a subnet and the default route, a /32 per pod to
    /// its cali veth, a bridge with a /32 (not a pod veth), and a /32 via a gateway.
    fn node() -> RouteTable {
        RouteTable {
            links: BTreeMap::from([
                (1, link("lo", None)),
                (2, link("eth0", None)),
                (5, link("cali1234", Some("veth"))),
                (6, link("cali5678", Some("veth"))),
                (7, link("br0", Some("bridge"))),
                (8, link("nk0", Some("netkit"))),
            ]),
            routes: vec![
                route("0.0.0.0", 0, Some(2), Some("192.168.1.1")),
                route("192.168.1.0", 24, Some(2), None),
                route("10.0.1.0", 24, Some(2), None),
                route("10.0.1.5", 32, Some(5), None),
                route("10.0.1.6", 32, Some(6), None),
                route("10.0.1.7", 32, Some(7), None),
                route("10.0.1.8", 32, Some(2), Some("192.168.1.9")),
                route("10.0.1.9", 32, None, None),
                route("10.0.1.10", 32, Some(8), None),
                route("fd00::5", 128, Some(5), None),
                route("fd00::", 64, Some(2), None),
                // A /32 of another table and a local route are not the pod's.
                Route {
                    table: 100,
                    ..route("10.0.1.11", 32, Some(6), None)
                },
                Route {
                    kind: 2,
                    ..route("10.0.1.12", 32, Some(6), None)
                },
            ],
        }
    }

    #[test]
    fn a_host_route_to_a_veth_names_the_pods_interface() {
        let t = node();
        assert_eq!(place_ip(&t, ip("10.0.1.5")), Ok("cali1234".into()));
        assert_eq!(place_ip(&t, ip("10.0.1.6")), Ok("cali5678".into()));
        assert_eq!(place_ip(&t, ip("10.0.1.10")), Ok("nk0".into()));
        assert_eq!(place_ip(&t, ip("fd00::5")), Ok("cali1234".into()));
    }

    #[test]
    fn anything_but_a_per_pod_veth_route_is_not_attached() {
        let t = node();
        // Covered by the subnet route only (the CNI has not added the pod's route yet).
        assert_eq!(
            place_ip(&t, ip("10.0.1.99")),
            Err(NotAttached::NoHostRoute("10.0.1.0/24 dev eth0".into()))
        );
        // Only the default route.
        assert_eq!(
            place_ip(&t, ip("10.9.9.9")),
            Err(NotAttached::NoHostRoute(
                "default via 192.168.1.1 dev eth0".into()
            ))
        );
        assert_eq!(
            place_ip(&t, ip("10.0.1.8")),
            Err(NotAttached::Gateway(
                "10.0.1.8/32 via 192.168.1.9 dev eth0".into()
            ))
        );
        assert_eq!(
            place_ip(&t, ip("10.0.1.7")),
            Err(NotAttached::NotVeth {
                route: "10.0.1.7/32 dev br0".into(),
                kind: Some("bridge".into())
            })
        );
        assert_eq!(
            place_ip(&t, ip("10.0.1.9")),
            Err(NotAttached::NoDevice("10.0.1.9/32".into()))
        );
        // Other tables and non-unicast routes do not count: the subnet route is what is left.
        for a in ["10.0.1.11", "10.0.1.12"] {
            assert!(matches!(
                place_ip(&t, ip(a)),
                Err(NotAttached::NoHostRoute(_))
            ));
        }
        // No route at all (no default route in this table).
        let bare = RouteTable {
            routes: vec![route("10.0.1.5", 32, Some(5), None)],
            links: t.links.clone(),
        };
        assert_eq!(place_ip(&bare, ip("10.0.1.6")), Err(NotAttached::NoRoute));
        assert_eq!(place_ip(&bare, ip("fd00::6")), Err(NotAttached::NoRoute));
        let msg = NotAttached::NoRoute.to_string();
        assert!(msg.contains("no route"), "{msg}");
    }

    fn pod(name: &str, node: &str, ips: &[&str]) -> Pod {
        Pod {
            name: name.into(),
            namespace: "shop".into(),
            node: node.into(),
            labels: Default::default(),
            ips: ips.iter().map(|s| ip(s)).collect(),
            external: false,
            interface: None,
            workload: None,
            identity: None,
            ports: vec![],
        }
    }

    #[test]
    fn only_this_nodes_pods_are_placed_each_at_its_own_interface() {
        let t = node();
        let pods: BTreeMap<String, Pod> = [
            pod("a", "n1", &["10.0.1.5"]),
            // IPv6 first in the list: the IPv4 address decides.
            pod("b", "n1", &["fd00::77", "10.0.1.6"]),
            // No IPv4 route, the IPv6 address has one.
            pod("c", "n1", &["10.0.1.99", "fd00::5"]),
            pod("d", "n1", &["10.0.1.99"]),
            pod("e", "n2", &["10.0.1.10"]),
        ]
        .into_iter()
        .map(|p| (p.full_name(), p))
        .collect();
        let placed = place("n1", &pods, &t);
        let attached: Vec<(&str, Option<&str>)> = placed
            .attached
            .values()
            .map(|p| (p.name.as_str(), p.interface.as_deref()))
            .collect();
        assert_eq!(
            attached,
            vec![("a", Some("cali1234")), ("b", Some("cali5678"))]
        );
        assert_eq!(
            placed.unattached.keys().collect::<Vec<_>>(),
            vec!["shop/c", "shop/d"]
        );
        // c's IPv6 route is a's interface: a keeps it.
        assert_eq!(
            placed.unattached["shop/c"].reason,
            NotAttached::InterfaceTaken {
                ifname: "cali1234".into(),
                pod: "shop/a".into()
            }
        );
        assert!(matches!(
            placed.unattached["shop/d"].reason,
            NotAttached::NoHostRoute(_)
        ));
        assert_eq!(placed.unattached["shop/d"].ips, vec![ip("10.0.1.99")]);
        assert_eq!(placed.attached_keys(), BTreeSet::from(["shop/a", "shop/b"]));
    }

    fn attr(ty: u16, data: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(data);
        v.resize(align4(v.len()), 0);
        v
    }

    #[test]
    fn netlink_messages_parse() {
        // rtmsg: AF_INET, /32, table main, unicast; RTA_TABLE 254, RTA_DST, RTA_OIF 5.
        let mut m = vec![libc::AF_INET as u8, 32, 0, 0, 254, 3, 253, 1, 0, 0, 0, 0];
        m.extend(attr(RTA_TABLE, &254u32.to_ne_bytes()));
        m.extend(attr(RTA_DST, &[10, 0, 1, 5]));
        m.extend(attr(RTA_OIF, &5u32.to_ne_bytes()));
        assert_eq!(parse_route(&m), Some(route("10.0.1.5", 32, Some(5), None)));
        // A default IPv6 route via a gateway, in a table beyond 255 (RTA_TABLE decides).
        let mut m = vec![libc::AF_INET6 as u8, 0, 0, 0, 252, 3, 0, 1, 0, 0, 0, 0];
        m.extend(attr(RTA_TABLE, &1000u32.to_ne_bytes()));
        m.extend(attr(RTA_GATEWAY, &ip6("fe80::1")));
        m.extend(attr(RTA_OIF, &2u32.to_ne_bytes()));
        let r = parse_route(&m).unwrap();
        assert_eq!(
            (r.dst, r.prefix_len, r.gateway, r.table),
            (ip("::"), 0, Some(ip("fe80::1")), 1000)
        );
        // Other families and short messages are skipped.
        assert_eq!(parse_route(&[libc::AF_PACKET as u8; 12]), None);
        assert_eq!(parse_route(&[2, 32]), None);

        // ifinfomsg: index 5; IFLA_IFNAME, IFLA_LINKINFO { IFLA_INFO_KIND "veth" } (nested flag).
        let mut m = vec![0u8; IFINFOMSG_LEN];
        m[4..8].copy_from_slice(&5u32.to_ne_bytes());
        m.extend(attr(IFLA_IFNAME, b"cali1234\0"));
        m.extend(attr(
            IFLA_LINKINFO | 0x8000,
            &attr(IFLA_INFO_KIND, b"veth\0"),
        ));
        assert_eq!(parse_link(&m), Some((5, link("cali1234", Some("veth")))));
        // Truncated attributes end the list without a panic.
        let mut bad = m.clone();
        bad.extend([200, 0, 3, 0]);
        assert_eq!(parse_link(&bad), Some((5, link("cali1234", Some("veth")))));
    }

    fn ip6(s: &str) -> [u8; 16] {
        s.parse::<Ipv6Addr>().unwrap().octets()
    }

    /// The real kernel: the agent's own namespace has a loopback interface without a kind.
    #[test]
    fn reads_this_namespaces_links_and_routes() {
        let t = read_route_table(None).expect("netlink dump");
        assert!(
            t.links.values().any(|l| l.name == "lo" && l.kind.is_none()),
            "{t:?}"
        );
        // Loopback's local routes are in the local table, never a pod's.
        assert_eq!(
            place_ip(&t, ip("127.0.0.1")).ok(),
            None,
            "127.0.0.1 is no pod"
        );
    }
}
