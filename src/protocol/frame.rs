//! Length-prefixed framing of PostgreSQL messages over raw bytes.
//!
//! A regular message is `tag: u8, len: i32 (includes itself), body`. We never trust `len`:
//! it is checked against `4..=limit` *before* anything is reserved, so a hostile peer cannot
//! make us allocate more than the limit for that kind of message (pgdog validates the same way
//! before widening). Frames are read into a [`BytesMut`] and handed out as borrowed views, so
//! the relay can copy a run of frames to the other side without allocating per message.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::ProtocolError;

/// Size of the tag plus the length word.
pub const HEADER_LEN: usize = 5;

/// How large one message may be, per direction and phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    /// Largest body (excluding the 5 header bytes) for any message.
    pub max_message: usize,
}

/// A complete message sitting at the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub tag: u8,
    /// Length of the body, without the tag and the length word.
    pub body_len: usize,
}

impl FrameHeader {
    /// Total bytes on the wire.
    pub fn wire_len(&self) -> usize {
        HEADER_LEN + self.body_len
    }
}

/// Look at the front of `buf`: `Ok(None)` if a whole message is not there yet, the header if
/// it is. Fails when the declared length is impossible or larger than `limits` allows.
pub fn peek_frame(buf: &[u8], limits: FrameLimits) -> Result<Option<FrameHeader>, ProtocolError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let tag = header[0];
    let declared = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if declared < 4 {
        return Err(ProtocolError::BadLength {
            tag,
            len: declared as i64,
        });
    }
    // `declared >= 4` was checked above, so the widening cannot sign-extend.
    let body_len = declared as usize - 4;
    if body_len > limits.max_message {
        return Err(ProtocolError::TooLarge {
            tag,
            len: body_len,
            limit: limits.max_message,
        });
    }
    if buf.len() < HEADER_LEN + body_len {
        return Ok(None);
    }
    Ok(Some(FrameHeader { tag, body_len }))
}

/// Reads messages from one peer into a reusable buffer.
#[derive(Debug)]
pub struct FrameBuffer {
    buf: BytesMut,
    limits: FrameLimits,
}

/// Initial capacity: big enough for a typical batch of small messages.
const READ_CHUNK: usize = 16 * 1024;

impl FrameBuffer {
    pub fn new(limits: FrameLimits) -> Self {
        Self {
            buf: BytesMut::with_capacity(READ_CHUNK),
            limits,
        }
    }

    /// Carry over bytes already read by an earlier phase (e.g. the startup reader).
    pub fn with_leftover(limits: FrameLimits, leftover: BytesMut) -> Self {
        let mut me = Self::new(limits);
        me.buf.extend_from_slice(&leftover);
        me
    }

    pub fn set_limits(&mut self, limits: FrameLimits) {
        self.limits = limits;
    }

    pub fn limits(&self) -> FrameLimits {
        self.limits
    }

    /// The next complete frame at the front of the buffer, if any.
    pub fn peek(&self) -> Result<Option<FrameHeader>, ProtocolError> {
        peek_frame(&self.buf, self.limits)
    }

    /// All buffered bytes (complete and partial frames).
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Body of the frame at the front (`header` must come from [`Self::peek`]).
    pub fn body(&self, header: FrameHeader) -> &[u8] {
        self.buf
            .get(HEADER_LEN..header.wire_len())
            .unwrap_or_default()
    }

    /// Drop the first `n` bytes (frames already handled).
    pub fn consume(&mut self, n: usize) {
        self.buf.advance(n.min(self.buf.len()));
    }

    /// Take the first `n` bytes out as an owned buffer.
    pub fn split_to(&mut self, n: usize) -> BytesMut {
        self.buf.split_to(n.min(self.buf.len()))
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Everything left in the buffer, leaving it empty.
    pub fn take_all(&mut self) -> BytesMut {
        self.buf.split()
    }

    /// Read more bytes from `io`. Returns the number of bytes read; 0 means end of stream.
    ///
    /// The buffer only grows to hold the frame currently being assembled (whose length was
    /// already checked against the limit), so memory stays bounded by the limit.
    ///
    /// # Cancel safety
    /// Cancel-safe: `read_buf` either appends bytes or does nothing, and partial frames stay
    /// in the buffer for the next call.
    pub async fn fill<R: AsyncRead + Unpin>(&mut self, io: &mut R) -> std::io::Result<usize> {
        let wanted = match peek_frame(&self.buf, self.limits) {
            Ok(None) if self.buf.len() >= HEADER_LEN => {
                // A frame is partially here; make room for the rest of it in one go.
                let declared =
                    i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
                (declared as usize + 1).saturating_sub(self.buf.len())
            }
            _ => 0,
        };
        self.buf.reserve(wanted.max(READ_CHUNK / 2));
        io.read_buf(&mut self.buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: FrameLimits = FrameLimits { max_message: 1024 };

    #[test]
    fn incomplete_frames_wait_for_more_bytes() {
        assert_eq!(peek_frame(b"", LIMITS).unwrap(), None);
        assert_eq!(peek_frame(b"Q\0\0", LIMITS).unwrap(), None);
        assert_eq!(peek_frame(b"Q\0\0\0\x09abc", LIMITS).unwrap(), None);
    }

    #[test]
    fn complete_frame_is_reported() {
        let h = peek_frame(b"Q\0\0\0\x09abc\0rest", LIMITS)
            .unwrap()
            .unwrap();
        assert_eq!(
            h,
            FrameHeader {
                tag: b'Q',
                body_len: 5
            }
        );
        assert_eq!(h.wire_len(), 10);
    }

    #[test]
    fn impossible_lengths_are_refused_before_allocation() {
        for len in [0i32, 3, -1, i32::MIN] {
            let mut msg = vec![b'Q'];
            msg.extend_from_slice(&len.to_be_bytes());
            assert!(matches!(
                peek_frame(&msg, LIMITS),
                Err(ProtocolError::BadLength { .. })
            ));
        }
        let mut msg = vec![b'Q'];
        msg.extend_from_slice(&i32::MAX.to_be_bytes());
        assert!(matches!(
            peek_frame(&msg, LIMITS),
            Err(ProtocolError::TooLarge { .. })
        ));
    }
}
