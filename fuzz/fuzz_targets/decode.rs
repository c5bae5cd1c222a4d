//! Feeds arbitrary bytes to the datagram decoder and, when a frame decodes,
//! checks that encoding it again gives a frame that decodes to the same thing.

#![no_main]

use libfuzzer_sys::fuzz_target;
use udprelay::wire::{self, Frame, StatEntries};

fuzz_target!(|data: &[u8]| {
    let Ok(frames) = wire::decode_datagram(data) else {
        return;
    };
    for frame in frames {
        let Ok(frame) = frame else { break };
        if let Frame::Stats { entries, .. } = frame {
            let _ = entries.iter().count();
        }
        let mut out = Vec::new();
        frame.encode(&mut out).expect("a decoded frame encodes");
        let (again, rest) = Frame::decode(&out).expect("an encoded frame decodes");
        assert!(rest.is_empty());
        match (frame, again) {
            (
                Frame::Stats {
                    cursor: c1,
                    next: n1,
                    entries: StatEntries::Encoded(a),
                },
                Frame::Stats {
                    cursor: c2,
                    next: n2,
                    entries: StatEntries::Encoded(b),
                },
            ) => {
                assert_eq!((c1, n1, a), (c2, n2, b))
            }
            (a, b) => assert_eq!(a, b),
        }
    }
});
