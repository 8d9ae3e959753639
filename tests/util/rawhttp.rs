//! A raw HTTP/1.1 client for the proxy's client side: bytes written by hand, responses
//! parsed by hand (Content-Length, chunked, or to the end of the connection), for what
//! curl never sends on purpose (smuggling attempts, slow heads, pipelining).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long a client waits for any one answer.
pub const IO: Duration = Duration::from_secs(15);

/// A response as read.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    /// (lower-case name, value).
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A raw TCP connection to the proxy: bytes written by hand, responses parsed by hand.
pub struct Raw {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Raw {
    pub fn connect(proxy: &str) -> Raw {
        let s = TcpStream::connect(proxy).expect("connect to the proxy");
        s.set_read_timeout(Some(IO)).unwrap();
        let w = s.try_clone().unwrap();
        Raw {
            r: BufReader::new(s),
            w,
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.w.local_addr().unwrap()
    }

    pub fn send(&mut self, bytes: &str) {
        self.w
            .write_all(bytes.as_bytes())
            .expect("write to the proxy");
    }

    /// Read one response; `head_only` for a CONNECT's 2xx (no body follows).
    pub fn response(&mut self, head_only: bool) -> Resp {
        let mut line = String::new();
        let n = self.r.read_line(&mut line).expect("read the status line");
        assert!(n > 0, "the proxy closed the connection without an answer");
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not a status line: {line:?}"));
        let mut headers = Vec::new();
        loop {
            let mut l = String::new();
            self.r.read_line(&mut l).expect("read a header line");
            let l = l.trim_end();
            if l.is_empty() {
                break;
            }
            let (n, v) = l.split_once(':').expect("header line");
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        let mut resp = Resp {
            status,
            headers,
            body: String::new(),
        };
        if head_only || status == 204 || status == 304 {
            return resp;
        }
        let mut body = Vec::new();
        if let Some(len) = resp.header("content-length") {
            let len: usize = len.parse().expect("content-length");
            body.resize(len, 0);
            self.r.read_exact(&mut body).expect("read the body");
        } else if resp
            .header("transfer-encoding")
            .is_some_and(|v| v.contains("chunked"))
        {
            loop {
                let mut size = String::new();
                self.r.read_line(&mut size).expect("chunk size");
                let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
                let mut chunk = vec![0u8; n + 2];
                self.r.read_exact(&mut chunk).expect("chunk");
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else {
            let _ = self.r.read_to_end(&mut body);
        }
        resp.body = String::from_utf8_lossy(&body).into_owned();
        resp
    }

    /// Whether the proxy closed the connection (EOF within `wait`).
    pub fn closed_within(&mut self, wait: Duration) -> bool {
        self.r.get_ref().set_read_timeout(Some(wait)).unwrap();
        let mut b = [0u8; 1];
        let closed = matches!(self.r.read(&mut b), Ok(0));
        self.r.get_ref().set_read_timeout(Some(IO)).unwrap();
        closed
    }
}
