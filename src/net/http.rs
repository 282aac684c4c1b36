//! Outbound HTTP(S) for fetching an identity provider's discovery document and keys.
//!
//! Every fetch has a timeout and a body-size cap (a provider is a peer like any other), follows
//! no redirects, and uses rustls with the ring provider (DESIGN §6): the platform's trust
//! store by default, or only the CA file an operator names.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openidconnect::{HttpRequest, HttpResponse};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls_platform_verifier::BuilderVerifierExt;

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: {}", reasons(source))]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url}: the response is larger than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("cannot build the request: {0}")]
    Request(String),
}

/// What went wrong under a transport error ("tcp connect error: Connection refused", "invalid
/// peer certificate: UnknownIssuer"): reqwest's own message only repeats the URL.
fn reasons(error: &reqwest::Error) -> String {
    let mut reasons: Vec<String> = Vec::new();
    let mut cause = std::error::Error::source(error);
    while let Some(inner) = cause {
        let text = inner.to_string();
        if !reasons.iter().any(|r| r.contains(&text)) {
            reasons.push(text);
        }
        cause = inner.source();
    }
    if reasons.is_empty() {
        error.to_string()
    } else {
        reasons.join(": ")
    }
}

/// An HTTP client for one kind of peer (e.g. one issuer), with its limits.
#[derive(Debug, Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    max_body: usize,
}

impl Fetcher {
    /// `ca`: trust only this PEM bundle instead of the platform's roots.
    pub fn new(ca: Option<&Path>, timeout: Duration, max_body: usize) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let tls = match ca {
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                if certs.is_empty() {
                    return Err(format!("{}: no PEM certificate found", path.display()));
                }
                for cert in certs {
                    roots
                        .add(cert)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            None => builder
                .with_platform_verifier()
                .map_err(|e| format!("cannot load the platform's trusted certificates: {e}"))?
                .with_no_client_auth(),
        };
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("pgwarden/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self { client, max_body })
    }

    /// Perform `request`, reading at most `max_body` bytes of the response.
    pub async fn fetch(&self, request: HttpRequest) -> Result<HttpResponse, FetchError> {
        let url = request.uri().to_string();
        let transport = |source| FetchError::Transport {
            url: url.clone(),
            source,
        };
        let (parts, body) = request.into_parts();
        let mut response = self
            .client
            .request(parts.method, &url)
            .headers(parts.headers)
            .body(body)
            .send()
            .await
            .map_err(transport)?;
        if response
            .content_length()
            .is_some_and(|len| len > self.max_body as u64)
        {
            return Err(FetchError::TooLarge {
                url,
                limit: self.max_body,
            });
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > self.max_body {
                return Err(FetchError::TooLarge {
                    url,
                    limit: self.max_body,
                });
            }
            body.extend_from_slice(&chunk);
        }
        let mut out = http_response(response.status(), body)?;
        *out.headers_mut() = response.headers().clone();
        Ok(out)
    }
}

fn http_response(status: reqwest::StatusCode, body: Vec<u8>) -> Result<HttpResponse, FetchError> {
    openidconnect::http::Response::builder()
        .status(status.as_u16())
        .body(body)
        .map_err(|e| FetchError::Request(e.to_string()))
}

/// openidconnect's discovery and key-set fetches go through [`Fetcher::fetch`].
impl<'c> openidconnect::AsyncHttpClient<'c> for Fetcher {
    type Error = FetchError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<HttpResponse, FetchError>> + Send + 'c>,
    >;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(self.fetch(request))
    }
}

/// A response body pgwarden's small HTTP servers send.
pub type Body = http_body_util::Full<bytes::Bytes>;

/// Serve HTTP/1.1 on `listener` (over TLS when given an acceptor) until `stop`, answering each
/// request with `handler`. For the admin endpoints and the development issuer: small,
/// internal servers, one task per connection.
/// How a request reached the server, in its extensions: whom it came from and whether
/// over TLS (the admin API takes bearer tokens only over TLS or from loopback).
#[derive(Debug, Clone, Copy)]
pub struct Transport {
    pub peer: std::net::SocketAddr,
    pub tls: bool,
}

impl Transport {
    /// Safe for credentials: encrypted, or not leaving this machine.
    pub fn is_private(&self) -> bool {
        self.tls || self.peer.ip().is_loopback()
    }
}

/// How long a connection may stay silent before its first byte says TLS or not.
const FIRST_BYTE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub async fn serve<F, Fut>(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: tokio_util::sync::CancellationToken,
    handler: F,
) where
    F: Fn(hyper::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = hyper::Response<Body>> + Send + 'static,
{
    use hyper_util::rt::TokioIo;
    loop {
        let tcp = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => continue,
            },
        };
        let (tcp, peer) = tcp;
        let handler = handler.clone();
        let tls = tls.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            // With TLS configured, a connection that opens with a TLS handshake record
            // (0x16) gets TLS; others plain HTTP, which health checks use and which the
            // handler sees as such (`Transport::tls`). A client that sends nothing is
            // dropped with the connection.
            let mut first = [0u8; 1];
            let tls = match tls {
                Some(acceptor) => {
                    let peeked =
                        tokio::time::timeout(FIRST_BYTE_TIMEOUT, tcp.peek(&mut first)).await;
                    match peeked {
                        Ok(Ok(1)) if first[0] == 0x16 => Some(acceptor),
                        Ok(Ok(1)) => None,
                        _ => return,
                    }
                }
                None => None,
            };
            let transport = Transport {
                peer,
                tls: tls.is_some(),
            };
            let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
                request.extensions_mut().insert(transport);
                let response = handler(request);
                async move { Ok::<_, std::convert::Infallible>(response.await) }
            });
            let http = hyper::server::conn::http1::Builder::new();
            let served = async {
                match tls {
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(tcp).await {
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                    None => {
                        let _ = http.serve_connection(TokioIo::new(tcp), service).await;
                    }
                }
            };
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = served => {}
            }
        });
    }
}

/// A response with a body and its content type.
pub fn response(
    status: hyper::StatusCode,
    content_type: &'static str,
    body: String,
) -> hyper::Response<Body> {
    let mut response = hyper::Response::new(Body::new(bytes::Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::Transport;

    #[test]
    fn credentials_travel_only_encrypted_or_on_this_machine() {
        let at = |peer: &str, tls: bool| Transport {
            peer: peer.parse().unwrap(),
            tls,
        };
        assert!(at("127.0.0.1:5000", false).is_private());
        assert!(at("[::1]:5000", false).is_private());
        assert!(at("10.0.0.7:5000", true).is_private());
        assert!(!at("10.0.0.7:5000", false).is_private());
        assert!(!at("[2001:db8::1]:5000", false).is_private());
    }
}
