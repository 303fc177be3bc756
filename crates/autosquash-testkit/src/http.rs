//! The HTTP/1.1 framing the test kit's stand-in servers share: requests read one after another
//! on a kept-alive connection, each answered by the server's own function.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads requests from `conn` until it closes; `answer` gets each request's head (its body,
/// if any, is read and skipped) and returns the response's bytes, or `None` to close the
/// connection without one.
pub(crate) async fn serve(mut conn: TcpStream, mut answer: impl FnMut(&str) -> Option<Vec<u8>>) {
    let _ = conn.set_nodelay(true);
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            if !read_more(&mut conn, &mut buf).await {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let body_len = header(&head, "Content-Length")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        while buf.len() < body_len {
            if !read_more(&mut conn, &mut buf).await {
                return;
            }
        }
        buf.drain(..body_len);
        let Some(response) = answer(&head) else {
            return;
        };
        if conn.write_all(&response).await.is_err() {
            return;
        }
    }
}

/// Appends what the peer sent next; false once it closed or failed.
async fn read_more(conn: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut more = [0u8; 4096];
    match conn.read(&mut more).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&more[..n]);
            true
        }
    }
}

/// The value of header `name` in a request head.
pub(crate) fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}
