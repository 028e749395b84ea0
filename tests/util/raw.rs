//! The wire protocol spoken by hand: frames built byte by byte, and a raw peer that completes
//! the handshake itself and then sends whatever a test wants, as a broken or hostile peer
//! would.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

pub fn frame(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![ty, 0, 0, 0];
    v.extend_from_slice(&(body.len() as u32).to_le_bytes());
    v.extend_from_slice(body);
    v
}

pub fn data_body(seq: u64, len: u64, ranges: &[(u64, u64)], count: u32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&seq.to_le_bytes());
    b.extend_from_slice(&len.to_le_bytes());
    b.extend_from_slice(&count.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    for (a, l) in ranges {
        b.extend_from_slice(&a.to_le_bytes());
        b.extend_from_slice(&l.to_le_bytes());
    }
    b
}

pub const T_HELLO: u8 = 1;
pub const T_READY: u8 = 2;
pub const T_DATA: u8 = 3;
pub const T_BATCH: u8 = 4;
pub const T_INLINE: u8 = 5;
pub const T_ACK: u8 = 6;
pub const T_ERROR: u8 = 8;
pub const T_SYNC: u8 = 13;

/// A peer that speaks the wire protocol by hand. It lives in the test process, as does the
/// listener, so the listener's cookie pull reads this process's memory.
pub struct RawPeer {
    pub sock: UnixStream,
    _cookie: Box<[u8; 16]>,
}

pub fn hello_body(cookie: &[u8; 16]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"TOKIOPVM");
    b.extend_from_slice(&5u16.to_le_bytes()); // protocol version
    b.extend_from_slice(&0u16.to_le_bytes());
    b.extend_from_slice(&1024u32.to_le_bytes()); // window messages
    b.extend_from_slice(&(cookie.as_ptr() as u64).to_le_bytes());
    b.extend_from_slice(cookie);
    b.extend_from_slice(&(64u64 << 20).to_le_bytes()); // max message
    b.extend_from_slice(&(64u64 << 20).to_le_bytes()); // window bytes
    b.extend_from_slice(&(64u32 << 10).to_le_bytes()); // max inline
    b.extend_from_slice(&1024u32.to_le_bytes()); // max ranges
    b.extend_from_slice(&0u64.to_le_bytes()); // no loan region
    assert_eq!(b.len(), 72);
    b
}

impl RawPeer {
    pub fn connect(path: &std::path::Path) -> RawPeer {
        let sock = UnixStream::connect(path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        RawPeer {
            sock,
            _cookie: Box::new(*b"0123456789abcdef"),
        }
    }

    /// A raw peer on a socket that has completed its handshake elsewhere.
    pub fn from_stream(sock: UnixStream) -> RawPeer {
        RawPeer {
            sock,
            _cookie: Box::new([0; 16]),
        }
    }

    /// Connects and completes the handshake (the listener must be accepting concurrently).
    pub fn handshake(path: &std::path::Path) -> RawPeer {
        let mut p = RawPeer::connect(path);
        let hello = hello_body(&p._cookie);
        p.send(T_HELLO, &hello);
        let (ty, _) = p.recv().expect("the listener's HELLO");
        assert_eq!(ty, T_HELLO);
        p.send(T_READY, &[0u8; 8]); // flags 0: we pull
        let (ty, _) = p.recv().expect("the listener's READY");
        assert_eq!(ty, T_READY);
        p
    }

    pub fn send(&mut self, ty: u8, body: &[u8]) {
        let _ = self.sock.write_all(&frame(ty, body));
    }

    /// The frames that arrive within `wait` (read until the socket stays quiet that long).
    pub fn frames_within(&mut self, wait: Duration) -> Vec<(u8, Vec<u8>)> {
        self.sock.set_read_timeout(Some(wait)).unwrap();
        let mut frames = Vec::new();
        while let Some(frame) = self.recv() {
            frames.push(frame);
        }
        self.sock
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        frames
    }

    pub fn recv(&mut self) -> Option<(u8, Vec<u8>)> {
        let mut h = [0u8; 8];
        self.sock.read_exact(&mut h).ok()?;
        let len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
        let mut body = vec![0; len];
        self.sock.read_exact(&mut body).ok()?;
        Some((h[0], body))
    }

    /// Reads until an ERROR frame (returns its reason) or the end of the stream.
    pub fn error_reason(&mut self) -> Option<String> {
        while let Some((ty, body)) = self.recv() {
            if ty == T_ERROR {
                return Some(String::from_utf8_lossy(&body[8..]).into_owned());
            }
        }
        None
    }
}

/// The body of a BATCH frame carrying `msgs` from sequence number `seq` on.
pub fn batch_body(seq: u64, msgs: &[&[u8]]) -> Vec<u8> {
    let mut body = seq.to_le_bytes().to_vec();
    for m in msgs {
        body.extend_from_slice(&(m.len() as u32).to_le_bytes());
        body.extend_from_slice(m);
    }
    body
}
