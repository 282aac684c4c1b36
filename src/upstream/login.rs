//! Logging in to the upstream server: StartupMessage with the client's parameters (the user
//! replaced by the granted role), then whatever authentication the server asks for.

use bytes::{BufMut, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::frontend;
use tokio::io::AsyncWriteExt;

use super::{Endpoint, UpstreamError};
use crate::auth::Grant;
use crate::config::{Secret, UpstreamAuth};
use crate::net::MaybeTls;
use crate::protocol::frame::{FrameBuffer, FrameLimits};
use crate::protocol::{split_cstr, split_i32, views, ProtocolError};

/// A logged-in upstream connection, ready for queries.
#[derive(Debug)]
pub struct Upstream {
    pub stream: MaybeTls,
    /// Bytes read after ReadyForQuery (normally none).
    pub reader: FrameBuffer,
    pub process_id: i32,
    pub secret: Vec<u8>,
    /// ParameterStatus and NoticeResponse frames, raw, to pass on to the client.
    pub greeting: BytesMut,
    pub parameters: Vec<(Vec<u8>, Vec<u8>)>,
    pub transaction_status: u8,
}

/// Connect and log in as `grant.role` to `grant.database`. `parameters` are the client's
/// startup parameters, forwarded except `user` and `database`, which always come from the
/// grant: left to the server, an absent database would default to the *role's* name, a
/// database nobody authorized.
pub async fn login(
    endpoint: &Endpoint,
    grant: &Grant,
    password: Option<&Secret>,
    parameters: &[(String, Vec<u8>)],
    limits: FrameLimits,
) -> Result<Upstream, UpstreamError> {
    let role = grant.role.as_str();
    let mut stream = endpoint.connect().await?;
    let mut out = BytesMut::new();
    startup_message(&mut out, grant, parameters);
    stream.write_all(&out).await?;

    let mut reader = FrameBuffer::new(limits);
    let mut greeting = BytesMut::new();
    let mut params = Vec::new();
    let mut key = None;
    let mut scram: Option<ScramSha256> = None;
    // Whether the server asked for anything, and whether a SCRAM exchange ended with its
    // proof: AuthenticationOk is accepted only after a method `upstream.auth_methods` allows.
    let mut asked = false;
    let mut scram_proven = false;
    let allow = |method: UpstreamAuth| {
        if endpoint.auth_methods.contains(&method) {
            Ok(())
        } else {
            Err(UpstreamError::AuthNotAllowed(method.name()))
        }
    };
    loop {
        let Some(header) = reader.peek()? else {
            if reader.fill(&mut stream).await? == 0 {
                return Err(UpstreamError::ClosedDuringLogin);
            }
            continue;
        };
        let body = reader.body(header);
        out.clear();
        match header.tag {
            b'R' => {
                let (code, data) = split_i32(body).ok_or(ProtocolError::Malformed {
                    what: "authentication request",
                    detail: "too short",
                })?;
                // Once SCRAM has started, nothing but its own next steps may follow.
                if scram.is_some() && !matches!(code, 11 | 12) && !(code == 0 && scram_proven) {
                    return Err(UpstreamError::ScramIncomplete);
                }
                match code {
                    0 if !asked => allow(UpstreamAuth::None)?,
                    0 => {}
                    3 => {
                        allow(UpstreamAuth::Password)?;
                        let pw = password.ok_or_else(|| UpstreamError::NoPassword(role.into()))?;
                        frontend::password_message(pw.expose().as_bytes(), &mut out)?;
                    }
                    5 => {
                        allow(UpstreamAuth::Md5)?;
                        let pw = password.ok_or_else(|| UpstreamError::NoPassword(role.into()))?;
                        let salt: [u8; 4] =
                            data.try_into().map_err(|_| ProtocolError::Malformed {
                                what: "MD5 authentication request",
                                detail: "salt is not 4 bytes",
                            })?;
                        let hash = postgres_protocol::authentication::md5_hash(
                            role.as_bytes(),
                            pw.expose().as_bytes(),
                            salt,
                        );
                        frontend::password_message(hash.as_bytes(), &mut out)?;
                    }
                    10 => {
                        allow(UpstreamAuth::ScramSha256)?;
                        let pw = password.ok_or_else(|| UpstreamError::NoPassword(role.into()))?;
                        if !mechanisms(data).any(|m| m == SCRAM_SHA_256.as_bytes()) {
                            return Err(UpstreamError::UnsupportedAuth(
                                "a SASL mechanism other than SCRAM-SHA-256",
                            ));
                        }
                        // "n": pgwarden does not do channel binding upstream yet, and says so
                        // honestly (a "y" over TLS would be refused as a downgrade).
                        let client =
                            ScramSha256::new(pw.expose().as_bytes(), ChannelBinding::unsupported());
                        frontend::sasl_initial_response(SCRAM_SHA_256, client.message(), &mut out)?;
                        scram = Some(client);
                    }
                    11 => {
                        let client = scram.as_mut().ok_or(ProtocolError::Unexpected {
                            tag: b'R',
                            phase: "login",
                        })?;
                        client.update(data).map_err(UpstreamError::Scram)?;
                        frontend::sasl_response(client.message(), &mut out)?;
                    }
                    12 => {
                        let client = scram.as_mut().ok_or(ProtocolError::Unexpected {
                            tag: b'R',
                            phase: "login",
                        })?;
                        client.finish(data).map_err(UpstreamError::Scram)?;
                        scram_proven = true;
                    }
                    2 => return Err(UpstreamError::UnsupportedAuth("Kerberos V5")),
                    6 => return Err(UpstreamError::UnsupportedAuth("SCM credential")),
                    7 | 8 => return Err(UpstreamError::UnsupportedAuth("GSSAPI")),
                    9 => return Err(UpstreamError::UnsupportedAuth("SSPI")),
                    _ => return Err(UpstreamError::UnsupportedAuth("an unknown method")),
                }
                asked = true;
            }
            b'E' => {
                let fields = views::error_fields(body)?;
                let field = |code: u8| {
                    fields
                        .iter()
                        .find(|(c, _)| *c == code)
                        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                };
                return Err(UpstreamError::Refused {
                    sqlstate: field(b'C').unwrap_or_default(),
                    message: field(b'M').unwrap_or_default(),
                });
            }
            b'S' => {
                let (name, value) = views::parameter_status(body)?;
                params.push((name.to_vec(), value.to_vec()));
                greeting.extend_from_slice(&reader.bytes()[..header.wire_len()]);
            }
            b'N' => greeting.extend_from_slice(&reader.bytes()[..header.wire_len()]),
            b'K' => {
                let (pid, secret) = split_i32(body).ok_or(ProtocolError::Malformed {
                    what: "BackendKeyData",
                    detail: "too short",
                })?;
                key = Some((pid, secret.to_vec()));
            }
            // We only ever ask for 3.0, so a downgrade notice needs no action.
            b'v' => {}
            b'Z' => {
                let status = *body.first().ok_or(ProtocolError::Malformed {
                    what: "ReadyForQuery",
                    detail: "no status",
                })?;
                reader.consume(header.wire_len());
                let (process_id, secret) = key.unwrap_or((0, Vec::new()));
                return Ok(Upstream {
                    stream,
                    reader,
                    process_id,
                    secret,
                    greeting,
                    parameters: params,
                    transaction_status: status,
                });
            }
            tag => {
                return Err(ProtocolError::Unexpected {
                    tag,
                    phase: "upstream login",
                }
                .into())
            }
        }
        reader.consume(header.wire_len());
        if !out.is_empty() {
            stream.write_all(&out).await?;
        }
    }
}

impl Upstream {
    /// Run one query (no parameters) on this connection before it is handed to a session:
    /// its rows (text values; `None` for NULL), or the server's error message. Notices and
    /// parameter changes go to the greeting.
    pub async fn simple_query(
        &mut self,
        sql: &str,
    ) -> Result<Result<Vec<Vec<Option<Vec<u8>>>>, String>, UpstreamError> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out)?;
        self.stream.write_all(&out).await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let Some(header) = self.reader.peek()? else {
                if self.reader.fill(&mut self.stream).await? == 0 {
                    return Err(UpstreamError::ClosedDuringLogin);
                }
                continue;
            };
            let body = self.reader.body(header);
            match header.tag {
                b'D' => rows.push(
                    views::data_row(body)?
                        .into_iter()
                        .map(|v| v.map(<[u8]>::to_vec))
                        .collect(),
                ),
                b'E' => {
                    let message = views::error_fields(body)?
                        .into_iter()
                        .find(|(code, _)| *code == b'M')
                        .map(|(_, m)| String::from_utf8_lossy(m).into_owned());
                    error = Some(message.unwrap_or_default());
                }
                b'S' | b'N' => self
                    .greeting
                    .extend_from_slice(&self.reader.bytes()[..header.wire_len()]),
                b'T' | b'C' | b'I' => {}
                b'Z' => {
                    self.transaction_status = *body.first().ok_or(ProtocolError::Malformed {
                        what: "ReadyForQuery",
                        detail: "no status",
                    })?;
                    self.reader.consume(header.wire_len());
                    return Ok(error.map_or(Ok(rows), Err));
                }
                tag => {
                    return Err(ProtocolError::Unexpected {
                        tag,
                        phase: "a query pgwarden runs itself",
                    }
                    .into())
                }
            }
            self.reader.consume(header.wire_len());
        }
    }

    /// The current values of settings, asked once the login is done and before the
    /// client's first message: what the session starts with, however it was set (the role's
    /// or the database's defaults, `options`, the policy). `None` for each when the server
    /// does not say (an error).
    pub async fn current_settings(
        &mut self,
        names: &[&str],
    ) -> Result<Vec<Option<Vec<u8>>>, UpstreamError> {
        let columns: Vec<String> = names
            .iter()
            .map(|name| format!("pg_catalog.current_setting('{name}')"))
            .collect();
        let rows = self
            .simple_query(&format!("SELECT {}", columns.join(", ")))
            .await?;
        Ok(match rows {
            Ok(mut rows) if rows.len() == 1 && rows[0].len() == names.len() => rows.remove(0),
            _ => vec![None; names.len()],
        })
    }
}

fn mechanisms(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (name, rest) = split_cstr(data)?;
        data = rest;
        (!name.is_empty()).then_some(name)
    })
}

/// StartupMessage 3.0. Written by hand because parameter values are bytes in the client's
/// encoding, not necessarily UTF-8.
fn startup_message(out: &mut BytesMut, grant: &Grant, parameters: &[(String, Vec<u8>)]) {
    let start = out.len();
    out.put_i32(0);
    out.put_i32(196_608);
    for (name, value) in [("user", &grant.role), ("database", &grant.database)] {
        out.put_slice(name.as_bytes());
        out.put_u8(0);
        out.put_slice(value.as_bytes());
        out.put_u8(0);
    }
    let forwarded = parameters
        .iter()
        .filter(|(n, _)| n != "user" && n != "database");
    for (name, value) in forwarded {
        out.put_slice(name.as_bytes());
        out.put_u8(0);
        out.put_slice(value);
        out.put_u8(0);
    }
    out.put_u8(0);
    let len = i32::try_from(out.len() - start).unwrap_or(i32::MAX);
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_and_database_always_come_from_the_grant() {
        let grant = Grant {
            database: "app".into(),
            role: "app_rw".into(),
        };
        let client = vec![
            ("user".to_owned(), b"alice".to_vec()),
            ("database".to_owned(), Vec::new()),
            ("application_name".to_owned(), b"caf\xe9".to_vec()),
        ];
        let mut out = BytesMut::new();
        startup_message(&mut out, &grant, &client);
        assert_eq!(
            &out[8..],
            b"user\0app_rw\0database\0app\0application_name\0caf\xe9\0\0"
        );
        assert_eq!(
            i32::from_be_bytes([out[0], out[1], out[2], out[3]]) as usize,
            out.len()
        );
    }
}
