use hygie_hl7v2::mllp::{CARRIAGE_RETURN, END_BLOCK, MllpDecoder, START_BLOCK, frame};
use proptest::prelude::*;

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        any::<u8>().prop_filter("no block bytes", |b| *b != START_BLOCK && *b != END_BLOCK),
        0..64,
    )
}

proptest! {
    /// Any sequence of frames, cut anywhere, decodes to the same payloads.
    #[test]
    fn split_frames_decode_to_the_same_payloads(
        payloads in prop::collection::vec(payload(), 0..8),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
    ) {
        let stream: Vec<u8> = payloads.iter().flat_map(|p| frame(p)).collect();
        let mut cut_points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        cut_points.sort_unstable();
        let mut decoder = MllpDecoder::new(64);
        let mut decoded = Vec::new();
        let mut start = 0;
        for end in cut_points.into_iter().chain([stream.len()]) {
            decoder.push(&stream[start..end]);
            start = end;
            while let Some(frame) = decoder.next_frame().expect("valid stream") {
                decoded.push(frame);
            }
        }
        prop_assert_eq!(decoded, payloads);
        prop_assert_eq!(decoder.buffered_bytes(), 0);
    }

    /// Arbitrary bytes never panic and never make the decoder hold more than its limit.
    #[test]
    fn arbitrary_bytes_stay_bounded(chunks in prop::collection::vec(prop::collection::vec(
        prop::sample::select(vec![START_BLOCK, END_BLOCK, CARRIAGE_RETURN, b'a']), 0..40), 0..10)) {
        let mut decoder = MllpDecoder::new(16);
        for chunk in chunks {
            decoder.push(&chunk);
            prop_assert!(decoder.buffered_bytes() <= 16);
            while let Ok(Some(frame)) = decoder.next_frame() {
                prop_assert!(frame.len() <= 16);
            }
        }
    }
}
