//! The short link: protobuf over HTTP POST. With a server key every request body is
//! sealed to it and the answer comes back sealed to a fresh per-request key
//! (`ferry_proto::sealed`, docs/protocol.md 3.1): no extra round trip.

use bytes::Bytes;
use ferry_proto::{cmd, sealed, v1, ProtoMessage};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use crate::ClientError;

/// The short-link path of command `c`, from the command table (one place names each
/// path: the SDK, the gateway and docs/protocol.md all read it there).
pub(crate) fn path(c: u8) -> &'static str {
    cmd::path(c).expect("a command of the short link")
}

/// A short-link client for one server (`HOST:PORT`).
#[derive(Clone)]
pub struct ShortLink {
    base: String,
    http: Client<HttpConnector, Full<Bytes>>,
    /// The server key POST bodies are sealed to; `None`: plaintext.
    key: Option<[u8; 32]>,
}

impl ShortLink {
    /// A plaintext short link (the server must allow plaintext).
    pub fn new(server: &str) -> Self {
        Self::sealed(server, None)
    }

    /// A short link that seals every POST to `key` (plaintext when `None`).
    pub fn sealed(server: &str, key: Option<[u8; 32]>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(std::time::Duration::from_secs(5)));
        ShortLink {
            base: format!("http://{server}"),
            http: Client::builder(TokioExecutor::new()).build(connector),
            key,
        }
    }

    /// The server key requests are sealed to.
    pub fn key(&self) -> Option<[u8; 32]> {
        self.key
    }

    /// POSTs `body` to `/v1/{method}`, sealed when there is a key: the status and the
    /// (opened) answer body.
    pub async fn post_raw(
        &self,
        method: &str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> Result<(http::StatusCode, Bytes), ClientError> {
        let (body, reply, content_type) = match &self.key {
            Some(key) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                // The token rides inside the seal, never in a plain header.
                let (wire, reply) = sealed::seal_request(key, token.unwrap_or(""), &body, now)
                    .map_err(|e| ClientError::protocol_source("sealing a request", e))?;
                (wire, Some(reply), sealed::CONTENT_TYPE)
            }
            None => (body, None, "application/x-protobuf"),
        };
        let bearer = match (token, &self.key) {
            (Some(t), None) => Some(t),
            _ => None,
        };
        let resp = self.post(method, bearer, content_type, body).await?;
        let status = resp.status();
        let is_sealed = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes() == sealed::CONTENT_TYPE.as_bytes());
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(ClientError::http_source)?
            .to_bytes();
        match (reply, is_sealed) {
            (Some(reply), true) => sealed::open_response(&reply, &body)
                .map(|b| (status, Bytes::from(b)))
                .map_err(|e| ClientError::protocol_source("sealed answer does not open", e)),
            // A refusal before the request was opened (bad seal, replay, clock) is plain;
            // a success must be sealed.
            (Some(_), false) if status.is_success() => Err(ClientError::protocol(
                "the server answered a sealed request in plain",
            )),
            _ => Ok((status, body)),
        }
    }

    /// One `POST /v1/{method}` of `body` as it is, with a bearer token when given.
    async fn post(
        &self,
        method: &str,
        bearer: Option<&str>,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<http::Response<hyper::body::Incoming>, ClientError> {
        let mut builder = http::Request::post(format!("{}/v1/{method}", self.base))
            .header(http::header::CONTENT_TYPE, content_type)
            .header(ferry_proto::PROTOCOL_HEADER, ferry_proto::PROTOCOL_VERSION);
        if let Some(t) = bearer {
            builder = builder.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let request = builder
            .body(Full::new(Bytes::from(body)))
            .map_err(ClientError::http_source)?;
        let resp = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            self.http.request(request),
        )
        .await
        .map_err(|_| ClientError::timeout())?
        .map_err(ClientError::http_source)?;
        answered_protocol(resp.headers())?;
        Ok(resp)
    }

    /// POSTs `req` to `/v1/{method}` **unsealed and without a token**, even when the link
    /// seals: for a request protected another way (a media chunk encrypted under its
    /// upload key, docs/protocol.md Media). Decodes the answer (or its Error).
    pub async fn call_unsealed<Req: ProtoMessage, Resp: ProtoMessage + Default>(
        &self,
        method: &str,
        req: &Req,
    ) -> Result<Resp, ClientError> {
        let resp = self
            .post(method, None, "application/x-protobuf", req.encode_to_vec())
            .await?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(ClientError::http_source)?
            .to_bytes();
        if status.is_success() {
            Resp::decode(body).map_err(|e| ClientError::protocol_source("", e))
        } else {
            Err(refusal(status, body))
        }
    }

    /// POSTs `req` to `/v1/{method}` and decodes the answer (or its Error).
    pub async fn call<Req: ProtoMessage, Resp: ProtoMessage + Default>(
        &self,
        method: &str,
        token: Option<&str>,
        req: &Req,
    ) -> Result<Resp, ClientError> {
        let (status, body) = self.post_raw(method, token, req.encode_to_vec()).await?;
        if status.is_success() {
            Resp::decode(body).map_err(|e| ClientError::protocol_source("", e))
        } else {
            Err(refusal(status, body))
        }
    }

    /// One `GET /v1/{path}` with the given headers: status, headers and body.
    async fn fetch(
        &self,
        path: &str,
        headers: &[(http::header::HeaderName, String)],
    ) -> Result<(http::StatusCode, http::HeaderMap, Bytes), ClientError> {
        let mut builder = http::Request::get(format!("{}/v1/{path}", self.base))
            .header(ferry_proto::PROTOCOL_HEADER, ferry_proto::PROTOCOL_VERSION);
        for (name, value) in headers {
            builder = builder.header(name, value);
        }
        let request = builder
            .body(Full::new(Bytes::new()))
            .map_err(ClientError::http_source)?;
        let resp = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            self.http.request(request),
        )
        .await
        .map_err(|_| ClientError::timeout())?
        .map_err(ClientError::http_source)?;
        answered_protocol(resp.headers())?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(ClientError::http_source)?
            .to_bytes();
        Ok((parts.status, parts.headers, body))
    }

    /// `GET /v1/{path}` for a raw body (an avatar). `Ok(None)` when `etag` is current
    /// (304).
    pub async fn get(
        &self,
        path: &str,
        etag: Option<&str>,
    ) -> Result<Option<(Bytes, String)>, ClientError> {
        let headers: Vec<_> = etag
            .map(|e| (http::header::IF_NONE_MATCH, e.to_owned()))
            .into_iter()
            .collect();
        let (status, headers, body) = self.fetch(path, &headers).await?;
        if status == http::StatusCode::NOT_MODIFIED {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(refusal(status, body));
        }
        let etag = headers
            .get(http::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        Ok(Some((body, etag)))
    }

    /// `GET /v1/{path}` with a bearer token and, when given, `Range: bytes=start-end`
    /// (inclusive). Returns the body and the total size from `Content-Range` (or the
    /// body's length on a 200).
    pub async fn get_range(
        &self,
        path: &str,
        token: &str,
        range: Option<(u64, u64)>,
    ) -> Result<(Bytes, u64), ClientError> {
        let mut headers = vec![(http::header::AUTHORIZATION, format!("Bearer {token}"))];
        if let Some((a, b)) = range {
            headers.push((http::header::RANGE, format!("bytes={a}-{b}")));
        }
        let (status, headers, body) = self.fetch(path, &headers).await?;
        if !status.is_success() {
            return Err(refusal(status, body));
        }
        let total = headers
            .get(http::header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit_once('/'))
            .and_then(|(_, n)| n.parse::<u64>().ok())
            .unwrap_or(body.len() as u64);
        Ok((body, total))
    }

    pub async fn register(&self, username: &str, password: &str) -> Result<u64, ClientError> {
        let r: v1::RegisterResp = self
            .call(
                path(cmd::REGISTER),
                None,
                &v1::RegisterReq {
                    username: username.into(),
                    password: password.into(),
                },
            )
            .await?;
        Ok(r.user_id)
    }

    pub async fn auth(
        &self,
        username: &str,
        password: &str,
        device_id: &str,
    ) -> Result<v1::AuthResp, ClientError> {
        self.call(
            path(cmd::AUTH),
            None,
            &v1::AuthReq {
                username: username.into(),
                password: password.into(),
                device_id: device_id.into(),
            },
        )
        .await
    }

    /// The endpoint list for this client (`POST /v1/endpoints`); `version` is the one
    /// held (0: none), answered `unchanged` when current.
    pub async fn endpoints(&self, version: u64) -> Result<v1::EndpointsResp, ClientError> {
        self.call(path(cmd::ENDPOINTS), None, &v1::EndpointsReq { version })
            .await
    }

    /// Reports connect attempts (`POST /v1/endpoints/report`); returns how many counted.
    pub async fn report_endpoints(
        &self,
        token: &str,
        samples: Vec<v1::ConnectSample>,
    ) -> Result<u32, ClientError> {
        let r: v1::EndpointReportResp = self
            .call(
                path(cmd::ENDPOINT_REPORT),
                Some(token),
                &v1::EndpointReportReq { samples },
            )
            .await?;
        Ok(r.accepted)
    }

    /// Sync over HTTP, for a client without a long link.
    pub async fn newsync(
        &self,
        token: &str,
        synckey: u64,
        limit: u32,
    ) -> Result<v1::SyncResp, ClientError> {
        self.call(
            path(cmd::SYNC),
            Some(token),
            &v1::SyncReq { synckey, limit },
        )
        .await
    }
}

/// The error a non-2xx answer carries (a protobuf `Error`, or just its status).
/// Checks the version an answer's `Ferry-Protocol` header names (absent: a server from
/// before versions, which speaks 1; unreadable: a protocol error).
fn answered_protocol(headers: &http::HeaderMap) -> Result<u32, ClientError> {
    let answered = match headers.get(ferry_proto::PROTOCOL_HEADER) {
        None => 0,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| ClientError::protocol("unreadable Ferry-Protocol header"))?,
    };
    crate::connect::check_protocol(answered)
}

fn refusal(status: http::StatusCode, body: Bytes) -> ClientError {
    match v1::Error::decode(body) {
        Ok(e) => ClientError::from_error(e),
        Err(_) => ClientError::http(format!("HTTP {status}")),
    }
}
