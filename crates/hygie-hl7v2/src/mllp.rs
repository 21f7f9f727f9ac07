//! MLLP (Minimal Lower Layer Protocol) framing: `0x0B payload 0x1C 0x0D`.
//!
//! [`MllpDecoder`] is a push parser: feed it whatever a socket read returned, then take
//! frames until it has none. It never holds more than `max_frame_bytes` of a frame, and any
//! framing error is final: the listener should close the connection, since it can no longer
//! tell where the next message starts.

use std::collections::VecDeque;

pub const START_BLOCK: u8 = 0x0B;
pub const END_BLOCK: u8 = 0x1C;
pub const CARRIAGE_RETURN: u8 = 0x0D;
/// The most of a too-large frame kept to answer it (its MSH).
pub const REFUSED_HEAD_BYTES: usize = 4096;

/// Wraps an encoded message in an MLLP frame.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 3);
    out.push(START_BLOCK);
    out.extend_from_slice(payload);
    out.push(END_BLOCK);
    out.push(CARRIAGE_RETURN);
    out
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("{bytes} bytes outside of a frame, where a start block (0x0B) was expected")]
    Garbage { bytes: usize },
    #[error("a frame is over the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("an end block (0x1C) not followed by a carriage return (0x0D)")]
    MissingCarriageReturn,
    #[error("a start block (0x0B) inside a frame: the previous frame was never ended")]
    StartInsideFrame,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between frames: only a start block is allowed.
    Idle,
    /// After a start block, collecting the payload.
    InFrame,
    /// After an end block: a carriage return must follow.
    AfterEnd,
    Failed,
}

/// Splits a byte stream into MLLP frame payloads.
#[derive(Debug)]
pub struct MllpDecoder {
    max_frame_bytes: usize,
    state: State,
    current: Vec<u8>,
    ready: VecDeque<Vec<u8>>,
    error: Option<FrameError>,
    /// The first segment of a frame refused as too large, to answer it with a NAK.
    refused_head: Vec<u8>,
}

impl MllpDecoder {
    /// `max_frame_bytes` bounds a payload (not counting the three framing bytes).
    pub fn new(max_frame_bytes: usize) -> MllpDecoder {
        MllpDecoder {
            max_frame_bytes,
            state: State::Idle,
            current: Vec::new(),
            ready: VecDeque::new(),
            error: None,
            refused_head: Vec::new(),
        }
    }

    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }

    /// Feeds bytes from the stream. Frames completed are queued for [`Self::next_frame`];
    /// after an error, further bytes are ignored.
    pub fn push(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match self.state {
                State::Failed => return,
                State::Idle => {
                    if bytes[0] == START_BLOCK {
                        self.state = State::InFrame;
                        bytes = &bytes[1..];
                    } else {
                        let garbage = bytes
                            .iter()
                            .position(|b| *b == START_BLOCK)
                            .unwrap_or(bytes.len());
                        self.fail(FrameError::Garbage { bytes: garbage });
                    }
                }
                State::InFrame => {
                    let end = bytes
                        .iter()
                        .position(|b| *b == END_BLOCK || *b == START_BLOCK);
                    let payload_len = end.unwrap_or(bytes.len());
                    if self.current.len() + payload_len > self.max_frame_bytes {
                        // What fits is kept, for the head of the refused frame.
                        let room = self
                            .max_frame_bytes
                            .saturating_sub(self.current.len())
                            .min(REFUSED_HEAD_BYTES.saturating_sub(self.current.len()));
                        self.current
                            .extend_from_slice(&bytes[..room.min(payload_len)]);
                        self.fail(FrameError::TooLarge {
                            limit: self.max_frame_bytes,
                        });
                        return;
                    }
                    self.current.extend_from_slice(&bytes[..payload_len]);
                    bytes = &bytes[payload_len..];
                    if end.is_some() {
                        // `bytes` now starts at the block byte that stopped the payload.
                        if bytes[0] == END_BLOCK {
                            self.state = State::AfterEnd;
                            bytes = &bytes[1..];
                        } else {
                            self.fail(FrameError::StartInsideFrame);
                        }
                    }
                }
                State::AfterEnd => {
                    if bytes[0] == CARRIAGE_RETURN {
                        self.ready.push_back(std::mem::take(&mut self.current));
                        self.state = State::Idle;
                        bytes = &bytes[1..];
                    } else {
                        self.fail(FrameError::MissingCarriageReturn);
                    }
                }
            }
        }
    }

    /// The next complete payload, `None` when more bytes are needed, or the framing error
    /// once the frames completed before it have been taken (and on every call after).
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        if let Some(frame) = self.ready.pop_front() {
            return Ok(Some(frame));
        }
        match &self.error {
            Some(error) => Err(error.clone()),
            None => Ok(None),
        }
    }

    /// Bytes of an unfinished frame held so far.
    pub fn buffered_bytes(&self) -> usize {
        self.current.len()
    }

    /// After [`FrameError::TooLarge`]: the start of the refused frame, up to the end of its
    /// first segment (at most [`REFUSED_HEAD_BYTES`]), so that the listener can answer a
    /// NAK naming the message; empty otherwise.
    pub fn refused_frame_head(&self) -> &[u8] {
        &self.refused_head
    }

    fn fail(&mut self, error: FrameError) {
        self.state = State::Failed;
        if matches!(error, FrameError::TooLarge { .. }) {
            let end = self
                .current
                .iter()
                .position(|b| *b == b'\r' || *b == b'\n')
                .unwrap_or(self.current.len())
                .min(REFUSED_HEAD_BYTES);
            self.refused_head = self.current[..end].to_vec();
        }
        self.current = Vec::new();
        self.error = Some(error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(decoder: &mut MllpDecoder) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut frames = Vec::new();
        while let Some(frame) = decoder.next_frame()? {
            frames.push(frame);
        }
        Ok(frames)
    }

    #[test]
    fn a_frame_too_large_keeps_its_header_for_the_nak() {
        let mut decoder = MllpDecoder::new(40);
        decoder.push(b"\x0bMSH|^~\\&|A|B|C|D||x|ADT^A01|42|P|2.5\rPID|1|");
        decoder.push(&[b'x'; 100]);
        assert_eq!(
            decoder.next_frame(),
            Err(FrameError::TooLarge { limit: 40 })
        );
        // The payload was cut at 40 bytes: what was held then, up to its first segment end.
        assert!(decoder.refused_frame_head().starts_with(b"MSH|^~\\&|A|B"));
        assert!(!decoder.refused_frame_head().contains(&b'\r'));
    }

    #[test]
    fn one_frame_round_trips() {
        let mut decoder = MllpDecoder::new(100);
        decoder.push(&frame(b"MSH|^~\\&|A"));
        assert_eq!(decode_all(&mut decoder), Ok(vec![b"MSH|^~\\&|A".to_vec()]));
        assert_eq!(decoder.next_frame(), Ok(None));
    }

    #[test]
    fn frame_split_across_reads_waits_for_the_end() {
        let framed = frame(b"hello");
        let mut decoder = MllpDecoder::new(100);
        for byte in &framed[..framed.len() - 1] {
            decoder.push(std::slice::from_ref(byte));
            assert_eq!(decoder.next_frame(), Ok(None));
        }
        decoder.push(&framed[framed.len() - 1..]);
        assert_eq!(decoder.next_frame(), Ok(Some(b"hello".to_vec())));
    }

    #[test]
    fn several_frames_in_one_read() {
        let mut bytes = frame(b"one");
        bytes.extend(frame(b""));
        bytes.extend(frame(b"three"));
        let mut decoder = MllpDecoder::new(100);
        decoder.push(&bytes);
        assert_eq!(
            decode_all(&mut decoder),
            Ok(vec![b"one".to_vec(), Vec::new(), b"three".to_vec()])
        );
    }

    #[test]
    fn garbage_before_a_start_block_is_counted() {
        let mut bytes = b"GET / HTTP/1.1".to_vec();
        bytes.extend(frame(b"x"));
        let mut decoder = MllpDecoder::new(100);
        decoder.push(&bytes);
        assert_eq!(decoder.next_frame(), Err(FrameError::Garbage { bytes: 14 }));
    }

    #[test]
    fn frames_before_an_error_are_delivered_first() {
        let mut bytes = frame(b"good");
        bytes.extend(b"\r\n");
        let mut decoder = MllpDecoder::new(100);
        decoder.push(&bytes);
        assert_eq!(decoder.next_frame(), Ok(Some(b"good".to_vec())));
        assert_eq!(decoder.next_frame(), Err(FrameError::Garbage { bytes: 2 }));
        decoder.push(&frame(b"ignored"));
        assert_eq!(decoder.next_frame(), Err(FrameError::Garbage { bytes: 2 }));
    }

    #[test]
    fn oversize_frame_is_refused_without_buffering_it() {
        let mut decoder = MllpDecoder::new(10);
        decoder.push(&[START_BLOCK]);
        decoder.push(&[b'a'; 10]);
        assert_eq!(decoder.next_frame(), Ok(None));
        assert_eq!(decoder.buffered_bytes(), 10);
        decoder.push(b"b");
        assert_eq!(
            decoder.next_frame(),
            Err(FrameError::TooLarge { limit: 10 })
        );
        assert_eq!(decoder.buffered_bytes(), 0);
    }

    #[test]
    fn frame_exactly_at_the_limit_is_accepted() {
        let mut decoder = MllpDecoder::new(3);
        decoder.push(&frame(b"abc"));
        assert_eq!(decoder.next_frame(), Ok(Some(b"abc".to_vec())));
    }

    #[test]
    fn end_block_without_carriage_return_is_an_error() {
        let mut decoder = MllpDecoder::new(100);
        decoder.push(&[START_BLOCK, b'a', END_BLOCK, b'\n']);
        assert_eq!(decoder.next_frame(), Err(FrameError::MissingCarriageReturn));
    }

    #[test]
    fn start_block_inside_a_frame_is_an_error() {
        let mut decoder = MllpDecoder::new(100);
        decoder.push(&[
            START_BLOCK,
            b'a',
            START_BLOCK,
            b'b',
            END_BLOCK,
            CARRIAGE_RETURN,
        ]);
        assert_eq!(decoder.next_frame(), Err(FrameError::StartInsideFrame));
    }
}
