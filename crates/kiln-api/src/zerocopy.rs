//! Large local files sent with `sendfile(2)`, under hyper's HTTP/1 framing.
//!
//! hyper owns the connection and writes every response itself, from the
//! body's chunks. To send a file without copying it through user space,
//! [`Listener`] hands hyper a [`Stream`] (the accepted `TcpStream` and a
//! per-connection queue of file regions), and a file's body
//! ([`Conn::file_body`]) yields *marker* chunks: slices of one private,
//! never-written static buffer, as many bytes as the region holds. When
//! hyper writes a slice that lies inside that buffer, the stream sends the
//! same number of bytes of the file from the kernel's page cache instead
//! (`sendfile`), and reports them written; every other byte (status line,
//! headers, other bodies) is written as it is.
//!
//! Why this is safe to rely on:
//! - Markers are recognised by address, never by content: only this
//!   module's static buffer can lie at those addresses.
//! - hyper's HTTP/1 server queues body chunks without copying them when
//!   the stream accepts vectored writes (as this one does), and writes one
//!   response after the other, so marker bytes reach the stream in the
//!   order of the regions, each region exactly once.
//! - A region is queued when its body is first polled (hyper polls a body
//!   only to send it). A body dropped before its last chunk, a marker with
//!   no region, or a file that ends early are errors that close the
//!   connection: a client gets a short answer, never wrong bytes.
//! - HTTP/2 frames and interleaves streams, so [`Conn::file_body`] is for
//!   HTTP/1 requests only (`serve.rs` checks the request's version).

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::http::Version;
use axum::http::request::Parts;
use axum::serve::IncomingStream;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// The marker buffer: never written, so it stays zero pages nobody touches.
static MARKER: [u8; MARKER_LEN] = [0; MARKER_LEN];
const MARKER_LEN: usize = 1 << 20;

fn is_marker(buf: &[u8]) -> bool {
    let start = MARKER.as_ptr() as usize;
    let p = buf.as_ptr() as usize;
    !buf.is_empty() && p >= start && p + buf.len() <= start + MARKER_LEN
}

/// A TCP listener whose connections can send files with `sendfile`.
#[derive(Debug)]
pub struct Listener {
    inner: TcpListener,
}

impl Listener {
    pub fn new(inner: TcpListener) -> Listener {
        Listener { inner }
    }
}

impl axum::serve::Listener for Listener {
    type Io = Stream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Stream, SocketAddr) {
        loop {
            match self.inner.accept().await {
                Ok((tcp, addr)) => {
                    // Small answers go out at once instead of waiting on delayed ACKs (Nagle).
                    if let Err(e) = tcp.set_nodelay(true) {
                        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                    }
                    return (Stream { tcp, regions: Arc::default() }, addr);
                }
                // Out of file descriptors and the like: wait a little, as axum does.
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// A file region waiting to be sent.
#[derive(Debug)]
struct Region {
    file: Arc<std::fs::File>,
    offset: u64,
    left: u64,
}

#[derive(Debug, Default)]
struct Regions {
    queue: VecDeque<Region>,
    /// A body ended before all its markers were queued: the connection's
    /// framing can no longer be trusted.
    broken: bool,
}

type Shared = Arc<Mutex<Regions>>;

/// An accepted connection: the socket and its queue of file regions.
#[derive(Debug)]
pub struct Stream {
    tcp: TcpStream,
    regions: Shared,
}

/// A request's handle on its connection (axum's `ConnectInfo`).
#[derive(Debug, Clone)]
pub struct Conn {
    regions: Shared,
    peer: Option<SocketAddr>,
}

impl Connected<IncomingStream<'_, Listener>> for Conn {
    fn connect_info(stream: IncomingStream<'_, Listener>) -> Self {
        Conn { regions: stream.io().regions.clone(), peer: Some(*stream.remote_addr()) }
    }
}

impl Conn {
    /// The handle of an accepted connection from `peer`.
    pub fn of(stream: &Stream, peer: SocketAddr) -> Conn {
        Conn { regions: stream.regions.clone(), peer: Some(peer) }
    }

    /// The address of the connection's other end.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// A body of `len` bytes of `file` from `offset`, sent with `sendfile`.
    /// Only for HTTP/1 responses with a `Content-Length` of `len`.
    pub fn file_body(&self, file: std::fs::File, offset: u64, len: u64) -> Body {
        let body = FileBody { regions: self.regions.clone(), file: Some(Arc::new(file)), offset, left: len };
        Body::new(body)
    }
}

/// What a handler knows of its connection: it can take a file body when
/// the request came over HTTP/1 through [`Listener`] (not through
/// `oneshot` in tests, nor over HTTP/2).
#[derive(Debug, Clone, Default)]
pub struct Wire(Option<Conn>);

impl Wire {
    pub fn conn(&self) -> Option<&Conn> {
        self.0.as_ref()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Wire {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let http1 = matches!(parts.version, Version::HTTP_10 | Version::HTTP_11);
        let conn = parts.extensions.get::<ConnectInfo<Conn>>().filter(|_| http1).map(|c| c.0.clone());
        Ok(Wire(conn))
    }
}

/// Yields marker chunks; queues its region when first polled.
struct FileBody {
    regions: Shared,
    file: Option<Arc<std::fs::File>>,
    offset: u64,
    left: u64,
}

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, io::Error>>> {
        if let Some(file) = self.file.take() {
            let region = Region { file, offset: self.offset, left: self.left };
            self.regions.lock().expect("regions lock").queue.push_back(region);
        }
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(MARKER_LEN as u64) as usize;
        self.left -= n as u64;
        Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(&MARKER[..n])))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0 && self.file.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left)
    }
}

impl Drop for FileBody {
    fn drop(&mut self) {
        // Polled, but not to the end: markers are missing from the stream.
        if self.file.is_none() && self.left > 0 {
            self.regions.lock().expect("regions lock").broken = true;
        }
    }
}

fn framing_error(what: &str) -> io::Error {
    io::Error::other(format!("zero-copy response: {what}; closing the connection"))
}

impl Stream {
    /// Send up to `max` bytes of the front region with `sendfile`.
    fn poll_send_file(&self, cx: &mut Context<'_>, max: usize) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            let mut regions = self.regions.lock().expect("regions lock");
            if regions.broken {
                return Poll::Ready(Err(framing_error("a body ended early")));
            }
            let Some(region) = regions.queue.front_mut() else {
                return Poll::Ready(Err(framing_error("file bytes with no file")));
            };
            let count = (region.left.min(max as u64)) as usize;
            let file = region.file.clone();
            let mut offset = region.offset;
            let sent = self.tcp.try_io(Interest::WRITABLE, || {
                rustix::fs::sendfile(&self.tcp, &*file, Some(&mut offset), count).map_err(io::Error::from)
            });
            match sent {
                Ok(0) => return Poll::Ready(Err(framing_error("the file is shorter than its length"))),
                Ok(n) => {
                    region.offset += n as u64;
                    region.left -= n as u64;
                    if region.left == 0 {
                        regions.queue.pop_front();
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if is_marker(buf) {
            return self.poll_send_file(cx, buf.len());
        }
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // Plain bytes up to the first marker go out as they are; a run of
        // markers at the front is one sendfile.
        let plain = bufs.iter().take_while(|b| !is_marker(b)).count();
        if plain > 0 {
            return Pin::new(&mut self.tcp).poll_write_vectored(cx, &bufs[..plain]);
        }
        let run: usize = bufs.iter().take_while(|b| is_marker(b)).map(|b| b.len()).sum();
        if run == 0 {
            return Poll::Ready(Ok(0));
        }
        self.poll_send_file(cx, run)
    }

    fn is_write_vectored(&self) -> bool {
        // hyper then queues body chunks as they are, instead of copying them.
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use axum::extract::ConnectInfo;
    use axum::http::header;
    use axum::response::IntoResponse;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Serves `/<start>/<end>` of the file at `path` as a file body.
    async fn server(path: std::path::PathBuf) -> SocketAddr {
        let app = axum::Router::new().route(
            "/{start}/{end}",
            axum::routing::get(
                move |ConnectInfo(conn): ConnectInfo<Conn>,
                      axum::extract::Path((a, b)): axum::extract::Path<(u64, u64)>| {
                    let file = std::fs::File::open(&path).unwrap();
                    let body = conn.file_body(file, a, b - a);
                    async move { ([(header::CONTENT_LENGTH, (b - a).to_string())], body).into_response() }
                },
            ),
        );
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let service = app.into_make_service_with_connect_info::<Conn>();
        tokio::spawn(async move { axum::serve(Listener::new(tcp), service).await.unwrap() });
        addr
    }

    /// Read one response with a Content-Length from `r`; its body.
    async fn response(r: &mut tokio::io::BufReader<TcpStream>) -> Vec<u8> {
        use tokio::io::AsyncBufReadExt;
        let mut len = None;
        loop {
            let mut line = String::new();
            r.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = Some(v.trim().parse::<usize>().unwrap());
            }
        }
        let mut body = vec![0; len.expect("a content-length")];
        r.read_exact(&mut body).await.unwrap();
        body
    }

    #[tokio::test]
    async fn file_bodies_arrive_whole_and_in_order_on_one_connection() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..5 * MARKER_LEN + 12345).map(|i| (i * 7 % 251) as u8).collect();
        f.write_all(&data).unwrap();
        let addr = server(f.path().to_owned()).await;
        let mut conn = tokio::io::BufReader::new(TcpStream::connect(addr).await.unwrap());
        // Pipelined: three requests before reading any answer.
        let parts = [(0, data.len()), (100, 101), (MARKER_LEN - 3, 2 * MARKER_LEN + 7)];
        let mut requests = String::new();
        for (a, b) in parts {
            requests.push_str(&format!("GET /{a}/{b} HTTP/1.1\r\nHost: x\r\n\r\n"));
        }
        conn.get_mut().write_all(requests.as_bytes()).await.unwrap();
        for (a, b) in parts {
            let body = response(&mut conn).await;
            assert!(body == data[a..b], "bytes {a}..{b} differ");
        }
    }

    #[tokio::test]
    async fn a_file_shorter_than_its_length_closes_the_connection() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&[1; 1000]).unwrap();
        let addr = server(f.path().to_owned()).await;
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET /0/5000 HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut all = Vec::new();
        conn.read_to_end(&mut all).await.unwrap();
        let text = String::from_utf8_lossy(&all);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        let body = &all[all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..];
        assert_eq!(body, &[1; 1000][..], "the file's bytes and nothing else, then the connection closes");
    }

    #[test]
    fn markers_are_known_by_address_alone() {
        assert!(is_marker(&MARKER[..10]));
        assert!(is_marker(&MARKER[MARKER_LEN - 1..]));
        assert!(!is_marker(&MARKER[..0]));
        let zeros = vec![0u8; 64];
        assert!(!is_marker(&zeros), "equal bytes elsewhere are not markers");
    }
}
