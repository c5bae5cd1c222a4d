use super::*;
use crate::rng::Rng;

fn sample_frames() -> Vec<Frame<'static>> {
    static RANGES: [u8; 32] = [
        5, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 12, 0, 0, 0, 0, 0,
        0, 0,
    ];
    // Two entries: relay 0xa at 7, session 0x7 at 3.
    static RESUME: [u8; 34] = [
        0, 0xa, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, //
        1, 0x7, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0,
    ];
    static STATS: [(&str, u64); 2] = [("datagrams_received", 12), ("dropped_malformed", 3)];
    vec![
        Frame::Publish {
            channel: "news",
            payload: b"hello",
        },
        Frame::Publish {
            channel: "empty",
            payload: b"",
        },
        Frame::Subscribe {
            sub_id: 7,
            mode: DeliveryMode::Unreliable,
            start: StartPosition::Latest,
            channel: "news",
            group: None,
            origins: false,
            resume: crate::wire::ResumeVector::EMPTY,
        },
        Frame::Subscribe {
            sub_id: u32::MAX,
            mode: DeliveryMode::Reliable,
            start: StartPosition::Offset(1 << 40),
            channel: "sensors/temp",
            group: None,
            origins: false,
            resume: crate::wire::ResumeVector::EMPTY,
        },
        Frame::Subscribe {
            sub_id: 1,
            mode: DeliveryMode::Unreliable,
            start: StartPosition::Earliest,
            channel: "ünïcödé",
            group: None,
            origins: false,
            resume: crate::wire::ResumeVector::EMPTY,
        },
        Frame::Subscribe {
            sub_id: 2,
            mode: DeliveryMode::Unreliable,
            start: StartPosition::Latest,
            channel: "jobs",
            group: Some("workers"),
            origins: false,
            resume: crate::wire::ResumeVector::EMPTY,
        },
        Frame::Unsubscribe { sub_id: 9 },
        Frame::Subscribed {
            sub_id: 9,
            first_offset: 3,
            next_offset: 10,
            lease_ms: 30_000,
        },
        Frame::Matched {
            sub_id: 9,
            channel_sub_id: RELAY_SUB_IDS + 3,
            first_offset: 0,
            next_offset: 12,
            channel: "sensors.eu.7",
        },
        Frame::Deliver {
            sub_id: 9,
            offset: 42,
            timestamp: 1_700_000_000_000_000_000,
            payload: b"payload bytes",
            origin: None,
        },
        Frame::Deliver {
            sub_id: 9,
            offset: 43,
            timestamp: 1_700_000_000_000_000_001,
            payload: b"from elsewhere",
            origin: Some(Origin {
                source: Source::Session(0xfeed),
                position: 12,
            }),
        },
        Frame::Subscribe {
            sub_id: 3,
            mode: DeliveryMode::Reliable,
            start: StartPosition::Resume {
                since: 1_700_000_000,
            },
            channel: "news",
            group: None,
            origins: true,
            resume: ResumeVector::new(&RESUME).unwrap(),
        },
        Frame::DeliverFragment {
            sub_id: 9,
            offset: 44,
            timestamp: 5,
            origin: Some(Origin {
                source: Source::Relay(0xa),
                position: 99,
            }),
            total: 10,
            at: 4,
            chunk: b"piece",
        },
        Frame::Ack {
            kind: AckKind::Subscription,
            id: 9,
            cumulative: 4,
            window: 100,
            ranges: &RANGES,
        },
        Frame::Ack {
            kind: AckKind::Pieces,
            id: 9,
            cumulative: 5,
            window: 0,
            ranges: &RANGES,
        },
        Frame::Ack {
            kind: AckKind::Publish,
            id: u64::MAX,
            cumulative: 0,
            window: 0,
            ranges: &[],
        },
        Frame::ReliablePublish {
            session: 0xDEAD_BEEF,
            seq: 17,
            acked_below: 12,
            channel: "orders",
            payload: b"reliable",
            more: true,
        },
        Frame::Fragment {
            msg_id: 3,
            index: 1,
            count: 4,
            channel: "big",
            chunk: b"piece",
        },
        Frame::DeliverFragment {
            sub_id: 2,
            offset: 9,
            timestamp: 5,
            total: 100,
            at: 95,
            chunk: b"tail!",
            origin: None,
        },
        Frame::Ping {
            nonce: 1,
            load: false,
        },
        Frame::Pong {
            nonce: u64::MAX,
            load: None,
        },
        Frame::Ping {
            nonce: 3,
            load: true,
        },
        Frame::Pong {
            nonce: 3,
            load: Some(417),
        },
        Frame::Error {
            code: ErrorCode::BAD_CHANNEL,
            reason: "channel name has a control character",
        },
        Frame::StatsRequest {
            cursor: 0,
            padding: 4,
        },
        Frame::StatsRequest {
            cursor: 7,
            padding: 1380,
        },
        Frame::Stats {
            cursor: 3,
            next: Some(5),
            entries: StatEntries::List(&STATS),
        },
        Frame::Stats {
            cursor: 5,
            next: None,
            entries: StatEntries::List(&[]),
        },
    ]
}

/// Frames compare equal after a round trip, except stats, which decode into
/// their encoded form: compare those by their entries.
fn assert_same(a: &Frame<'_>, b: &Frame<'_>) {
    match (a, b) {
        (
            Frame::Stats {
                cursor: c1,
                next: n1,
                entries: x,
            },
            Frame::Stats {
                cursor: c2,
                next: n2,
                entries: y,
            },
        ) => {
            assert_eq!((c1, n1), (c2, n2));
            assert_eq!(x.iter().collect::<Vec<_>>(), y.iter().collect::<Vec<_>>())
        }
        _ => assert_eq!(a, b),
    }
}

#[test]
fn every_frame_round_trips_alone_and_batched() {
    let frames = sample_frames();
    for f in &frames {
        let dgram = encode_datagram(std::slice::from_ref(f)).unwrap();
        assert_eq!(dgram.len(), HEADER_LEN + f.encoded_len());
        let decoded: Vec<_> = decode_datagram(&dgram).unwrap().collect();
        assert_eq!(decoded.len(), 1);
        assert_same(decoded[0].as_ref().unwrap(), f);
    }
    let dgram = encode_datagram(&frames).unwrap();
    let decoded: Vec<_> = decode_datagram(&dgram)
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(decoded.len(), frames.len());
    for (d, f) in decoded.iter().zip(&frames) {
        assert_same(d, f);
    }
}

#[test]
fn header_layout_is_magic_version_flags_key() {
    let dgram = encode_datagram(&[Frame::Ping {
        nonce: 0x0102,
        load: false,
    }])
    .unwrap();
    assert_eq!(&dgram[..8], &[b'U', b'R', 1, 0, 0, 0, 0, 0]);
    // Frame header: type 0x07, flags 0, body length 8 (little-endian).
    assert_eq!(&dgram[8..12], &[0x07, 0, 8, 0]);
    assert_eq!(&dgram[12..], &[2, 1, 0, 0, 0, 0, 0, 0]);
}

#[test]
fn header_errors_are_typed() {
    assert_eq!(decode_datagram(b"").unwrap_err(), WireError::BadMagic);
    assert_eq!(
        decode_datagram(b"XX\x01\x00").unwrap_err(),
        WireError::BadMagic
    );
    assert_eq!(
        decode_datagram(b"UR\x01").unwrap_err(),
        WireError::ShortHeader
    );
    assert_eq!(
        decode_datagram(b"UR\x02\x00\0\0\0\0").unwrap_err(),
        WireError::UnsupportedVersion(2)
    );
    assert_eq!(
        decode_datagram(b"UR\x01\x01\0\0\0\0").unwrap_err(),
        WireError::UnsupportedFlags(1)
    );
    assert_eq!(
        decode_datagram(b"UR\x01\x00\x01\0\0\0").unwrap_err(),
        WireError::UnsupportedFlags(0)
    );
    // A header alone is a valid, empty datagram.
    assert_eq!(decode_datagram(b"UR\x01\x00\0\0\0\0").unwrap().count(), 0);
}

#[test]
fn frame_errors_are_typed() {
    fn decode(body: &[u8]) -> Result<Frame<'_>, WireError> {
        Frame::decode(body).map(|(f, _)| f)
    }
    assert_eq!(decode(&[0x07, 0, 8]), Err(WireError::Truncated));
    assert_eq!(decode(&[0x07, 0, 8, 0, 1]), Err(WireError::Truncated));
    assert_eq!(decode(&[0x7F, 0, 0, 0]), Err(WireError::UnknownFrame(0x7F)));
    assert_eq!(
        decode(&[0x0A, 2, 0, 0]),
        Err(WireError::BadFrameFlags(0x0A, 2))
    );
    assert_eq!(
        decode(&[0x07, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        Err(WireError::BadLength)
    );
    // Publish with an empty channel name, then one with a control character.
    assert_eq!(decode(&[0x01, 0, 1, 0, 0]), Err(WireError::BadChannel));
    assert_eq!(
        decode(&[0x01, 0, 2, 0, 1, b'\n']),
        Err(WireError::BadChannel)
    );
    // Channel length byte pointing past the body.
    assert_eq!(decode(&[0x01, 0, 2, 0, 5, b'a']), Err(WireError::BadLength));
    // A delivery flagged with an origin too short for one, or of an
    // unknown kind; SUBSCRIBE's resume vector likewise.
    let frame = |kind: u8, body: &[u8]| {
        let mut f = vec![kind, FLAG_ORIGIN];
        f.extend_from_slice(&(body.len() as u16).to_le_bytes());
        f.extend_from_slice(body);
        f
    };
    let short = frame(0x05, &[0; 20 + 16]);
    assert_eq!(decode(&short), Err(WireError::BadLength));
    let mut body = vec![0; 20];
    body.extend_from_slice(&[2; 17]);
    let unknown_kind = frame(0x05, &body);
    assert_eq!(
        decode(&unknown_kind),
        Err(WireError::InvalidField("origin"))
    );
    let resume = |count: usize, entries: &[u8]| {
        let mut body = vec![9, 0, 0, 0, 1, 3, 0, 0, 0, 0, 0, 0, 0, 0, 1, b'n'];
        body.push(count as u8);
        body.extend_from_slice(entries);
        frame(0x02, &body)
    };
    let entry = [0u8; 17];
    assert!(decode(&resume(1, &entry)).is_ok());
    assert_eq!(decode(&resume(2, &entry)), Err(WireError::BadLength));
    assert_eq!(decode(&resume(0, &entry)), Err(WireError::BadLength));
    let mut unknown = entry;
    unknown[0] = 9;
    assert_eq!(
        decode(&resume(1, &unknown)),
        Err(WireError::InvalidField("resume vector"))
    );
    let n = MAX_RESUME_SOURCES + 1;
    assert_eq!(
        decode(&resume(n, &vec![0; 17 * n])),
        Err(WireError::InvalidField("resume vector"))
    );
    // Ack ranges that are not whole pairs.
    let mut ack = vec![0x06, 0, 22, 0, 0];
    ack.extend_from_slice(&[0; 21]);
    assert_eq!(decode(&ack), Err(WireError::BadLength));
}

#[test]
fn channel_names_follow_the_rules() {
    assert!(validate_channel(b"news").is_ok());
    assert!(validate_channel("日本語".as_bytes()).is_ok());
    assert!(validate_channel(&[b'a'; 255]).is_ok());
    assert_eq!(validate_channel(&[b'a'; 256]), Err(WireError::BadChannel));
    assert_eq!(validate_channel(b""), Err(WireError::BadChannel));
    assert_eq!(validate_channel(b"a\x00b"), Err(WireError::BadChannel));
    assert_eq!(validate_channel(b"\xff\xfe"), Err(WireError::BadChannel));
    assert_eq!(
        validate_channel(b"a\x7fb"),
        Err(WireError::BadChannel),
        "DEL"
    );
    assert_eq!(
        validate_channel("日\u{85}本".as_bytes()),
        Err(WireError::BadChannel),
        "a C1 control character in a name that is not ASCII"
    );
    // The check of a name already UTF-8 agrees on every byte value, in a
    // name of printable ASCII and in one that is not ASCII.
    for b in 0..=0x7fu8 {
        let ascii = format!("a{}b", b as char);
        let wide = format!("日{}本", b as char);
        for name in [ascii, wide] {
            assert_eq!(
                check_channel_str(&name).is_ok(),
                validate_channel(name.as_bytes()).is_ok(),
                "{name:?}"
            );
            assert_eq!(
                check_channel_str(&name).is_ok(),
                !(b as char).is_control(),
                "{name:?}"
            );
        }
    }
    assert_eq!(check_channel_str(""), Err(WireError::BadChannel));
    assert_eq!(
        check_channel_str(&"a".repeat(256)),
        Err(WireError::BadChannel)
    );
}

#[test]
fn encoder_refuses_what_it_cannot_express() {
    let mut out = Vec::new();
    let big = vec![0u8; MAX_FRAME_BODY];
    let f = Frame::Publish {
        channel: "c",
        payload: &big,
    };
    assert_eq!(f.encode(&mut out), Err(WireError::TooLarge));
    let f = Frame::Publish {
        channel: "bad\u{7}",
        payload: b"",
    };
    assert_eq!(f.encode(&mut out), Err(WireError::BadChannel));
    assert!(out.is_empty(), "a failed encode writes nothing");
}

#[test]
fn builder_packs_frames_up_to_its_limit() {
    let mut b = DatagramBuilder::new(100);
    let f = Frame::Publish {
        channel: "c",
        payload: &[0xAB; 20],
    };
    let mut n = 0;
    while b.push(&f).is_ok() {
        n += 1;
    }
    // Each frame is 4 + 1 + 1 + 20 = 26 bytes; 8 + 3 * 26 = 86 <= 100 < 112.
    assert_eq!(n, 3);
    let dgram = b.finish();
    assert_eq!(dgram.len(), 86);
    assert!(b.is_empty());
    assert_eq!(decode_datagram(&dgram).unwrap().count(), 3);
}

#[test]
fn push_publish_packs_the_bytes_push_does() {
    // Sizes around the limit, an empty payload, a name that is not ASCII.
    for (channel, sizes) in [
        ("c", &[20usize, 0, 61, 62, 63, 1][..]),
        ("日本語.news", &[0, 30, 40, 1][..]),
    ] {
        let mut framed = DatagramBuilder::new(100);
        let mut direct = DatagramBuilder::new(100);
        for &size in sizes {
            let payload = vec![0xAB; size];
            let frame = Frame::Publish {
                channel,
                payload: &payload,
            };
            assert_eq!(
                direct.push_publish(channel, &payload),
                framed.push(&frame),
                "{channel} {size}: the same verdict"
            );
            assert_eq!(direct.len(), framed.len(), "{channel} {size}");
        }
        assert_eq!(direct.finish(), framed.finish(), "{channel}");
    }
    let mut b = DatagramBuilder::new(MAX_DATAGRAM);
    assert_eq!(
        b.push_publish("c", &[0; MAX_DATAGRAM]),
        Err(WireError::TooLarge)
    );
    assert!(b.is_empty(), "a frame that does not fit leaves nothing");
}

#[test]
fn publish_frames_after_one_of_the_same_channel_decode_as_alone() {
    let frames = [
        Frame::Publish {
            channel: "news",
            payload: b"a",
        },
        Frame::Publish {
            channel: "news",
            payload: b"b",
        },
        Frame::ReliablePublish {
            session: 1,
            seq: 0,
            acked_below: 0,
            more: false,
            channel: "news",
            payload: b"c",
        },
        Frame::Publish {
            channel: "newt",
            payload: b"d",
        },
        Frame::Publish {
            channel: "news",
            payload: b"e",
        },
    ];
    let datagram = encode_datagram(&frames).unwrap();
    let got: Vec<Frame<'_>> = decode_datagram(&datagram)
        .unwrap()
        .map(|f| f.unwrap())
        .collect();
    assert_eq!(got, frames);
    // After a checked name, one a byte away (a control character) is still
    // checked, and refused.
    let mut datagram = encode_datagram(&frames[..2]).unwrap();
    datagram.extend_from_slice(&[0x01, 0, 6, 0, 4, b'n', b'e', b'w', 0x01, b'x']);
    let got: Vec<_> = decode_datagram(&datagram).unwrap().collect();
    assert_eq!(got.len(), 3);
    assert_eq!(got[2], Err(WireError::BadChannel));
}

/// Decodes `input` completely, touching every field, so a bug that only shows
/// when a field is read still surfaces.
fn decode_all(input: &[u8]) -> usize {
    let Ok(frames) = decode_datagram(input) else {
        return 0;
    };
    let mut n = 0;
    for f in frames {
        let Ok(f) = f else { break };
        if let Frame::Stats { entries, .. } = f {
            n += entries.iter().count();
        }
        if let Frame::Ack { ranges, .. } = f {
            n += ack_ranges(ranges).count();
        }
        n += f.encoded_len();
    }
    n
}

#[test]
fn decoder_survives_random_and_mutated_input() {
    let seed = std::env::var("UDPRELAY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED);
    let mut rng = Rng::new(seed);
    let valid = encode_datagram(&sample_frames()).unwrap();
    let mut buf = Vec::new();
    let mut decoded_some = 0;
    for i in 0..100_000u32 {
        buf.clear();
        if i % 4 == 0 {
            // Pure noise, with the magic half of the time so it reaches the frames.
            buf.resize(rng.below(200) as usize, 0);
            rng.fill(&mut buf);
            if rng.chance(0.5) && buf.len() >= HEADER_LEN {
                buf[..HEADER_LEN].copy_from_slice(&valid[..HEADER_LEN]);
            }
        } else {
            // A valid datagram with a few bytes flipped, cut, or extended.
            buf.extend_from_slice(&valid);
            for _ in 0..=rng.below(4) {
                let at = rng.below(buf.len() as u64) as usize;
                buf[at] ^= 1 << rng.below(8);
            }
            match rng.below(3) {
                0 => buf.truncate(rng.below(buf.len() as u64 + 1) as usize),
                1 => buf.extend((0..rng.below(16)).map(|_| rng.next_u64() as u8)),
                _ => {}
            }
        }
        if decode_all(&buf) > 0 {
            decoded_some += 1;
        }
    }
    // Mutations that leave frames intact must still decode: the test is not
    // just feeding the decoder garbage it rejects at the first byte.
    assert!(
        decoded_some > 10_000,
        "only {decoded_some} inputs decoded (seed {seed})"
    );
}

#[test]
fn protocol_md_example_is_exact() {
    let dgram = encode_datagram(&[Frame::Publish {
        channel: "news",
        payload: b"a",
    }])
    .unwrap();
    assert_eq!(
        dgram,
        [
            0x55, 0x52, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, // header
            0x01, 0x00, 0x06, 0x00, // PUBLISH, flags 0, length 6
            0x04, b'n', b'e', b'w', b's', b'a',
        ]
    );
}

#[test]
fn stats_request_layout_and_its_smallest_padding() {
    let d = encode_datagram(&[Frame::StatsRequest {
        cursor: 0x0102_0304,
        padding: 4,
    }])
    .unwrap();
    assert_eq!(
        &d[HEADER_LEN..],
        [0x0A, 0, 8, 0, 4, 3, 2, 1, 0, 0, 0, 0],
        "type, flags, length 8, cursor, four zero bytes"
    );
    // The unpaged request of earlier builds: the first page, no room.
    let empty = [b'U', b'R', 1, 0, 0, 0, 0, 0, 0x0A, 0, 0, 0];
    let frame = decode_datagram(&empty).unwrap().next().unwrap();
    assert_eq!(
        frame,
        Ok(Frame::StatsRequest {
            cursor: 0,
            padding: 0
        })
    );
    let truncated = [b'U', b'R', 1, 0, 0, 0, 0, 0, 0x0A, 0, 2, 0, 1, 0];
    assert!(
        decode_datagram(&truncated)
            .unwrap()
            .next()
            .unwrap()
            .is_err()
    );
}

#[test]
fn stats_page_fits_its_room_and_says_where_the_next_starts() {
    let entries = [("a", 1), ("bb", 2), ("ccc", 3), ("dddd", 4)];
    // "a" takes 10 bytes, "bb" 11, "ccc" 12, "dddd" 13.
    assert_eq!(stat_entry_len("bb"), 11);
    assert_eq!(
        stats_page(entries, 0, 21),
        (vec![("a", 1), ("bb", 2)], Some(2))
    );
    assert_eq!(stats_page(entries, 0, 20), (vec![("a", 1)], Some(1)));
    assert_eq!(
        stats_page(entries, 2, 25),
        (vec![("ccc", 3), ("dddd", 4)], None)
    );
    assert_eq!(
        stats_page(entries, 2, 11),
        (vec![], Some(2)),
        "no room: no progress"
    );
    assert_eq!(stats_page(entries, 4, 100), (vec![], None), "past the end");
    assert_eq!(stats_page(entries, 9, 100), (vec![], None));
}
