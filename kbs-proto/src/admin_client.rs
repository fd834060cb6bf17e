//! Connecting to the key broker's admin API: over its Unix socket (the broker
//! checks the caller's peer credentials) or over TCP with a bearer token, in
//! clear (`http://`) or over TLS (`https://`, the broker verified against a CA
//! certificate the caller names).
//!
//! Shared by `kbs admin` and the host agent, so that both authenticate the same
//! way and report connection failures in the same words.

use crate::kbsadmin::admin_client::AdminClient;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use zeroize::Zeroizing;

/// Why no admin client could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The socket or endpoint did not answer.
    #[error("cannot connect to {target}: {cause}")]
    Unreachable {
        /// The socket path or URL.
        target: String,
        /// The innermost cause (tonic's transport errors repeat their sources).
        cause: String,
    },
    /// The endpoint is not a URL.
    #[error("{0:?} is not a URL (expected http://HOST:PORT or https://HOST:PORT)")]
    BadEndpoint(String),
    /// An `https://` endpoint without a CA certificate to verify the broker:
    /// the system's roots are never trusted for the admin API.
    #[error(
        "{0} is https but no CA certificate file was given to verify the key broker's \
         certificate with (the system's roots are not used)"
    )]
    NoCaFile(String),
    /// A CA certificate file for an endpoint that does not use TLS.
    #[error(
        "CA certificate file {} given, but {endpoint} is not TLS: the endpoint must be \
         https://HOST:PORT to use it",
        path.display()
    )]
    CaFileWithoutTls {
        /// The endpoint.
        endpoint: String,
        /// The CA certificate file.
        path: PathBuf,
    },
    /// The CA certificate file could not be used.
    #[error("CA certificate file {}: {reason}", path.display())]
    CaFile {
        /// Its path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The token cannot travel in an HTTP header.
    #[error("the admin token holds characters a header cannot carry")]
    BadToken,
    /// The token file could not be used.
    #[error("token file {}: {reason}", path.display())]
    TokenFile {
        /// Its path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// Adds the bearer token, if any, to every call.
#[derive(Clone)]
pub struct Bearer(Option<AsciiMetadataValue>);

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bearer(..)")
    }
}

impl Bearer {
    /// `authorization: Bearer <token>` on every call; the header is marked
    /// sensitive so that it never shows in debug output.
    pub fn token(token: &str) -> Result<Bearer, ConnectError> {
        let mut v: AsciiMetadataValue = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| ConnectError::BadToken)?;
        v.set_sensitive(true);
        Ok(Bearer(Some(v)))
    }

    /// No token (the Unix socket).
    pub fn none() -> Bearer {
        Bearer(None)
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

/// An admin client.
pub type Client = AdminClient<InterceptedService<Channel, Bearer>>;

/// Connects to the admin Unix socket at `path`; every call then times out after
/// `timeout`.
pub async fn connect_unix(path: &Path, timeout: Duration) -> Result<Client, ConnectError> {
    let socket = path.to_path_buf();
    let unreachable = |cause: String| ConnectError::Unreachable {
        target: format!("the admin socket {}", path.display()),
        cause,
    };
    // The URI is required by the API; the connector ignores it.
    let endpoint = Endpoint::from_static("http://kbs-admin.invalid").timeout(timeout);
    let channel =
        endpoint.connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }));
    let channel = tokio::time::timeout(timeout, channel)
        .await
        .map_err(|_| unreachable("timed out".into()))?
        .map_err(|e| unreachable(root_cause(&e)))?;
    Ok(AdminClient::with_interceptor(channel, Bearer::none()))
}

/// Connects to the TCP admin listener at `endpoint`, presenting `token`.
///
/// `http://HOST:PORT` speaks in clear and takes no `ca_file`;
/// `https://HOST:PORT` speaks TLS and needs `ca_file`, a PEM file of the CA
/// certificate(s) the broker's certificate must chain to (its name is checked
/// against HOST). Only those certificates are trusted, never the system's.
pub async fn connect_tcp(
    endpoint: &str,
    token: &str,
    ca_file: Option<&Path>,
    timeout: Duration,
) -> Result<Client, ConnectError> {
    let bearer = Bearer::token(token)?;
    let bad = || ConnectError::BadEndpoint(endpoint.to_string());
    let mut channel = Endpoint::from_shared(endpoint.to_string()).map_err(|_| bad())?;
    let tls = match channel.uri().scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(bad()),
    };
    match (tls, ca_file) {
        (true, Some(path)) => {
            let ca = read_ca(path)?;
            channel = channel
                .tls_config(ClientTlsConfig::new().ca_certificate(ca))
                .map_err(|e| ConnectError::CaFile {
                    path: path.to_path_buf(),
                    reason: root_cause(&e),
                })?;
        }
        (true, None) => return Err(ConnectError::NoCaFile(endpoint.to_string())),
        (false, Some(path)) => {
            return Err(ConnectError::CaFileWithoutTls {
                endpoint: endpoint.to_string(),
                path: path.to_path_buf(),
            })
        }
        (false, None) => {}
    }
    let channel = channel
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect()
        .await
        .map_err(|e| ConnectError::Unreachable {
            target: endpoint.to_string(),
            cause: root_cause(&e),
        })?;
    Ok(AdminClient::with_interceptor(channel, bearer))
}

/// Reads a CA certificate file: PEM holding at least one certificate and
/// nothing that does not parse. Checked here rather than left to the TLS
/// handshake, which would report an empty or mangled file as the broker's
/// certificate being untrusted.
pub fn read_ca(path: &Path) -> Result<Certificate, ConnectError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let bad = |reason: String| ConnectError::CaFile {
        path: path.to_path_buf(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    let mut count = 0usize;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        cert.map_err(|e| bad(format!("not valid PEM: {e}")))?;
        count += 1;
    }
    if count == 0 {
        return Err(bad(
            "no PEM certificate (-----BEGIN CERTIFICATE-----) in it".into(),
        ));
    }
    Ok(Certificate::from_pem(pem))
}

/// The innermost error of a chain: tonic's transport errors repeat their
/// source in their own message.
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Reads a token file the way the kbs does (surrounding white space trimmed),
/// without checking its mode. The token is wiped from memory when dropped.
pub fn read_token(path: &Path) -> Result<Zeroizing<String>, ConnectError> {
    let bad = |reason: String| ConnectError::TokenFile {
        path: path.to_path_buf(),
        reason,
    };
    let raw = Zeroizing::new(std::fs::read(path).map_err(|e| bad(format!("cannot read: {e}")))?);
    let text = std::str::from_utf8(raw.trim_ascii()).map_err(|_| bad("not text".into()))?;
    if text.is_empty() {
        return Err(bad("empty".into()));
    }
    Ok(Zeroizing::new(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_is_trimmed_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        std::fs::write(&p, "  abc\n").unwrap();
        assert_eq!(read_token(&p).unwrap().as_str(), "abc");
        std::fs::write(&p, "\n").unwrap();
        assert!(read_token(&p).unwrap_err().to_string().contains("empty"));
        assert!(read_token(&dir.path().join("none")).is_err());
    }

    #[test]
    fn bearer_hides_the_token() {
        assert_eq!(
            format!("{:?}", Bearer::token("s3cret").unwrap()),
            "Bearer(..)"
        );
        assert!(matches!(Bearer::token("a\nb"), Err(ConnectError::BadToken)));
    }

    const TOKEN: &str = "t0123456789abcdef0123456789abcdef";

    async fn tcp_error(endpoint: &str, ca: Option<&Path>) -> String {
        connect_tcp(endpoint, TOKEN, ca, Duration::from_secs(1))
            .await
            .unwrap_err()
            .to_string()
    }

    #[tokio::test]
    async fn https_needs_a_ca_file_and_http_takes_none() {
        let e = tcp_error("https://127.0.0.1:1", None).await;
        assert!(e.contains("no CA certificate file"), "{e}");
        let e = tcp_error("http://127.0.0.1:1", Some(Path::new("/etc/kbs/ca.pem"))).await;
        assert!(e.contains("/etc/kbs/ca.pem"), "{e}");
        assert!(e.contains("must be https://"), "{e}");
        let e = tcp_error("ftp://127.0.0.1:1", None).await;
        assert!(e.contains("https://HOST:PORT"), "{e}");
    }

    #[tokio::test]
    async fn a_ca_file_that_is_missing_or_not_pem_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing-ca.pem");
        let e = tcp_error("https://127.0.0.1:1", Some(&missing)).await;
        assert!(
            e.starts_with(&format!("CA certificate file {}", missing.display())),
            "{e}"
        );
        let garbage = dir.path().join("garbage-ca.pem");
        for text in [
            "not a certificate\n",
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
            "-----BEGIN CERTIFICATE-----\nAAAA\n",
        ] {
            std::fs::write(&garbage, text).unwrap();
            let e = tcp_error("https://127.0.0.1:1", Some(&garbage)).await;
            assert!(
                e.starts_with(&format!("CA certificate file {}", garbage.display())),
                "{text:?}: {e}"
            );
        }
    }

    #[tokio::test]
    async fn missing_socket_names_the_path() {
        let e = connect_unix(Path::new("/nonexistent/admin.sock"), Duration::from_secs(1))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/admin.sock"), "{e}");
    }
}
