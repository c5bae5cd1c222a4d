//! The driver run in-process: sockets bound by the test, stopped through a
//! [`ShutdownHandle`] from another thread, as the daemon is by SIGTERM.

mod common;

use std::net::UdpSocket;
use std::sync::mpsc;
use std::thread;

use common::*;
use udprelay::config::RelayConfig;
use udprelay::driver::{BoundSockets, Driver, DriverError, Shutdown, ShutdownHandle};
use udprelay::log::inspect;

fn config(dir: &tempfile::TempDir) -> RelayConfig {
    RelayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        ..RelayConfig::default()
    }
}

/// Runs `driver` on a thread; the receiver gets it back with its result.
fn run_on_thread(mut driver: Driver) -> mpsc::Receiver<(Driver, Result<(), DriverError>)> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let result = driver.run();
        let _ = tx.send((driver, result));
    });
    rx
}

/// Stops the driver through `handle` and waits for `run` to return.
fn stop(
    handle: &ShutdownHandle,
    stopped: &mpsc::Receiver<(Driver, Result<(), DriverError>)>,
) -> Driver {
    handle.shutdown();
    let (driver, result) = stopped
        .recv_timeout(DEADLINE)
        .expect("Driver::run did not return after shutdown()");
    result.expect("Driver::run failed");
    driver
}

#[test]
fn in_process_relay_delivers_and_syncs_its_log_when_stopped_by_handle() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(&dir);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sockets = BoundSockets::from_std(socket, Vec::new()).unwrap();
    let addr = sockets.local_addr().unwrap();
    let (shutdown, handle) = Shutdown::handle();
    let stopped = run_on_thread(Driver::new(&config, sockets, shutdown).unwrap());

    let mut subscriber = TestClient::new(addr);
    subscriber.subscribe(1, "news");
    let mut publisher = TestClient::new(addr);
    let sent: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 100]).collect();
    for payload in &sent {
        publisher.publish("news", payload);
    }
    publisher.barrier();
    let delivered: Vec<Vec<u8>> = subscriber
        .barrier()
        .into_iter()
        .filter_map(|g| match g {
            Got::Deliver {
                sub_id: 1, payload, ..
            } => Some(payload),
            _ => None,
        })
        .collect();
    assert_eq!(delivered, sent, "every message, in order");
    // Under the default `--fsync none` nothing is synced while running...
    assert_eq!(publisher.stats().get("log_syncs"), Some(&0));

    let driver = stop(&handle, &stopped);
    // ...and the one channel is synced on the way out, as on SIGTERM.
    assert_eq!(driver.relay().counters().log_syncs, 1);
    let mut stored = Vec::new();
    inspect::dump(dir.path(), "news", 0, u64::MAX, &mut |r| {
        stored.push(r.payload.to_vec())
    })
    .unwrap();
    assert_eq!(stored, sent, "the log holds what was published");
}

#[test]
fn shutdown_asked_before_run_stops_it_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(&dir);
    let (shutdown, handle) = Shutdown::handle();
    handle.shutdown();
    let sockets = BoundSockets::bind(&config).unwrap();
    let stopped = run_on_thread(Driver::new(&config, sockets, shutdown).unwrap());
    let (_, result) = stopped
        .recv_timeout(DEADLINE)
        .expect("Driver::run did not return though shutdown was asked first");
    result.unwrap();
}

#[test]
fn handle_from_driver_stops_a_bound_relay() {
    let dir = tempfile::tempdir().unwrap();
    let driver = Driver::new(
        &config(&dir),
        BoundSockets::bind(&config(&dir)).unwrap(),
        Shutdown::handle().0,
    )
    .unwrap();
    let handle = driver.shutdown_handle();
    let addr = driver.local_addr().unwrap();
    let stopped = run_on_thread(driver);
    // Running: it answers a ping.
    TestClient::new(addr).barrier();
    stop(&handle, &stopped);
}

#[test]
fn sockets_must_match_the_configured_raw_ports() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&dir);
    config.raw_in = vec![("127.0.0.1:0".parse().unwrap(), "raw".into())];
    let sockets = BoundSockets::from_std(UdpSocket::bind("127.0.0.1:0").unwrap(), Vec::new());
    let err = Driver::new(&config, sockets.unwrap(), Shutdown::handle().0)
        .err()
        .expect("a missing raw-in socket is refused");
    assert!(
        matches!(
            err,
            DriverError::SocketCount {
                raw_in: 0,
                configured: 1
            }
        ),
        "{err}"
    );
}
