//! What the senders share about HTTP: the client (rustls, HTTP/2 by ALPN, the extra CA
//! of the configuration, the request timeout), Retry-After, and reading a failed
//! request as an [`Outcome`].
//!
//! It must not decide what a provider's answer means: each sender reads its own.

use std::time::Duration;

use crate::{ConfigError, Outcome};

/// One client per sender: its own connection pool (APNs holds a few HTTP/2
/// connections, Web Push one per push service host).
pub(crate) fn client(
    ca_pem: Option<&str>,
    timeout: Duration,
) -> Result<reqwest::Client, ConfigError> {
    let mut b = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .user_agent(concat!("ferry-push/", env!("CARGO_PKG_VERSION")));
    if let Some(pem) = ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
            .map_err(|e| ConfigError(format!("push.ca_file: {e}")))?;
        if certs.is_empty() {
            return Err(ConfigError("push.ca_file: no certificate in it".into()));
        }
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    b.build()
        .map_err(|e| ConfigError(format!("push: cannot make the HTTP client: {e}")))
}

/// The provider's `Retry-After`: delay-seconds, or an HTTP-date (RFC 9110 §10.2.3; a
/// Web Push service may send either), as the time from now (zero for a date past).
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    parse_retry_after(v, std::time::SystemTime::now())
}

fn parse_retry_after(v: &str, now: std::time::SystemTime) -> Option<Duration> {
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A request that got no answer: a timeout or a connection error is worth trying again;
/// a request that could not even be built is not.
pub(crate) fn transport_error(e: &reqwest::Error) -> Outcome {
    if e.is_builder() {
        return Outcome::Rejected {
            reason: format!("bad request: {e}"),
        };
    }
    let what = if e.is_timeout() {
        "timeout"
    } else {
        "connection"
    };
    Outcome::Retry {
        after: None,
        reason: format!("{what}: {}", error_chain(e)),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Waits for a slot under `limit`; a closed semaphore (never closed here) reads as a
/// retry rather than a panic.
pub(crate) async fn slot(
    limit: &tokio::sync::Semaphore,
) -> Result<tokio::sync::SemaphorePermit<'_>, Outcome> {
    limit.acquire().await.map_err(|_| Outcome::Retry {
        after: None,
        reason: "sender closed".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        // Sun, 06 Nov 1994 08:49:37 GMT (RFC 9110's example).
        let date = UNIX_EPOCH + Duration::from_secs(784_111_777);
        let now = date - Duration::from_secs(90);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(90))
        );
        // A date already past: try again now.
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", SystemTime::now()),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }
}
