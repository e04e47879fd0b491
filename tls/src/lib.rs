//! TLS with rustls (ring) for Periscope's gRPC servers (the agent's and the relay's Observer
//! API), with optional client-certificate verification (mutual TLS) and certificate files
//! reloaded when they change, and the client side (the relay dialing its peers, the CLI).
//!
//! - Server: [`ReloadingServerConfig`] stats the certificate, key and CA files at every accepted
//!   connection (three `stat`s) and rebuilds the rustls configuration when one changed; a file
//!   that fails to load is logged and the previous configuration stays in force. Existing
//!   connections keep the certificates they were made with. [`tls_incoming`] turns a TCP
//!   listener into a stream of TLS connections for tonic; handshakes run concurrently and a
//!   failed one (an unknown client certificate, say) only closes that connection.
//! - Client: [`PeerTlsFiles::client_config`] reads the files at every connection attempt, so
//!   new connections to peers use the current files.
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// Longest a TLS handshake on the server may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A TLS setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read.
    #[error("{flag} {path}: {source}")]
    Read {
        /// The flag naming the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A file holds no usable PEM item of the expected kind.
    #[error("{flag} {path}: {reason}")]
    Pem {
        /// The flag naming the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A flag is given without another one it needs.
    #[error("{flag} needs {needs}")]
    Missing {
        /// The flag given.
        flag: &'static str,
        /// What else must be given.
        needs: &'static str,
    },
    /// rustls refused the certificates or key (e.g. the key does not match the certificate).
    #[error("{what}: {source}")]
    Rustls {
        /// What was being built, naming the files.
        what: String,
        /// The cause.
        #[source]
        source: rustls::Error,
    },
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        flag,
        path: path.to_path_buf(),
        source,
    })
}

fn certs(flag: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(flag, path)?;
    let pem_err = |reason: String| TlsError::Pem {
        flag,
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(format!("invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(pem_err("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

fn key(flag: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(flag, path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::Pem {
        flag,
        path: path.to_path_buf(),
        reason: format!("no usable PEM private key: {e}"),
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The files of a TLS server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// Certificate chain (PEM), `--tls-cert`.
    pub cert: PathBuf,
    /// Private key (PEM), `--tls-key`.
    pub key: PathBuf,
    /// CA bundle for client certificates, `--tls-client-ca` (None: no client certificates).
    pub client_ca: Option<PathBuf>,
}

impl ServerTlsFiles {
    /// The server's TLS files from the three options; None when none is given.
    pub fn from_options(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        client_ca: Option<PathBuf>,
    ) -> Result<Option<Self>, TlsError> {
        match (cert, key, client_ca) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), client_ca) => Ok(Some(ServerTlsFiles {
                cert,
                key,
                client_ca,
            })),
            (Some(_), None, _) => Err(TlsError::Missing {
                flag: "--tls-cert",
                needs: "--tls-key",
            }),
            (None, Some(_), _) => Err(TlsError::Missing {
                flag: "--tls-key",
                needs: "--tls-cert",
            }),
            (None, None, Some(_)) => Err(TlsError::Missing {
                flag: "--tls-client-ca",
                needs: "--tls-cert and --tls-key (client certificates are checked by a TLS server)",
            }),
        }
    }

    /// Reads the files and builds the rustls configuration (HTTP/2 only; client certificates
    /// required when a client CA is given).
    pub fn load(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let chain = certs("--tls-cert", &self.cert)?;
        let key = key("--tls-key", &self.key)?;
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Rustls {
                what: "TLS protocol versions".into(),
                source,
            })?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in certs("--tls-client-ca", ca)? {
                    roots.add(c).map_err(|source| TlsError::Rustls {
                        what: format!("--tls-client-ca {}", ca.display()),
                        source,
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(roots.into(), provider())
                        .build()
                        .map_err(|e| TlsError::Pem {
                            flag: "--tls-client-ca",
                            path: ca.clone(),
                            reason: e.to_string(),
                        })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config =
            builder
                .with_single_cert(chain, key)
                .map_err(|source| TlsError::Rustls {
                    what: format!(
                        "--tls-cert {} with --tls-key {}",
                        self.cert.display(),
                        self.key.display()
                    ),
                    source,
                })?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    fn paths(&self) -> Vec<&Path> {
        let mut v = vec![self.cert.as_path(), self.key.as_path()];
        v.extend(self.client_ca.as_deref());
        v
    }
}

/// Modification time and length of each file (None for a file that cannot be stat'ed).
type Fingerprint = Vec<Option<(SystemTime, u64)>>;

fn fingerprint(paths: &[&Path]) -> Fingerprint {
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

/// The server's rustls configuration, rebuilt when its files change.
pub struct ReloadingServerConfig {
    files: ServerTlsFiles,
    current: Mutex<(Fingerprint, Arc<ServerConfig>)>,
}

impl ReloadingServerConfig {
    /// Loads the files (an error here is fatal: a server does not start with bad files).
    pub fn new(files: ServerTlsFiles) -> Result<Self, TlsError> {
        let print = fingerprint(&files.paths());
        let config = files.load()?;
        Ok(ReloadingServerConfig {
            files,
            current: Mutex::new((print, config)),
        })
    }

    /// The configuration for a new connection: reloaded first if a file changed since the last
    /// load (a file that fails to load keeps the previous configuration, with a log line).
    pub fn current(&self) -> Arc<ServerConfig> {
        let print = fingerprint(&self.files.paths());
        let mut cur = self.current.lock().expect("tls config lock");
        if cur.0 != print {
            cur.0 = print;
            match self.files.load() {
                Ok(config) => {
                    tracing::info!(cert = %self.files.cert.display(), "TLS certificate files reloaded");
                    cur.1 = config;
                }
                Err(e) => {
                    tracing::error!(error = %e, "TLS certificate files changed but cannot be loaded; keeping the previous ones");
                }
            }
        }
        cur.1.clone()
    }
}

/// Accepts TCP connections on `listener` and yields those whose TLS handshake (with the
/// configuration current at accept time) succeeds. Failed handshakes are logged and dropped;
/// the stream never yields an error.
pub fn tls_incoming(
    listener: TcpListener,
    config: Arc<ReloadingServerConfig>,
) -> ReceiverStream<Result<TlsStream<TcpStream>, io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, remote): (TcpStream, SocketAddr) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = TlsAcceptor::from(config.current());
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => {
                        tracing::info!(remote = %remote, error = %e, "TLS handshake failed; connection closed");
                    }
                    Err(_) => {
                        tracing::info!(remote = %remote, "TLS handshake timed out; connection closed");
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// TLS for dialing peers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerTlsFiles {
    /// CA bundle the peers' certificates must chain to, `--peer-tls-ca`.
    pub ca: PathBuf,
    /// Client certificate, `--peer-tls-cert`.
    pub cert: Option<PathBuf>,
    /// Its key, `--peer-tls-key`.
    pub key: Option<PathBuf>,
    /// Name to verify instead of each peer's host, `--peer-tls-server-name`.
    pub server_name: Option<String>,
}

impl PeerTlsFiles {
    /// Peer TLS from the options; None when none is given.
    pub fn from_options(
        ca: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        server_name: Option<String>,
    ) -> Result<Option<Self>, TlsError> {
        if ca.is_none() && cert.is_none() && key.is_none() && server_name.is_none() {
            return Ok(None);
        }
        let Some(ca) = ca else {
            return Err(TlsError::Missing {
                flag: if cert.is_some() {
                    "--peer-tls-cert"
                } else if key.is_some() {
                    "--peer-tls-key"
                } else {
                    "--peer-tls-server-name"
                },
                needs: "--peer-tls-ca (the CA that peers' certificates must chain to)",
            });
        };
        match (&cert, &key) {
            (Some(_), None) => Err(TlsError::Missing {
                flag: "--peer-tls-cert",
                needs: "--peer-tls-key",
            }),
            (None, Some(_)) => Err(TlsError::Missing {
                flag: "--peer-tls-key",
                needs: "--peer-tls-cert",
            }),
            _ => Ok(Some(PeerTlsFiles {
                ca,
                cert,
                key,
                server_name,
            })),
        }
    }

    /// Reads and parses every file once (for start-up errors naming the flag and file).
    pub fn check(&self) -> Result<(), TlsError> {
        certs("--peer-tls-ca", &self.ca)?;
        if let (Some(c), Some(k)) = (&self.cert, &self.key) {
            certs("--peer-tls-cert", c)?;
            key("--peer-tls-key", k)?;
        }
        Ok(())
    }

    /// The client configuration for a peer whose address has `host`, from the files as they
    /// are now.
    pub fn client_config(&self, host: &str) -> Result<ClientTlsConfig, TlsError> {
        self.check()?;
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read("--peer-tls-ca", &self.ca)?))
            .domain_name(self.server_name(host));
        if let (Some(c), Some(k)) = (&self.cert, &self.key) {
            config = config.identity(Identity::from_pem(
                read("--peer-tls-cert", c)?,
                read("--peer-tls-key", k)?,
            ));
        }
        Ok(config)
    }

    /// The name verified in the certificate of a peer whose address has `host`.
    pub fn server_name(&self, host: &str) -> String {
        self.server_name.clone().unwrap_or_else(|| {
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_string()
        })
    }
}

/// A throwaway CA for tests (feature `test-ca`): certificates are made at test time.
#[cfg(any(test, feature = "test-ca"))]
pub mod test_ca {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

    /// A CA and certificates it signs.
    pub struct TestCa {
        issuer: Issuer<'static, KeyPair>,
        /// The CA's own certificate (PEM): the bundle clients and servers trust.
        pub pem: String,
    }

    impl TestCa {
        /// A new CA named `name`.
        pub fn new(name: &str) -> TestCa {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            let key = KeyPair::generate().unwrap();
            let pem = params.self_signed(&key).unwrap().pem();
            TestCa {
                issuer: Issuer::new(params, key),
                pem,
            }
        }

        /// (certificate PEM, key PEM) for `names` (DNS names or IP addresses).
        pub fn issue(&self, names: &[&str]) -> (String, String) {
            let params =
                CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                    .unwrap();
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_ca::TestCa;
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("periscope-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn bad_files_name_flag_and_path() {
        let dir = scratch("bad");
        let ca = TestCa::new("ca");
        let (cert, key_pem) = ca.issue(&["localhost"]);
        std::fs::write(dir.join("cert.pem"), &cert).unwrap();
        std::fs::write(dir.join("key.pem"), &key_pem).unwrap();
        std::fs::write(dir.join("junk.pem"), "junk").unwrap();
        let files = |c: &str, k: &str, ca: Option<&str>| ServerTlsFiles {
            cert: dir.join(c),
            key: dir.join(k),
            client_ca: ca.map(|c| dir.join(c)),
        };
        files("cert.pem", "key.pem", None).load().unwrap();
        let e = files("missing.pem", "key.pem", None)
            .load()
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--tls-cert ") && e.contains("missing.pem"),
            "{e}"
        );
        let e = files("cert.pem", "junk.pem", None)
            .load()
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--tls-key ") && e.contains("junk.pem"), "{e}");
        let e = files("cert.pem", "key.pem", Some("junk.pem"))
            .load()
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--tls-client-ca ") && e.contains("junk.pem"),
            "{e}"
        );
        // A key that is not the certificate's.
        let (_, other_key) = ca.issue(&["localhost"]);
        std::fs::write(dir.join("other.pem"), other_key).unwrap();
        let e = files("cert.pem", "other.pem", None).load();
        assert!(e.is_err(), "mismatched key accepted");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reloads_when_files_change() {
        let dir = scratch("reload");
        let ca = TestCa::new("ca");
        let (cert, key_pem) = ca.issue(&["one.test"]);
        std::fs::write(dir.join("cert.pem"), &cert).unwrap();
        std::fs::write(dir.join("key.pem"), &key_pem).unwrap();
        let r = ReloadingServerConfig::new(ServerTlsFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            client_ca: None,
        })
        .unwrap();
        let first = r.current();
        assert!(
            Arc::ptr_eq(&first, &r.current()),
            "unchanged files: same config"
        );
        // Replaced files (new length at least, so the fingerprint differs even within one
        // mtime tick): a new configuration.
        let (cert2, key2) = ca.issue(&["two.test", "three.test"]);
        std::fs::write(dir.join("cert.pem"), &cert2).unwrap();
        std::fs::write(dir.join("key.pem"), &key2).unwrap();
        let second = r.current();
        assert!(!Arc::ptr_eq(&first, &second), "changed files: reloaded");
        // A broken file: the previous configuration stays.
        std::fs::write(dir.join("key.pem"), "broken").unwrap();
        assert!(Arc::ptr_eq(&second, &r.current()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
