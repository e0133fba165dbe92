//! An arbitrary `/policy/explain` query string (the admin API's input; the CLI's flags take the
//! same parser): decoding and `TrafficQuery::from_pairs` must never panic, and an accepted query
//! names a destination namespace and a non-zero port.

#![no_main]

use libfuzzer_sys::fuzz_target;
use nodemesh_policy::TrafficQuery;
use nodemesh_proxy::admin::parse_query;

fuzz_target!(|query: &str| {
    let pairs = parse_query(query);
    if let Ok(q) = TrafficQuery::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))) {
        let connection = q.connection();
        assert!(!connection.destination.namespace.is_empty());
        assert_ne!(connection.destination.port, 0);
        let _ = q.request();
    }
});
