//! JetStream's own acknowledged publish rate, for the bridge benchmark
//! (`tools/bridge-bench.sh`): publishes N messages of SIZE bytes to
//! `udprelay.<channel>` on the stream the relays use, each with a message
//! id (as a relay's), up to 4,096 unacknowledged (as a relay's bridge), and
//! prints `jetstream_publish N SECONDS RATE`.
//!
//! `cargo run --release --example jetstream_publish -- nats://127.0.0.1:4222 bench 200000 64`

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::PublishMessage, stream};

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, channel, count, size] = args.as_slice() else {
        return Err("usage: jetstream_publish NATS_URL CHANNEL COUNT SIZE".into());
    };
    let (count, size): (u64, usize) = (count.parse()?, size.parse()?);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = async_nats::connect(url.as_str()).await?;
        let js = jetstream::new(client);
        js.get_or_create_stream(stream::Config {
            name: "UDPRELAY".into(),
            subjects: vec!["udprelay.>".into()],
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(7200),
            ..Default::default()
        })
        .await?;
        let subject = format!("udprelay.{channel}");
        let payload = bytes::Bytes::from(vec![b'x'; size]);
        let started = Instant::now();
        let mut pending = std::collections::VecDeque::new();
        for i in 0..count {
            let message = PublishMessage::build()
                .payload(payload.clone())
                .message_id(format!("{:016x}:{channel}:{i}", u64::MAX));
            pending.push_back(js.send_publish(subject.clone(), message).await?);
            if pending.len() >= 4096
                && let Some(ack) = pending.pop_front()
            {
                ack.await?;
            }
        }
        for ack in pending {
            ack.await?;
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "jetstream_publish {count} {secs:.3} {:.0}",
            count as f64 / secs
        );
        Ok(())
    })
}
