//! Writes the seed corpora of the fuzz targets, made with the library's own
//! encoder and log writer rather than by hand, so they stay real as the
//! formats change:
//!
//! - `decode/`: a datagram of every frame type, and packed datagrams;
//! - `relay/`: runs of a client's conversations with the relay (hello,
//!   proven subscribe, publish, reliable sessions with MORE, fragments,
//!   acknowledgements with ranges, padded STATS requests, raw ingest);
//! - `log_recovery/`: segment files and session snapshots written by the
//!   log, whole, torn, damaged and with made headers.
//!
//! Usage: `cargo run --bin seeds -- [DIR]` (default `corpus`); existing
//! seeds of the same name are replaced, other files are left alone.

use std::path::{Path, PathBuf};

use udprelay::log::{DataDir, LogConfig, SessionMark};
use udprelay::wire::{
    AckKind, DeliveryMode, ErrorCode, Frame, StartPosition, StatEntries, TOKEN_LEN,
    encode_ack_ranges, encode_datagram,
};
use udprelay_fuzz::log_input::{self, CHANNEL, LogInput, SegmentInput, flag};
use udprelay_fuzz::relay_input::{self, Settings, Step};
use udprelay_fuzz::scratch_dir;

/// A resume vector: relay 0xa at 7, session 0x7 at 3.
static RESUME: [u8; 34] = [
    0, 0xa, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, //
    1, 0x7, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0,
];

fn main() {
    let root = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "corpus".into()));
    let counts = [
        ("decode", write_all(&root.join("decode"), decode_seeds())),
        ("relay", write_all(&root.join("relay"), relay_seeds())),
        ("sealed", write_all(&root.join("sealed"), sealed_seeds())),
        (
            "log_recovery",
            write_all(&root.join("log_recovery"), log_seeds()),
        ),
    ];
    for (target, (files, bytes)) in counts {
        println!("{target}: {files} seeds, {bytes} bytes");
    }
}

/// Inputs of the `sealed` target (fuzz/fuzz_targets/sealed.rs): a settings
/// byte, then steps; 0x40 seals frames with the client's session.
fn sealed_seeds() -> Vec<(String, Vec<u8>)> {
    let step = |c: u8, body: &[u8]| {
        let mut out = vec![c];
        out.extend_from_slice(&(body.len() as u16).to_le_bytes());
        out.extend_from_slice(body);
        out
    };
    let publish = |channel| {
        frames(&[Frame::Publish {
            channel,
            payload: b"sealed",
        }])
    };
    let sub = frames(&[Frame::Subscribe {
        sub_id: 1,
        mode: DeliveryMode::Reliable,
        start: StartPosition::Earliest,
        channel: "k.x",
        group: None,
        origins: false,
        resume: udprelay::wire::ResumeVector::EMPTY,
    }]);
    let mut seeds = Vec::new();
    for (settings, mode) in [(0u8, "optional"), (1, "required")] {
        let mut conversation = vec![settings];
        conversation.extend(step(0x40, &publish("k.x")));
        conversation.extend(step(0x40, &sub));
        conversation.extend(step(0x40, &publish("a.x")));
        conversation.extend([0x80, 0]); // the last one again
        conversation.extend([0x81, 17]); // the one before, changed
        conversation.extend(step(0x41, &publish("k.x"))); // forged source
        conversation.extend(step(
            0x01,
            &datagram(&[Frame::Ping {
                nonce: 1,
                load: false,
            }]),
        ));
        conversation.extend([0xC0, 20]); // 4 s: leases lapse
        conversation.extend([0xC0, 255]); // 650 s: the session ends
        conversation.extend(step(0x40, &publish("k.x")));
        seeds.push((format!("conversation-{mode}"), conversation));
    }
    seeds
}

/// Writes each `(name, bytes)` as a file of `dir`; returns the number of
/// files and their total size.
fn write_all(dir: &Path, seeds: Vec<(String, Vec<u8>)>) -> (usize, usize) {
    std::fs::create_dir_all(dir).expect("the corpus directory can be made");
    let bytes = seeds.iter().map(|(_, b)| b.len()).sum();
    for (name, seed) in &seeds {
        std::fs::write(dir.join(format!("seed-{name}")), seed).expect("a seed can be written");
    }
    (seeds.len(), bytes)
}

/// Encodes frames without a datagram header (what follows the VALIDATE
/// frame in a relay PROVEN step).
fn frames(frames: &[Frame<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        f.encode(&mut out).expect("a seed frame encodes");
    }
    out
}

fn datagram(frames: &[Frame<'_>]) -> Vec<u8> {
    encode_datagram(frames).expect("a seed datagram encodes")
}

const TOKEN: [u8; TOKEN_LEN] = [
    0x60, 0x5c, 0x4d, 0x65, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
];

fn subscribe(sub_id: u32, mode: DeliveryMode, start: StartPosition) -> Frame<'static> {
    Frame::Subscribe {
        sub_id,
        mode,
        start,
        channel: "news",
        group: None,
        origins: false,
        resume: udprelay::wire::ResumeVector::EMPTY,
    }
}

fn reliable_publish(seq: u64, more: bool, payload: &[u8]) -> Frame<'_> {
    Frame::ReliablePublish {
        session: 77,
        seq,
        acked_below: 0,
        more,
        channel: "news",
        payload,
    }
}

fn fragment(index: u16, chunk: &[u8]) -> Frame<'_> {
    Frame::Fragment {
        msg_id: 9,
        index,
        count: 2,
        channel: "news",
        chunk,
    }
}

fn ack(kind: AckKind, id: u64, cumulative: u64, ranges: &[u8]) -> Frame<'_> {
    Frame::Ack {
        kind,
        id,
        cumulative,
        window: 64,
        ranges,
    }
}

/// One datagram of every frame type, and packed ones.
fn decode_seeds() -> Vec<(String, Vec<u8>)> {
    let ranges = encode_ack_ranges(&[(3, 5), (8, 9)]);
    let stats: &[(&str, u64)] = &[("datagrams_received", 12), ("channels", 1)];
    let one = |name: &str, frame: Frame<'_>| (name.to_string(), datagram(&[frame]));
    vec![
        one(
            "publish",
            Frame::Publish {
                channel: "news",
                payload: b"hello",
            },
        ),
        one(
            "subscribe-latest",
            subscribe(1, DeliveryMode::Unreliable, StartPosition::Latest),
        ),
        one(
            "subscribe-earliest-reliable",
            subscribe(2, DeliveryMode::Reliable, StartPosition::Earliest),
        ),
        one(
            "subscribe-offset",
            subscribe(3, DeliveryMode::Unreliable, StartPosition::Offset(42)),
        ),
        one(
            "subscribe-pattern",
            Frame::Subscribe {
                sub_id: 4,
                mode: DeliveryMode::Reliable,
                start: StartPosition::Earliest,
                channel: "news.>",
                group: None,
                origins: false,
                resume: udprelay::wire::ResumeVector::EMPTY,
            },
        ),
        one(
            "matched",
            Frame::Matched {
                sub_id: 4,
                channel_sub_id: 0x8000_0000,
                first_offset: 0,
                next_offset: 3,
                channel: "news.eu",
            },
        ),
        one(
            "subscribe-group",
            Frame::Subscribe {
                sub_id: 5,
                mode: DeliveryMode::Unreliable,
                start: StartPosition::Latest,
                channel: "jobs",
                group: Some("workers"),
                origins: false,
                resume: udprelay::wire::ResumeVector::EMPTY,
            },
        ),
        one(
            "subscribe-resume",
            Frame::Subscribe {
                sub_id: 6,
                mode: DeliveryMode::Reliable,
                start: StartPosition::Resume {
                    since: 1_700_000_000_000_000_000,
                },
                channel: "orders",
                group: None,
                origins: true,
                resume: udprelay::wire::ResumeVector::new(&RESUME).unwrap(),
            },
        ),
        one(
            "deliver-origin",
            Frame::Deliver {
                sub_id: 6,
                offset: 9,
                timestamp: 1_700_000_000_000_000_000,
                payload: b"from a",
                origin: Some(udprelay::wire::Origin {
                    source: udprelay::wire::Source::Session(0xfeed),
                    position: 3,
                }),
            },
        ),
        one("unsubscribe", Frame::Unsubscribe { sub_id: 1 }),
        one(
            "subscribed",
            Frame::Subscribed {
                sub_id: 1,
                first_offset: 0,
                next_offset: 10,
                lease_ms: 30_000,
            },
        ),
        one(
            "deliver",
            Frame::Deliver {
                sub_id: 1,
                offset: 4,
                timestamp: 1_700_000_000_000_000_000,
                payload: b"hello",
                origin: None,
            },
        ),
        one("ack-publish", ack(AckKind::Publish, 77, 2, &ranges)),
        one(
            "ack-subscription",
            ack(AckKind::Subscription, 2, 3, &ranges),
        ),
        one("ack-pieces", ack(AckKind::Pieces, 2, 4, &ranges[..16])),
        one(
            "ping",
            Frame::Ping {
                nonce: 0x1122,
                load: false,
            },
        ),
        one(
            "ping-load",
            Frame::Ping {
                nonce: 0x1123,
                load: true,
            },
        ),
        one(
            "pong",
            Frame::Pong {
                nonce: 0x1122,
                load: None,
            },
        ),
        one(
            "error",
            Frame::Error {
                code: ErrorCode::UNKNOWN_SUBSCRIPTION,
                reason: "no such subscription",
            },
        ),
        one(
            "stats-request-padded",
            Frame::StatsRequest {
                cursor: 0,
                padding: 120,
            },
        ),
        one(
            "stats",
            Frame::Stats {
                cursor: 0,
                next: Some(2),
                entries: StatEntries::List(stats),
            },
        ),
        one(
            "reliable-publish-more",
            reliable_publish(0, true, b"first half"),
        ),
        one(
            "reliable-publish",
            reliable_publish(1, false, b"second half"),
        ),
        one("fragment", fragment(0, b"first piece")),
        one(
            "deliver-fragment",
            Frame::DeliverFragment {
                sub_id: 2,
                offset: 5,
                timestamp: 1_700_000_000_000_000_000,
                total: 3000,
                at: 1400,
                chunk: b"a piece",
                origin: None,
            },
        ),
        one("address-token", Frame::AddressToken { token: TOKEN }),
        one(
            "hello",
            Frame::Validate {
                token: [0; TOKEN_LEN],
            },
        ),
        (
            "packed-proven".into(),
            datagram(&[
                Frame::Validate { token: TOKEN },
                subscribe(1, DeliveryMode::Reliable, StartPosition::Earliest),
                Frame::Publish {
                    channel: "news",
                    payload: b"hi",
                },
                Frame::Ping {
                    nonce: 7,
                    load: false,
                },
                Frame::StatsRequest {
                    cursor: 0,
                    padding: 40,
                },
            ]),
        ),
        (
            "packed-reliable-more".into(),
            datagram(&[
                Frame::Validate { token: TOKEN },
                reliable_publish(0, true, b"one "),
                reliable_publish(1, true, b"two "),
                reliable_publish(2, false, b"three"),
                ack(AckKind::Subscription, 1, 0, &ranges),
            ]),
        ),
        (
            "packed-fragments".into(),
            datagram(&[fragment(0, b"first "), fragment(1, b"second")]),
        ),
    ]
}

/// Conversations with the relay, as relay target inputs.
fn relay_seeds() -> Vec<(String, Vec<u8>)> {
    let (alice, bob, publisher, ipv6, mapped) = (0u8, 1u8, 2u8, 3u8, 4u8);
    let hello = |source: u8| Step::Proven {
        source,
        token_of: source,
        frames: &[],
    };
    let publish = frames(&[Frame::Publish {
        channel: "news",
        payload: b"hello subscribers",
    }]);
    let publish_datagram = datagram(&[Frame::Publish {
        channel: "news",
        payload: b"hello subscribers",
    }]);
    let sub_latest = frames(&[subscribe(
        1,
        DeliveryMode::Unreliable,
        StartPosition::Latest,
    )]);
    let sub_reliable = frames(&[subscribe(
        2,
        DeliveryMode::Reliable,
        StartPosition::Earliest,
    )]);
    let sub_offset = frames(&[subscribe(
        3,
        DeliveryMode::Reliable,
        StartPosition::Offset(1),
    )]);
    let ack_sub = frames(&[ack(
        AckKind::Subscription,
        2,
        1,
        &encode_ack_ranges(&[(2, 3)]),
    )]);
    let ack_pieces = frames(&[ack(AckKind::Pieces, 2, 0, &encode_ack_ranges(&[(0, 1000)]))]);
    let unsubscribe = frames(&[Frame::Unsubscribe { sub_id: 1 }]);
    let session = frames(&[
        reliable_publish(0, true, b"a message in "),
        reliable_publish(1, true, b"three sequence "),
        reliable_publish(2, false, b"numbers"),
    ]);
    let session_gap = frames(&[reliable_publish(4, false, b"out of order")]);
    let session_fill = frames(&[reliable_publish(3, false, b"fills the gap")]);
    let large = vec![b'x'; 3000];
    let large_frag = [
        datagram(&[fragment(0, &large[..1300])]),
        datagram(&[fragment(1, &large[1300..])]),
    ];
    let stats = frames(&[Frame::StatsRequest {
        cursor: 0,
        padding: 300,
    }]);
    let stats_page2 = frames(&[Frame::StatsRequest {
        cursor: 5,
        padding: 120,
    }]);
    let ping = datagram(&[Frame::Ping {
        nonce: 1,
        load: false,
    }]);
    let garbage = b"UR\x01\x00\x00\x00\x00\x00\x63\x00\x02\x00zz".to_vec();
    let big_publish = frames(&[Frame::Publish {
        channel: "bulk",
        payload: &[7u8; 1500],
    }]);

    let run = |settings: Settings, steps: &[Step<'_>]| relay_input::encode(settings, steps);
    let plain = Settings::default();
    vec![
        (
            "subscribe-publish-ack".into(),
            run(
                plain,
                &[
                    hello(alice),
                    Step::Drain,
                    Step::Proven {
                        source: alice,
                        token_of: alice,
                        frames: &sub_latest,
                    },
                    Step::Proven {
                        source: alice,
                        token_of: alice,
                        frames: &sub_reliable,
                    },
                    Step::Datagram {
                        source: publisher,
                        bytes: &publish_datagram,
                    },
                    Step::Drain,
                    Step::Advance { b: 20 },
                    Step::Proven {
                        source: alice,
                        token_of: alice,
                        frames: &ack_sub,
                    },
                    Step::Proven {
                        source: alice,
                        token_of: alice,
                        frames: &unsubscribe,
                    },
                    Step::Advance { b: 60 },
                    Step::Advance { b: 250 },
                ],
            ),
        ),
        (
            "reliable-session-more".into(),
            run(
                Settings { fsync: 1, ..plain },
                &[
                    hello(publisher),
                    hello(bob),
                    Step::Drain,
                    Step::Proven {
                        source: bob,
                        token_of: bob,
                        frames: &sub_offset,
                    },
                    Step::Proven {
                        source: publisher,
                        token_of: publisher,
                        frames: &session,
                    },
                    Step::Proven {
                        source: publisher,
                        token_of: publisher,
                        frames: &session_gap,
                    },
                    Step::Advance { b: 3 },
                    Step::Sync { fail: false },
                    Step::Proven {
                        source: publisher,
                        token_of: publisher,
                        frames: &session_fill,
                    },
                    Step::Advance { b: 10 },
                    Step::Sync { fail: true },
                    Step::Proven {
                        source: publisher,
                        token_of: publisher,
                        frames: &session,
                    },
                    Step::Advance { b: 100 },
                ],
            ),
        ),
        (
            "fragments-replay".into(),
            run(
                Settings { fsync: 2, ..plain },
                &[
                    Step::Datagram {
                        source: publisher,
                        bytes: &large_frag[0],
                    },
                    Step::Datagram {
                        source: publisher,
                        bytes: &large_frag[1],
                    },
                    hello(alice),
                    Step::Drain,
                    Step::Proven {
                        source: alice,
                        token_of: alice,
                        frames: &sub_reliable,
                    },
                    Step::Advance { b: 5 },
                    Step::Proven {
                        source: alice,
                        token_of: alice,
                        frames: &ack_pieces,
                    },
                    Step::Advance { b: 30 },
                ],
            ),
        ),
        (
            "stats-ping-strangers".into(),
            run(
                plain,
                &[
                    hello(ipv6),
                    Step::Drain,
                    Step::Proven {
                        source: ipv6,
                        token_of: ipv6,
                        frames: &stats,
                    },
                    Step::Proven {
                        source: ipv6,
                        token_of: ipv6,
                        frames: &stats_page2,
                    },
                    Step::Datagram {
                        source: mapped,
                        bytes: &ping,
                    },
                    Step::Datagram {
                        source: relay_input::OWN_SOURCE,
                        bytes: &ping,
                    },
                    Step::Datagram {
                        source: bob,
                        bytes: &garbage,
                    },
                    // Bob leads with the IPv6 peer's token: not his.
                    Step::Proven {
                        source: bob,
                        token_of: ipv6,
                        frames: &sub_latest,
                    },
                    Step::Drain,
                ],
            ),
        ),
        (
            "raw-retention".into(),
            run(
                Settings {
                    fsync: 0,
                    retain_bytes: true,
                    retain_age: true,
                },
                &[
                    Step::Raw {
                        port: 0,
                        bytes: b"raw message",
                    },
                    Step::Raw {
                        port: 1,
                        bytes: b"no such port",
                    },
                    Step::Proven {
                        source: publisher,
                        token_of: publisher,
                        frames: &big_publish,
                    },
                    Step::Datagram {
                        source: publisher,
                        bytes: &publish_datagram,
                    },
                    Step::Advance { b: 120 },
                    Step::Proven {
                        source: alice,
                        token_of: alice,
                        frames: &publish,
                    },
                    Step::Drain,
                ],
            ),
        ),
    ]
}

/// Logs written by the library, then cut, damaged and re-headed.
fn log_seeds() -> Vec<(String, Vec<u8>)> {
    let dir = scratch_dir("seeds");
    let data_dir = DataDir::open(
        &dir,
        LogConfig {
            segment_size: 512,
            ..LogConfig::default()
        },
    )
    .expect("a scratch data directory opens");
    let mut log = data_dir
        .create_channel(CHANNEL)
        .expect("a channel can be made");
    let mark = |seq| SessionMark {
        client: 0xc1,
        session: 77,
        seq,
    };
    let mut t = 1_700_000_000_000_000_000u64;
    for i in 0..12u64 {
        t += 1_000_000;
        let payload = format!("message {i}");
        let session = (i % 3 != 0).then(|| mark(i));
        log.append(t, session, payload.as_bytes())
            .expect("the seed log takes a record");
    }
    drop(log);
    drop(data_dir);
    let channel_dir = dir.join("channels").join(CHANNEL);
    let mut files: Vec<(u64, Vec<u8>)> = std::fs::read_dir(&channel_dir)
        .expect("the seed channel can be read")
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let base = name.strip_suffix(".seg")?.parse().ok()?;
            let mut bytes = std::fs::read(e.path()).ok()?;
            // The preallocated zeros are restored from the header's capacity.
            let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
            bytes.truncate(log_input::align8(end));
            Some((base, bytes))
        })
        .collect();
    files.sort();
    let snapshot = std::fs::read(channel_dir.join("sessions")).expect("a roll wrote a snapshot");
    let _ = std::fs::remove_dir_all(&dir);

    let seed = |flags, segments, snapshot| {
        log_input::encode(&LogInput {
            flags,
            segments,
            snapshot,
        })
    };
    let last = files.len() - 1;
    // The newest segment torn in its last record, and flipped in its first.
    let mut torn = files.clone();
    let cut = torn[last].1.len() - 5;
    torn[last].1.truncate(cut);
    let mut flipped = files.clone();
    flipped[last].1[log_input::SEGMENT_HEADER + 30] ^= 0x40;
    let mut sealed_flipped = files.clone();
    sealed_flipped[0].1[log_input::SEGMENT_HEADER + 30] ^= 0x40;
    let newest = &files[last..];
    vec![
        ("whole".into(), seed(0, raw(&files), None)),
        (
            "whole-snapshot".into(),
            seed(flag::SNAPSHOT, raw(&files), Some(&snapshot)),
        ),
        (
            "headed-fsync".into(),
            seed(flag::FSYNC | flag::FIX_CRC, headed(&files, 2), None),
        ),
        (
            "newest-only-retention".into(),
            seed(flag::RETENTION, raw(newest), None),
        ),
        ("torn-tail".into(), seed(0, raw(&torn), None)),
        (
            "mid-log-damage".into(),
            seed(flag::TRUNCATE, raw(&flipped), None),
        ),
        (
            "sealed-damage".into(),
            seed(flag::SNAPSHOT, raw(&sealed_flipped), Some(&snapshot)),
        ),
        (
            "damaged-note".into(),
            seed(flag::DAMAGED | flag::FIX_OFFSETS, raw(&files), None),
        ),
    ]
}

/// Segments whose bytes are the whole files.
fn raw(files: &[(u64, Vec<u8>)]) -> Vec<SegmentInput<'_>> {
    files
        .iter()
        .map(|(base, bytes)| SegmentInput {
            base: *base,
            header: None,
            bytes,
        })
        .collect()
}

/// Segments whose headers the harness makes, with `slack` x 64 bytes of
/// room after the records.
fn headed(files: &[(u64, Vec<u8>)], slack: u8) -> Vec<SegmentInput<'_>> {
    files
        .iter()
        .map(|(base, bytes)| SegmentInput {
            base: *base,
            header: Some(slack),
            bytes: &bytes[log_input::SEGMENT_HEADER..],
        })
        .collect()
}
