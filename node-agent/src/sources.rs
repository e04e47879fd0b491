//! Metadata sources besides the topology file: each keeps its own view of endpoints (and, for
//! Kubernetes, policies) and signals changes; the agent merges them with the topology file into
//! one state and applies it (map updates are diffs, so a change costs what it changes).
//!
//! A source that loses its backend (etcd down, API server gone) keeps its last view: the agent
//! goes on enforcing what it knew, and the source reconnects with backoff and jitter.
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use periscope_topology::Pod;
use tokio::sync::Notify;

/// What one source currently knows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SourceView {
    /// Endpoints by a source-specific key (e.g. the etcd key), with their identity when the
    /// source assigns one.
    pub pods: BTreeMap<String, Pod>,
    /// Policy documents as the API returned them (CiliumNetworkPolicy,
    /// CiliumClusterwideNetworkPolicy, NetworkPolicy), keyed `kind/namespace/name`; the agent
    /// validates them like policy files.
    pub policies: BTreeMap<String, serde_yaml::Value>,
    /// Service addresses (ClusterIP, external IPs, endpoint addresses) → (namespace, name), for
    /// naming flows.
    pub services: BTreeMap<std::net::IpAddr, (String, String)>,
    /// Services with their frontends and backends by (namespace, name), for the agent's
    /// SERVICE_UPSERTED / SERVICE_DELETED events.
    pub service_details: BTreeMap<(String, String), ServiceInfo>,
    /// Whether the content is complete: the source has listed everything once (it then stays
    /// true through outages, with the last content). An agent without a topology file changes
    /// nothing in the datapath before its Kubernetes source is synced.
    pub synced: bool,
    /// Whether the backend is reachable right now.
    pub connected: bool,
    /// Last error talking to the backend.
    pub last_error: Option<String>,
}

/// A Kubernetes Service as the agent's SERVICE_* events describe it (Cilium's view of a service:
/// frontends with the backends they balance to).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceInfo {
    /// `spec.externalTrafficPolicy` (`Cluster`, `Local`; empty when unset).
    pub ext_traffic_policy: String,
    /// `spec.internalTrafficPolicy`.
    pub int_traffic_policy: String,
    /// Frontends: every service address with every service port.
    pub frontends: Vec<Frontend>,
    /// Ready backends of the service's EndpointSlices by port name (`""` for an unnamed port):
    /// address and port.
    pub backends: BTreeMap<String, BTreeSet<(IpAddr, u16)>>,
    /// `sessionAffinity: ClientIP`: its timeout in seconds (None: no affinity).
    pub affinity_timeout_s: Option<u32>,
}

/// One frontend of a service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Frontend {
    /// Address.
    pub ip: IpAddr,
    /// Service port.
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// The service port's name (what backends are matched by).
    pub port_name: String,
    /// Cilium's frontend type: `ClusterIP`, `ExternalIPs` or `LoadBalancer`.
    pub kind: String,
}

/// A shared, change-signalling view that a source task writes and the agent reads.
#[derive(Clone, Default)]
pub struct SharedView {
    view: Arc<Mutex<SourceView>>,
    changed: Arc<Notify>,
}

impl SharedView {
    /// A copy of the current view.
    pub fn snapshot(&self) -> SourceView {
        self.view.lock().expect("view lock").clone()
    }

    /// Changes the view and tells the agent if anything that matters changed.
    pub fn update(&self, f: impl FnOnce(&mut SourceView)) {
        let mut v = self.view.lock().expect("view lock");
        let before = (
            v.pods.clone(),
            v.policies.clone(),
            v.services.clone(),
            v.service_details.clone(),
            v.synced,
        );
        f(&mut v);
        let changed = before.0 != v.pods
            || before.1 != v.policies
            || before.2 != v.services
            || before.3 != v.service_details
            || before.4 != v.synced;
        drop(v);
        if changed {
            self.changed.notify_one();
        }
    }

    /// Waits for the next change.
    pub async fn changed(&self) {
        self.changed.notified().await
    }
}

/// Exponential backoff with full jitter (no retry storms: seed 003 §2.3.2).
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
    seed: u64,
}

impl Backoff {
    /// Backoff from `base` up to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            ^ ((std::process::id() as u64) << 20);
        Backoff {
            base,
            max,
            attempt: 0,
            seed: seed | 1,
        }
    }

    /// The next delay: uniformly random in [0, min(max, base·2^attempt)].
    pub fn next_delay(&mut self) -> Duration {
        let cap = self
            .base
            .saturating_mul(1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        // xorshift64*
        self.seed ^= self.seed >> 12;
        self.seed ^= self.seed << 25;
        self.seed ^= self.seed >> 27;
        let r = self.seed.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let frac = (r >> 11) as f64 / (1u64 << 53) as f64;
        cap.mul_f64(frac)
    }

    /// Back to the base delay after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// How long the metadata sources (etcd, Kubernetes) wait, at random, before their first
/// connection after the agent starts, so that a fleet restarting at once (after an outage, an
/// upgrade) does not stampede etcd or the API server (seed 003 §2.3.2). Enforcement does not
/// wait: the datapath keeps its pinned state and the topology's endpoints are applied at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartupJitter {
    /// A window scaled to the fleet: [`StartupJitter::PER_NODE`] per node of the topology, at
    /// most [`StartupJitter::AUTO_MAX`].
    Auto,
    /// A fixed window (zero: no waiting).
    Window(Duration),
}

impl StartupJitter {
    /// The window per node of `auto`: 1,000 nodes spread over 20 s, 50 new connections a second.
    pub const PER_NODE: Duration = Duration::from_millis(20);
    /// The largest window of `auto`.
    pub const AUTO_MAX: Duration = Duration::from_secs(60);
    /// The window of `auto` when the fleet's size is unknown (no topology file: the agent's
    /// endpoints come from the Kubernetes API, so the window also delays the first attachment).
    pub const AUTO_UNKNOWN_FLEET: Duration = Duration::from_secs(5);

    /// The window for a fleet of `nodes` nodes.
    pub fn window(&self, nodes: usize) -> Duration {
        match self {
            Self::Auto => Self::PER_NODE
                .saturating_mul(u32::try_from(nodes).unwrap_or(u32::MAX))
                .min(Self::AUTO_MAX),
            Self::Window(w) => *w,
        }
    }

    /// A delay drawn uniformly from the window for `nodes` nodes.
    pub fn delay(&self, nodes: usize) -> Duration {
        Self::draw(self.window(nodes))
    }

    /// A delay for a fleet of unknown size: `auto` draws from
    /// [`StartupJitter::AUTO_UNKNOWN_FLEET`].
    pub fn delay_unknown_fleet(&self) -> Duration {
        Self::draw(match self {
            Self::Auto => Self::AUTO_UNKNOWN_FLEET,
            Self::Window(w) => *w,
        })
    }

    fn draw(w: Duration) -> Duration {
        if w.is_zero() {
            return w;
        }
        // The first delay of a backoff capped at the window is uniform in it.
        Backoff::new(w, w).next_delay()
    }
}

impl std::str::FromStr for StartupJitter {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "auto" {
            return Ok(Self::Auto);
        }
        let (num, unit) = s
            .find(|c: char| !c.is_ascii_digit())
            .map_or((s, "s"), |i| (&s[..i], &s[i..]));
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{s:?}: expected `auto` or a duration such as 10s, 500ms, 1m"))?;
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            other => {
                return Err(format!(
                    "{s:?}: unknown unit {other:?} (expected ms, s or m, or `auto`)"
                ));
            }
        };
        Ok(Self::Window(d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_jitter_scales_with_the_fleet_and_parses() {
        let ms = Duration::from_millis;
        assert_eq!("auto".parse(), Ok(StartupJitter::Auto));
        assert_eq!("10s".parse(), Ok(StartupJitter::Window(ms(10_000))));
        assert_eq!("250ms".parse(), Ok(StartupJitter::Window(ms(250))));
        assert_eq!("2m".parse(), Ok(StartupJitter::Window(ms(120_000))));
        assert_eq!("0".parse(), Ok(StartupJitter::Window(ms(0))));
        for bad in ["", "soon", "10h", "-1s", "1.5s"] {
            let e = bad.parse::<StartupJitter>().unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
        assert_eq!(StartupJitter::Auto.window(1), ms(20));
        assert_eq!(StartupJitter::Auto.window(1000), ms(20_000));
        assert_eq!(StartupJitter::Auto.window(100_000), StartupJitter::AUTO_MAX);
        assert_eq!(StartupJitter::Window(ms(0)).delay(1000), ms(0));
        assert_eq!(StartupJitter::Window(ms(0)).delay_unknown_fleet(), ms(0));
        assert!(StartupJitter::Auto.delay_unknown_fleet() <= StartupJitter::AUTO_UNKNOWN_FLEET);
        // Delays fall in the window and spread over it.
        let delays: Vec<Duration> = (0..200).map(|_| StartupJitter::Auto.delay(1000)).collect();
        assert!(delays.iter().all(|d| *d <= ms(20_000)), "{delays:?}");
        assert!(delays.iter().any(|d| *d < ms(5_000)) && delays.iter().any(|d| *d > ms(15_000)));
    }

    #[test]
    fn backoff_grows_to_the_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let delays: Vec<Duration> = (0..12).map(|_| b.next_delay()).collect();
        for (i, d) in delays.iter().enumerate() {
            let cap = Duration::from_millis(100 * (1 << i.min(10))).min(Duration::from_secs(5));
            assert!(*d <= cap, "{i}: {d:?} > {cap:?}");
        }
        let distinct: std::collections::BTreeSet<_> = delays.iter().collect();
        assert!(distinct.len() > 6, "jittered: {delays:?}");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[tokio::test]
    async fn updates_signal_only_real_changes() {
        let v = SharedView::default();
        v.update(|s| s.connected = true); // not a content change
        let waited = tokio::time::timeout(Duration::from_millis(50), v.changed()).await;
        assert!(waited.is_err(), "connectivity alone is not a change");
        v.update(|s| {
            s.pods.insert(
                "k".into(),
                Pod {
                    name: "p".into(),
                    namespace: "n".into(),
                    node: "x".into(),
                    labels: Default::default(),
                    ips: vec!["10.0.0.1".parse().unwrap()],
                    external: false,
                    interface: None,
                    workload: None,
                    identity: Some(300),
                    ports: vec![],
                },
            );
        });
        tokio::time::timeout(Duration::from_millis(50), v.changed())
            .await
            .expect("changed");
    }
}
