//! Talking to one Trustee: its KBS admin HTTP API (reference values through
//! the built-in or a remote RVPS, and the resource policy), or a standalone
//! RVPS over gRPC. Every answer is bounded in size and time; nothing Trustee
//! says is trusted to be well-formed.

use super::token::{TokenError, TokenSource};
use super::values::ReferenceValues;
use kbs_proto::rvps::reference_value_provider_service_client::ReferenceValueProviderServiceClient;
use kbs_proto::rvps::{ReferenceValueQueryRequest, ReferenceValueRegisterRequest};
use serde_json::Value;
use std::time::Duration;

/// Largest answer read from Trustee.
const MAX_ANSWER: usize = 4 << 20;
/// How long one call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a call to Trustee failed.
#[derive(Debug, thiserror::Error)]
pub enum TrusteeError {
    /// No answer (connection refused, timeout, TLS failure).
    #[error("{target}: unreachable: {detail}")]
    Unreachable {
        /// The KBS URL or RVPS address.
        target: String,
        /// What failed.
        detail: String,
    },
    /// Trustee refused the broker's admin token.
    #[error(
        "{target}: refused the broker's admin token ({detail}); check that Trustee's admin \
         configuration trusts the key of --trustee-admin-key for the issuer of \
         --trustee-admin-issuer (or accepts the token of --trustee-admin-token-file), and that \
         its ACL grants the token's role the path /kbs/v0/reference-value"
    )]
    Unauthorized {
        /// The KBS URL.
        target: String,
        /// Trustee's answer, shortened.
        detail: String,
    },
    /// Trustee answered with an error.
    #[error("{target}: {what} failed: {detail}")]
    Failed {
        /// The KBS URL or RVPS address.
        target: String,
        /// The call.
        what: &'static str,
        /// Trustee's answer, shortened.
        detail: String,
    },
    /// No token to send.
    #[error(transparent)]
    Token(#[from] TokenError),
}

/// What Trustee's resource policy does with the attestation verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyVerdict {
    /// Resources are released only to guests every submodule of whose token
    /// is affirming: reference values decide.
    Affirming,
    /// The policy releases resources without an affirming verdict.
    NotAffirming(String),
    /// The broker cannot tell.
    Unknown(String),
}

impl std::fmt::Display for PolicyVerdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PolicyVerdict::Affirming => f.write_str("affirming"),
            PolicyVerdict::NotAffirming(why) => write!(f, "not affirming: {why}"),
            PolicyVerdict::Unknown(why) => write!(f, "unknown: {why}"),
        }
    }
}

/// Judges a resource policy's Rego text, by what its rules (comments left
/// out) mention: one that never looks at the EAR status for "affirming"
/// cannot require it. This is a heuristic: a policy that mentions both is
/// taken as requiring it.
pub fn judge_policy(rego: &str) -> PolicyVerdict {
    let rules: String = rego
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    let mentions_status = rules.contains("ear.status");
    let mentions_affirming = rules.contains("affirming");
    if mentions_status && mentions_affirming {
        PolicyVerdict::Affirming
    } else {
        PolicyVerdict::NotAffirming(
            "the resource policy does not check that the attestation verdict is affirming, so \
             resources are released whatever the reference values say"
                .into(),
        )
    }
}

/// One Trustee the broker writes to.
pub enum Target {
    /// A KBS, through its admin HTTP API.
    Kbs {
        /// The base URL, without a trailing slash.
        url: String,
        /// Admin tokens.
        tokens: TokenSource,
        /// The HTTP client.
        http: reqwest::Client,
    },
    /// A standalone RVPS over gRPC.
    Rvps {
        /// `host:port` or `http://host:port`.
        addr: String,
        /// A lazily connected channel.
        channel: tonic::transport::Channel,
    },
}

fn shorten(text: &str) -> String {
    let t = text.trim();
    let mut out: String = t.chars().take(300).collect();
    if out.len() < t.len() {
        out.push('…');
    }
    out
}

/// Reads a response body, at most [`MAX_ANSWER`] bytes.
async fn body(mut resp: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if out.len() + chunk.len() > MAX_ANSWER {
            return Err(format!("an answer of more than {MAX_ANSWER} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

impl Target {
    /// A KBS at `url`; `ca` adds a root for its TLS certificate.
    pub fn kbs(url: &str, tokens: TokenSource, ca: Option<&[u8]>) -> Result<Target, String> {
        let url = url.trim_end_matches('/').to_string();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!("{url:?}: expected an http:// or https:// URL"));
        }
        // The admin token must not cross a network in clear.
        if url.starts_with("http://") && !is_loopback_url(&url) {
            return Err(format!(
                "{url}: plain HTTP to a host other than loopback would send the admin token in \
                 clear; use https://"
            ));
        }
        let mut builder = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("kbs/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = ca {
            let cert = reqwest::Certificate::from_pem(pem).map_err(|e| e.to_string())?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder.build().map_err(|e| e.to_string())?;
        Ok(Target::Kbs { url, tokens, http })
    }

    /// A standalone RVPS at `addr` (`host:port` or a URL).
    pub fn rvps(addr: &str) -> Result<Target, String> {
        let uri = if addr.contains("://") {
            addr.to_string()
        } else {
            format!("http://{addr}")
        };
        let channel = tonic::transport::Endpoint::from_shared(uri)
            .map_err(|e| format!("{addr:?}: {e}"))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(CALL_TIMEOUT)
            .connect_lazy();
        Ok(Target::Rvps {
            addr: addr.to_string(),
            channel,
        })
    }

    /// The KBS URL or the RVPS address.
    pub fn name(&self) -> String {
        match self {
            Target::Kbs { url, .. } => url.clone(),
            Target::Rvps { addr, .. } => format!("rvps {addr}"),
        }
    }

    fn unreachable(&self, detail: impl std::fmt::Display) -> TrusteeError {
        TrusteeError::Unreachable {
            target: self.name(),
            detail: detail.to_string(),
        }
    }

    /// What Trustee holds under `name`; `None` when it holds nothing.
    pub async fn read(&self, name: &str) -> Result<Option<Value>, TrusteeError> {
        match self {
            Target::Kbs { url, tokens, http } => {
                let resp = http
                    .get(format!("{url}/kbs/v0/reference-value/{name}"))
                    .bearer_auth(tokens.token()?)
                    .send()
                    .await
                    .map_err(|e| self.unreachable(e))?;
                let status = resp.status();
                let text =
                    String::from_utf8_lossy(&body(resp).await.map_err(|e| self.unreachable(e))?)
                        .into_owned();
                if status.is_success() {
                    return serde_json::from_str(&text).map(Some).map_err(|e| {
                        TrusteeError::Failed {
                            target: self.name(),
                            what: "reading a reference value",
                            detail: format!("not JSON: {e}"),
                        }
                    });
                }
                // Trustee answers 401 for an unknown name too; its body
                // tells the two apart.
                if text.contains("No reference value found") || status == 404 {
                    return Ok(None);
                }
                // And for a failure of its RVPS (a remote one down, say).
                if text.contains("RvpsError") {
                    return Err(TrusteeError::Failed {
                        target: self.name(),
                        what: "reading a reference value",
                        detail: format!("Trustee's RVPS: {}", shorten(&text)),
                    });
                }
                Err(self.http_error(status, &text, "reading a reference value"))
            }
            Target::Rvps { channel, .. } => {
                let mut c = ReferenceValueProviderServiceClient::new(channel.clone())
                    .max_decoding_message_size(MAX_ANSWER);
                let answer = c
                    .query_reference_value(ReferenceValueQueryRequest {
                        reference_value_id: name.to_string(),
                    })
                    .await
                    .map_err(|s| self.grpc_error(&s, "reading a reference value"))?
                    .into_inner();
                match answer.reference_value_results {
                    None => Ok(None),
                    Some(text) if text.trim().is_empty() || text.trim() == "null" => Ok(None),
                    Some(text) => {
                        serde_json::from_str(&text)
                            .map(Some)
                            .map_err(|e| TrusteeError::Failed {
                                target: self.name(),
                                what: "reading a reference value",
                                detail: format!("not JSON: {e}"),
                            })
                    }
                }
            }
        }
    }

    /// Sets every name of `values` in one registration.
    pub async fn write(&self, values: &ReferenceValues) -> Result<(), TrusteeError> {
        let message = values.provenance_message();
        match self {
            Target::Kbs { url, tokens, http } => {
                let resp = http
                    .post(format!("{url}/kbs/v0/reference-value"))
                    .bearer_auth(tokens.token()?)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(message)
                    .send()
                    .await
                    .map_err(|e| self.unreachable(e))?;
                let status = resp.status();
                if status.is_success() {
                    return Ok(());
                }
                let text =
                    String::from_utf8_lossy(&body(resp).await.map_err(|e| self.unreachable(e))?)
                        .into_owned();
                Err(self.http_error(status, &text, "registering reference values"))
            }
            Target::Rvps { channel, .. } => {
                let mut c = ReferenceValueProviderServiceClient::new(channel.clone());
                c.register_reference_value(ReferenceValueRegisterRequest { message })
                    .await
                    .map_err(|s| self.grpc_error(&s, "registering reference values"))?;
                Ok(())
            }
        }
    }

    /// What the resource policy does with the attestation verdict, when
    /// Trustee lets the broker read it.
    pub async fn policy(&self) -> Result<PolicyVerdict, TrusteeError> {
        let Target::Kbs { url, tokens, http } = self else {
            return Ok(PolicyVerdict::Unknown(
                "a standalone RVPS has no resource policy; check the KBS that uses it".into(),
            ));
        };
        let resp = http
            .get(format!("{url}/kbs/v0/resource-policy"))
            .bearer_auth(tokens.token()?)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        let text = String::from_utf8_lossy(&body(resp).await.map_err(|e| self.unreachable(e))?)
            .into_owned();
        if !status.is_success() {
            return Err(self.http_error(status, &text, "reading the resource policy"));
        }
        Ok(match serde_json::from_str::<Value>(&text) {
            // Trustee v0.21 lists the ids of its policies, not their text.
            Ok(Value::Array(ids)) if ids.iter().all(Value::is_string) => PolicyVerdict::Unknown(
                "this Trustee lists its resource policies but does not return their text; make \
                 sure it requires an affirming verdict (kbs-client config set-resource-policy \
                 --affirming)"
                    .into(),
            ),
            Ok(Value::Object(o)) => match o.get("policy").and_then(Value::as_str) {
                Some(p) => judge_policy(&decode_policy(p)),
                None => PolicyVerdict::Unknown("an answer without a policy".into()),
            },
            Ok(Value::String(p)) => judge_policy(&decode_policy(&p)),
            _ => judge_policy(&text),
        })
    }

    fn http_error(
        &self,
        status: reqwest::StatusCode,
        text: &str,
        what: &'static str,
    ) -> TrusteeError {
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            TrusteeError::Unauthorized {
                target: self.name(),
                detail: format!("HTTP {status}: {}", shorten(text)),
            }
        } else {
            TrusteeError::Failed {
                target: self.name(),
                what,
                detail: format!("HTTP {status}: {}", shorten(text)),
            }
        }
    }

    fn grpc_error(&self, s: &tonic::Status, what: &'static str) -> TrusteeError {
        use tonic::Code;
        match s.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled => {
                self.unreachable(shorten(s.message()))
            }
            _ => TrusteeError::Failed {
                target: self.name(),
                what,
                detail: format!("{:?}: {}", s.code(), shorten(s.message())),
            },
        }
    }
}

/// Whether an `http://` URL names a loopback host.
fn is_loopback_url(url: &str) -> bool {
    let rest = url.trim_start_matches("http://");
    let host_port = rest.split('/').next().unwrap_or_default();
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        host_port.split(':').next().unwrap_or_default()
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A policy as Trustee may return it: base64url of the Rego text, or the
/// text itself.
fn decode_policy(p: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(p.trim_end_matches('='))
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_else(|| p.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_policy_that_checks_for_affirming_is_judged_affirming() {
        let affirming = "package policy\nimport rego.v1\ndefault allow = false\n\
                         allow if {\n not any_not_affirming\n count(input.submods) > 0\n}\n\
                         any_not_affirming if {\n some _, submod in input.submods\n \
                         submod[\"ear.status\"] != \"affirming\"\n}\n";
        assert_eq!(judge_policy(affirming), PolicyVerdict::Affirming);
        let commented =
            "package policy\n# checks ear.status == affirming, one day\nallow := true\n";
        assert!(matches!(
            judge_policy(commented),
            PolicyVerdict::NotAffirming(_)
        ));
        let default = "package policy\ndefault allow = false\nallow if {\n plugin == \"resource\"\n \
                       not input[\"submods\"][\"cpu0\"][\"ear.veraison.annotated-evidence\"][\"sample\"]\n}\n";
        assert!(matches!(
            judge_policy(default),
            PolicyVerdict::NotAffirming(_)
        ));
        use base64::Engine as _;
        let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(affirming);
        assert_eq!(
            judge_policy(&decode_policy(&encoded)),
            PolicyVerdict::Affirming
        );
    }

    // A gRPC channel is made inside the runtime, as the broker makes it.
    #[tokio::test]
    async fn targets_need_a_url_or_an_address() {
        let e = Target::kbs("kbs.example:8080", TokenSource::File("/t".into()), None)
            .err()
            .unwrap();
        assert!(e.contains("http"), "{e}");
        let e = Target::kbs(
            "http://trustee.example:8080",
            TokenSource::File("/t".into()),
            None,
        )
        .err()
        .unwrap();
        assert!(e.contains("in clear"), "{e}");
        for ok in [
            "http://127.0.0.1:8080",
            "http://[::1]:8080/",
            "http://localhost:1",
        ] {
            assert!(
                Target::kbs(ok, TokenSource::File("/t".into()), None).is_ok(),
                "{ok}"
            );
        }
        assert!(Target::rvps("127.0.0.1:50003").is_ok());
    }
}
