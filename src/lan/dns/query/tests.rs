//! Unit tests: unwrap() is the assertion here.
#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;
use std::str::FromStr as _;

use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use proptest::prelude::*;

use super::*;

const VM_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 254, 2);

fn local() -> LocalNames {
    LocalNames::new("vm-0", Some("ns.svc.cluster.local"), VM_IP)
}

fn ask(name: &str, kind: RecordType) -> Message {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_str(name).unwrap(), kind));
    m
}

fn answer_of(plan: Plan) -> Message {
    match plan {
        Plan::Answer(bytes) => Message::from_vec(&bytes).unwrap(),
        Plan::Forward { .. } => panic!("expected a local answer"),
    }
}

#[test]
fn answers_the_vms_own_names_locally() {
    for name in ["vm-0.", "VM-0", "vm-0.ns.svc.cluster.local."] {
        let q = ask(name, RecordType::A);
        let a = answer_of(plan(&q.to_vec().unwrap(), &local()).unwrap());
        assert_eq!(a.metadata.id, q.metadata.id);
        assert_eq!(a.metadata.response_code, ResponseCode::NoError);
        assert!(a.metadata.recursion_desired);
        assert_eq!(a.answers.len(), 1, "{name}");
        assert_eq!(a.answers[0].data, RData::A(A(VM_IP)));
    }
}

#[test]
fn own_name_of_another_type_is_nodata() {
    let q = ask("vm-0.", RecordType::AAAA);
    let a = answer_of(plan(&q.to_vec().unwrap(), &local()).unwrap());
    assert_eq!(a.metadata.response_code, ResponseCode::NoError);
    assert!(a.answers.is_empty());
}

#[test]
fn forwards_everything_else_with_the_client_payload_size() {
    let mut q = ask("kubernetes.default.svc.cluster.local.", RecordType::A);
    match plan(&q.to_vec().unwrap(), &local()).unwrap() {
        Plan::Forward { max_udp, .. } => assert_eq!(max_udp, 512),
        Plan::Answer(_) => panic!("must forward"),
    }
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    q.set_edns(edns);
    match plan(&q.to_vec().unwrap(), &local()).unwrap() {
        Plan::Forward { max_udp, .. } => assert_eq!(max_udp, 1232),
        Plan::Answer(_) => panic!("must forward"),
    }
}

#[test]
fn servfail_keeps_id_and_question() {
    let q = ask("example.org.", RecordType::MX);
    let s = Message::from_vec(&servfail(&q)).unwrap();
    assert_eq!(s.metadata.id, q.metadata.id);
    assert_eq!(s.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(s.queries, q.queries);
}

#[test]
fn only_answers_to_the_same_question_are_accepted() {
    let q = ask("example.org.", RecordType::A);
    let good = servfail(&q);
    assert!(answers(&q, &good).is_some());
    let other = ask("example.net.", RecordType::A);
    let mut wrong = Message::from_vec(&servfail(&other)).unwrap();
    wrong.metadata.id = q.metadata.id;
    assert!(answers(&q, &wrong.to_vec().unwrap()).is_none());
    assert!(answers(&q, &[0; 5]).is_none());
}

#[test]
fn responses_and_garbage_are_rejected_not_answered() {
    assert!(plan(&servfail(&ask("x.", RecordType::A)), &local()).is_err());
    assert!(plan(&[1, 2, 3], &local()).is_err());
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(Plan::Forward { query, .. }) = plan(&bytes, &local()) {
            let _ = servfail(&query);
            let _ = answers(&query, &bytes);
        }
    }
}
