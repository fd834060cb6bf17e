//! Connecting to the key broker's admin API: over its Unix socket (the broker
//! checks the caller's peer credentials) or over TCP with a bearer token.
//!
//! Shared by `kbs admin` and the host agent, so that both authenticate the same
//! way and report connection failures in the same words.

use crate::kbsadmin::admin_client::AdminClient;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
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
    #[error("{0:?} is not a URL (expected http://HOST:PORT)")]
    BadEndpoint(String),
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

/// Connects to the TCP admin listener at `endpoint` (`http://HOST:PORT`),
/// presenting `token`.
pub async fn connect_tcp(
    endpoint: &str,
    token: &str,
    timeout: Duration,
) -> Result<Client, ConnectError> {
    let bearer = Bearer::token(token)?;
    let channel = Endpoint::from_shared(endpoint.to_string())
        .map_err(|_| ConnectError::BadEndpoint(endpoint.to_string()))?
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

    #[tokio::test]
    async fn missing_socket_names_the_path() {
        let e = connect_unix(Path::new("/nonexistent/admin.sock"), Duration::from_secs(1))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/admin.sock"), "{e}");
    }
}
