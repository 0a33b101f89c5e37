//! A minimal XMPP client for `--protocol xmpp`, written by hand over tokio: stream
//! open, SASL PLAIN, resource bind, session, presence, chat messages, and in-band
//! registration (XEP-0077) to create bench users. It counts every byte on its socket
//! and every round trip of the login, the figures the comparison with Ferry rests on.
//!
//! It is a bench client, not a general one: it splits the stream into top-level
//! stanzas by counting tags and reads only what the bench needs (a message's body and
//! sender); it never parses XML beyond that.

use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::conn::IO_TIMEOUT;

/// One XMPP client stream.
pub struct XmppConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
    pub domain: String,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Times the client waited for the server during login.
    pub round_trips: u32,
}

fn header(domain: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream to='{domain}' xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
    )
}

impl XmppConn {
    pub async fn connect(addr: &str, domain: &str) -> anyhow::Result<XmppConn> {
        let stream = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
            .await
            .context("connect timed out")?
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(XmppConn {
            stream,
            buf: Vec::new(),
            domain: domain.to_owned(),
            bytes_in: 0,
            bytes_out: 0,
            round_trips: 0,
        })
    }

    pub async fn send(&mut self, s: &str) -> anyhow::Result<()> {
        self.stream.write_all(s.as_bytes()).await?;
        self.bytes_out += s.len() as u64;
        Ok(())
    }

    /// The next top-level stanza (or `<stream:stream>` / `</stream:stream>`).
    pub async fn next(&mut self) -> anyhow::Result<String> {
        loop {
            if let Some(s) = take_stanza(&mut self.buf) {
                return Ok(s);
            }
            let mut chunk = [0u8; 8192];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("the XMPP server closed the stream");
            }
            self.bytes_in += n as u64;
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Skips stanzas until one `want` accepts; stream errors and SASL failures fail.
    async fn expect(&mut self, what: &str, want: impl Fn(&str) -> bool) -> anyhow::Result<String> {
        tokio::time::timeout(IO_TIMEOUT, async {
            loop {
                let s = self.next().await?;
                if want(&s) {
                    return Ok(s);
                }
                if s.starts_with("<stream:error") || s.starts_with("<failure") {
                    bail!("{what}: {s}");
                }
                if s == "</stream:stream>" {
                    bail!("{what}: the server closed the stream");
                }
            }
        })
        .await
        .with_context(|| format!("{what} timed out"))?
    }

    /// One request, one awaited answer: a round trip.
    async fn round_trip(
        &mut self,
        send: &str,
        what: &str,
        want: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        self.send(send).await?;
        self.round_trips += 1;
        self.expect(what, want).await
    }

    /// Connects and logs in: stream, SASL PLAIN, stream restart, bind, session, then
    /// an initial presence (not awaited) so messages to the bare JID are delivered.
    pub async fn login(
        addr: &str,
        domain: &str,
        user: &str,
        password: &str,
    ) -> anyhow::Result<XmppConn> {
        let mut c = XmppConn::connect(addr, domain).await?;
        let h = header(domain);
        c.round_trip(&h, "stream features", |s| s.starts_with("<stream:features"))
            .await?;
        let plain = base64(format!("\0{user}\0{password}").as_bytes());
        let auth = format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{plain}</auth>"
        );
        c.round_trip(&auth, "SASL", |s| s.starts_with("<success"))
            .await?;
        c.round_trip(&h, "stream restart", |s| s.starts_with("<stream:features"))
            .await?;
        let bind = "<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
                    <resource>b</resource></bind></iq>";
        let r = c
            .round_trip(bind, "bind", |s| {
                s.starts_with("<iq") && attr(s, "id") == Some("b1")
            })
            .await?;
        if attr(&r, "type") != Some("result") {
            bail!("bind refused: {r}");
        }
        let session =
            "<iq type='set' id='s1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>";
        c.round_trip(session, "session", |s| {
            s.starts_with("<iq") && attr(s, "id") == Some("s1")
        })
        .await?;
        c.send("<presence/>").await?;
        Ok(c)
    }

    /// The socket and whatever was read past the last stanza taken.
    pub fn into_parts(self) -> (TcpStream, Vec<u8>) {
        (self.stream, self.buf)
    }

    /// A chat message to a bare JID.
    pub fn message(to: &str, domain: &str, body: &str) -> String {
        format!("<message to='{to}@{domain}' type='chat'><body>{body}</body></message>")
    }
}

/// Creates `user` by in-band registration; an existing user is fine.
pub async fn register(addr: &str, domain: &str, user: &str, password: &str) -> anyhow::Result<()> {
    let mut c = XmppConn::connect(addr, domain).await?;
    c.round_trip(&header(domain), "stream features", |s| {
        s.starts_with("<stream:features")
    })
    .await?;
    let req = format!(
        "<iq type='set' id='r1'><query xmlns='jabber:iq:register'><username>{user}</username>\
         <password>{password}</password></query></iq>"
    );
    let r = c
        .round_trip(&req, "register", |s| {
            s.starts_with("<iq") && attr(s, "id") == Some("r1")
        })
        .await?;
    if attr(&r, "type") != Some("result") && !r.contains("<conflict") {
        bail!("registering {user}: {r}");
    }
    let _ = c.send("</stream:stream>").await;
    Ok(())
}

/// The value of attribute `name` in a stanza's opening tag.
pub fn attr<'a>(stanza: &'a str, name: &str) -> Option<&'a str> {
    let open = &stanza[..stanza.find('>').unwrap_or(stanza.len())];
    for q in ['\'', '"'] {
        let key = format!(" {name}={q}");
        if let Some(i) = open.find(&key) {
            let rest = &open[i + key.len()..];
            return rest.find(q).map(|end| &rest[..end]);
        }
    }
    None
}

/// The text of a message's `<body>`.
pub fn body(stanza: &str) -> Option<&str> {
    let start = stanza.find("<body>")? + "<body>".len();
    let end = stanza[start..].find("</body>")? + start;
    Some(&stanza[start..end])
}

/// Cuts the first complete top-level stanza off `buf`. The stream header and its close
/// come back as `<stream:stream>` and `</stream:stream>`; XML declarations are skipped.
pub fn take_stanza(buf: &mut Vec<u8>) -> Option<String> {
    'outer: loop {
        let Some(start) = buf.iter().position(|&b| b == b'<') else {
            buf.clear();
            return None;
        };
        buf.drain(..start);
        let mut i = 0;
        let mut depth = 0i32;
        loop {
            let lt = i + buf[i..].iter().position(|&b| b == b'<')?;
            let gt = lt + tag_end(&buf[lt..])?;
            let tag = &buf[lt..=gt];
            if tag.starts_with(b"<?") || tag.starts_with(b"<!") {
                if depth == 0 {
                    buf.drain(..=gt);
                    continue 'outer;
                }
            } else if tag.starts_with(b"<stream:stream") && depth == 0 {
                buf.drain(..=gt);
                return Some("<stream:stream>".into());
            } else if tag.starts_with(b"</stream:stream") && depth == 0 {
                buf.drain(..=gt);
                return Some("</stream:stream>".into());
            } else if tag.starts_with(b"</") {
                depth -= 1;
            } else if !tag.ends_with(b"/>") {
                depth += 1;
            }
            i = gt + 1;
            if depth <= 0 {
                let s = String::from_utf8_lossy(&buf[..=gt]).into_owned();
                buf.drain(..=gt);
                return Some(s);
            }
        }
    }
}

/// Index of the `>` closing the tag at the start of `b`, skipping quoted values.
fn tag_end(b: &[u8]) -> Option<usize> {
    let mut quote = None;
    for (i, &c) in b.iter().enumerate().skip(1) {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == b'\'' || c == b'"' => quote = Some(c),
            None if c == b'>' => return Some(i),
            None => {}
        }
    }
    None
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(T[((n >> (18 - 6 * k)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The XMPP twin of [`super::conn::wire_probe`]: a login's bytes and round trips, and
/// one "hello" from `a` to `b`.
pub async fn wire_probe(
    server: &str,
    domain: &str,
    prefix: &str,
    password: &str,
) -> anyhow::Result<Value> {
    let (a, b) = (format!("{prefix}a"), format!("{prefix}b"));
    register(server, domain, &a, password).await?;
    register(server, domain, &b, password).await?;
    let mut ca = XmppConn::login(server, domain, &a, password).await?;
    let login = (ca.bytes_out, ca.bytes_in, ca.round_trips);
    let mut cb = XmppConn::login(server, domain, &b, password).await?;
    // Presence is not answered; give the server a moment to make both available, and
    // read whatever it sent after the login so it does not count towards the hello.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for c in [&mut ca, &mut cb] {
        while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(50), c.next()).await {}
    }
    let (out0, bin0) = (ca.bytes_out, cb.bytes_in);
    ca.send(&XmppConn::message(&b, domain, "hello")).await?;
    let sent = ca.bytes_out - out0;
    let m = cb
        .expect("hello delivery", |s| s.starts_with("<message"))
        .await?;
    if body(&m) != Some("hello") {
        bail!("unexpected delivery: {m}");
    }
    Ok(json!({
        "login_round_trips": login.2,
        "login_sent_bytes": login.0,
        "login_received_bytes": login.1,
        "login_bytes": login.0 + login.1,
        "hello_sent_bytes": sent,
        "hello_delivered_bytes": cb.bytes_in - bin0,
        "hello_delivered": m,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stanzas_split() {
        let mut b = b"<?xml version='1.0'?><stream:stream from='x' id='1'><stream:features><a/><b x='>'>t</b></stream:features><message to='u'><body>1 2</body></message><iq id='".to_vec();
        assert_eq!(take_stanza(&mut b).unwrap(), "<stream:stream>");
        assert_eq!(
            take_stanza(&mut b).unwrap(),
            "<stream:features><a/><b x='>'>t</b></stream:features>"
        );
        let m = take_stanza(&mut b).unwrap();
        assert_eq!(body(&m), Some("1 2"));
        assert_eq!(attr(&m, "to"), Some("u"));
        assert_eq!(take_stanza(&mut b), None);
        b.extend_from_slice(b"b1' type=\"result\"/></stream:stream>");
        let iq = take_stanza(&mut b).unwrap();
        assert_eq!(attr(&iq, "id"), Some("b1"));
        assert_eq!(attr(&iq, "type"), Some("result"));
        assert_eq!(take_stanza(&mut b).unwrap(), "</stream:stream>");
    }

    #[test]
    fn base64_plain() {
        assert_eq!(base64(b"\0u\0p"), "AHUAcA==");
        assert_eq!(base64(b"abc"), "YWJj");
        assert_eq!(base64(b"ab"), "YWI=");
    }
}
