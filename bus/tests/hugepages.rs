//! Staging rings go on 2 MiB pages exactly when the hugetlb pool has free pages (the Soft-RoCE
//! guest reserves some, so there the verbs memory regions are registered on huge pages), and
//! messages flow either way.

mod common;

use rdmabus::pages::Pages;
use rdmabus::proto::market::Quote;
use rdmabus::{Event, Psk};
use std::time::Duration;

fn free_huge_pages() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0)
}

#[test]
fn staging_is_on_huge_pages_when_the_pool_has_them() {
    if std::env::var_os("RDMABUS_HUGEPAGES").is_some() {
        eprintln!("skipped: RDMABUS_HUGEPAGES is set");
        return;
    }
    let key = Psk::parse(
        "rdmabus-psk-v1:44444444444444444444444444444444444444444444444444444444444444ab",
    )
    .unwrap();
    let free = free_huge_pages();
    let node = common::node_builder(key.clone()).start().unwrap();
    let mut p = node.publisher::<Quote>("q").build().unwrap();
    let expect = if free >= 2 { Pages::Huge } else { Pages::Small };
    assert_eq!(p.staging_pages(), expect, "{free} free 2 MiB pages");
    let mut sub = common::subscriber::<Quote>(node.local_addr(), "q", key)
        .slots(64)
        .connect()
        .unwrap();
    p.wait_for_subscribers(1, Duration::from_secs(10)).unwrap();
    for i in 0..500u64 {
        p.publish(&Quote::synthetic(i)).unwrap();
        match sub.recv_timeout(Duration::from_secs(10)).unwrap() {
            Some(Event::Message(m)) => assert!(Quote::synthetic_matches(&m, i)),
            _ => panic!("message {i}"),
        }
    }
}
