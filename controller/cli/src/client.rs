//! A small HTTP/1.1 client for agentcgd's unix socket (hyper on a current-thread
//! tokio runtime: no threads, microseconds of start-up). One connection is kept alive
//! for all the requests of a command (`agentcg run` declares and finishes on it); if
//! the daemon closed it meanwhile, a request that was not sent goes on a new one.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Where the CLI looks for the daemon when neither `--socket` nor `AGENTCG_SOCKET` says.
pub const DEFAULT_SOCKET: &str = "/run/agentcg/agentcg.sock";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach agentcgd at {socket}: {source} (is agentcgd running? pass --socket or set AGENTCG_SOCKET)"
    )]
    Connect {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("{message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("talking to agentcgd: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The API's machine code, if the daemon answered with an error.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// A client bound to one socket path.
#[derive(Debug)]
pub struct Client {
    socket: PathBuf,
    rt: tokio::runtime::Runtime,
    conn: RefCell<Option<SendRequest<Full<Bytes>>>>,
}

impl Client {
    pub fn new(socket: &Path) -> Result<Client, ClientError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| ClientError::Protocol(format!("runtime: {e}")))?;
        Ok(Client {
            socket: socket.to_path_buf(),
            rt,
            conn: RefCell::new(None),
        })
    }

    pub fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.request(Method::GET, path, None)
    }

    pub fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.request(Method::POST, path, Some(body))
    }

    pub fn delete(&self, path: &str) -> Result<Value, ClientError> {
        self.request(Method::DELETE, path, None)
    }

    /// Opens a connection to the daemon.
    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::Connect {
                socket: self.socket.clone(),
                source,
            })?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        tokio::spawn(conn);
        Ok(sender)
    }

    /// One request, on the kept connection when it is still open; a JSON error body
    /// becomes [`ClientError::Api`].
    pub fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        self.rt.block_on(async {
            let proto = |e: hyper::Error| ClientError::Protocol(e.to_string());
            let bytes = body.map(|b| b.to_string()).unwrap_or_default();
            let mut req = Request::builder()
                .method(method)
                .uri(path)
                .header("host", "agentcgd")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(bytes)))
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            let kept = self.conn.borrow_mut().take();
            if let Some(mut sender) = kept.filter(|s| !s.is_closed()) {
                match sender.try_send_request(req).await {
                    Ok(resp) => {
                        *self.conn.borrow_mut() = Some(sender);
                        return reply(resp).await;
                    }
                    // Not sent (the daemon closed the idle connection): resend below.
                    Err(mut e) => match e.take_message() {
                        Some(unsent) => req = unsent,
                        None => return Err(proto(e.into_error())),
                    },
                }
            }
            let mut sender = self.connect().await?;
            let resp = sender.send_request(req).await.map_err(proto)?;
            *self.conn.borrow_mut() = Some(sender);
            reply(resp).await
        })
    }
}

/// The JSON body of a reply; an error status becomes [`ClientError::Api`].
async fn reply(resp: hyper::Response<hyper::body::Incoming>) -> Result<Value, ClientError> {
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| ClientError::Protocol(e.to_string()))?
        .to_bytes();
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ClientError::Protocol(format!("bad reply ({status}): {e}")))?;
    if status.is_success() {
        Ok(value)
    } else {
        Err(ClientError::Api {
            status: status.as_u16(),
            code: value["error"]["code"]
                .as_str()
                .unwrap_or("unknown")
                .to_string(),
            message: value["error"]["message"]
                .as_str()
                .unwrap_or("no message")
                .to_string(),
        })
    }
}
