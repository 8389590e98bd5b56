//! `RDMABUS_NUMA_NODE`: a node that is online places the staging ring there, one that is not
//! (or a value that is no node) stops the publisher's build with one clear line, `auto` places
//! only memory a device on another node uses. One test: it sets the environment.

mod common;

use rdmabus::proto::market::Quote;
use rdmabus::{numa, Error, Psk};

#[test]
fn numa_node_is_honoured_or_refused_clearly() {
    let node = common::node_builder(Psk::random()).start().unwrap();
    let online = numa::online_nodes();
    assert!(online.contains(&0), "online nodes {online:?}");

    std::env::set_var("RDMABUS_NUMA_NODE", "0");
    let zero = numa::Placement {
        node: 0,
        explicit: true,
    };
    assert_eq!(numa::choose(None).unwrap(), Some(zero));
    let (mut map, _) = rdmabus::pages::alloc(1 << 16, "a test region", Some(zero)).unwrap();
    map[0] = 1;
    assert_eq!(numa::node_of(map.as_ptr() as usize), Some(0));
    node.publisher::<Quote>("numa.ok").build().unwrap();

    let absent = online.iter().max().unwrap() + 1;
    std::env::set_var("RDMABUS_NUMA_NODE", absent.to_string());
    match node.publisher::<Quote>("numa.absent").build() {
        Err(Error::Config(m)) => {
            assert!(m.contains("no such node online"), "{m}");
            assert!(m.contains(&format!("RDMABUS_NUMA_NODE={absent}")), "{m}");
        }
        Err(e) => panic!("expected a config error, got {e}"),
        Ok(_) => panic!("node {absent} is not online, yet the publisher was built"),
    }

    std::env::set_var("RDMABUS_NUMA_NODE", "near the NIC");
    match numa::choose(None) {
        Err(Error::Config(m)) => assert!(m.contains("auto, off or a node number"), "{m}"),
        other => panic!("expected a config error, got {other:?}"),
    }

    std::env::set_var("RDMABUS_NUMA_NODE", "auto");
    assert_eq!(numa::choose(None).unwrap(), None);
    let expect = (online.len() > 1).then_some(numa::Placement {
        node: 0,
        explicit: false,
    });
    assert_eq!(numa::choose(Some(0)).unwrap(), expect);
    std::env::set_var("RDMABUS_NUMA_NODE", "off");
    assert_eq!(numa::choose(Some(0)).unwrap(), None);
    std::env::remove_var("RDMABUS_NUMA_NODE");
}
