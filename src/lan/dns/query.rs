//! The decision for one query from the VM: answer it here (the VM's own name, or an error the
//! upstreams need not see), or forward it. Pure; also builds the SERVFAIL we owe the VM when
//! every upstream fails, and checks that an upstream's answer belongs to the query.

use std::net::Ipv4Addr;

use hickory_proto::op::{Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

/// TTL of our local answer: the VM's address only changes with the pod.
const LOCAL_TTL: u32 = 60;
/// The smallest message with a header.
const HEADER_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("not a DNS message")]
    Decode(#[source] hickory_proto::serialize::binary::DecodeError),
    #[error("a response, not a query")]
    NotAQuery,
}

/// The names answered locally with `VM_IP`: the hostname, and the hostname in the first search
/// domain (what the VM's resolver tries when ndots sends it through the search list).
#[derive(Debug, Clone)]
pub struct LocalNames {
    names: Vec<Name>,
    vm_ip: Ipv4Addr,
}

impl LocalNames {
    pub fn new(hostname: &str, first_search: Option<&str>, vm_ip: Ipv4Addr) -> Self {
        let mut names = Vec::new();
        let short = hostname.trim_end_matches('.');
        let candidates = [
            Some(short.to_owned()),
            first_search.map(|d| format!("{short}.{d}")),
        ];
        for candidate in candidates.into_iter().flatten() {
            if let Ok(name) = Name::from_ascii(format!("{candidate}.")) {
                names.push(name);
            }
        }
        Self { names, vm_ip }
    }

    fn matches(&self, name: &Name) -> bool {
        let mut name = name.clone();
        name.set_fqdn(true);
        self.names.contains(&name)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Send these bytes back to the VM.
    Answer(Vec<u8>),
    /// Relay the query bytes as received; `max_udp` is what the VM accepts over UDP.
    Forward { query: Box<Message>, max_udp: u16 },
}

pub fn plan(bytes: &[u8], local: &LocalNames) -> Result<Plan, QueryError> {
    let query = Message::from_vec(bytes).map_err(QueryError::Decode)?;
    if query.metadata.message_type != MessageType::Query {
        return Err(QueryError::NotAQuery);
    }
    if query.metadata.op_code != OpCode::Query {
        return Ok(Plan::Answer(error(&query, ResponseCode::NotImp)));
    }
    let [question] = query.queries.as_slice() else {
        return Ok(Plan::Answer(error(&query, ResponseCode::FormErr)));
    };
    if question.query_class() == DNSClass::IN && local.matches(question.name()) {
        let mut answer = response(&query, ResponseCode::NoError);
        answer.metadata.authoritative = true;
        if question.query_type() == RecordType::A {
            answer.add_answer(Record::from_rdata(
                question.name().clone(),
                LOCAL_TTL,
                RData::A(A(local.vm_ip)),
            ));
        }
        return Ok(Plan::Answer(encode(&answer)));
    }
    let max_udp = query.max_payload();
    Ok(Plan::Forward {
        query: Box::new(query),
        max_udp,
    })
}

/// SERVFAIL for `query`: every upstream failed (RFC 1035 §4.1.1, "Server failure").
pub fn servfail(query: &Message) -> Vec<u8> {
    error(query, ResponseCode::ServFail)
}

/// True when `answer` is a response to `query`: same id, same question.
pub fn answers(query: &Message, answer: &[u8]) -> Option<Message> {
    if answer.len() < HEADER_LEN {
        return None;
    }
    let answer = Message::from_vec(answer).ok()?;
    (answer.metadata.message_type == MessageType::Response
        && answer.metadata.id == query.metadata.id
        && answer.queries == query.queries)
        .then_some(answer)
}

fn response(query: &Message, code: ResponseCode) -> Message {
    let mut message = Message::new(
        query.metadata.id,
        MessageType::Response,
        query.metadata.op_code,
    );
    message.metadata = Metadata::response_from_request(&query.metadata);
    message.metadata.recursion_available = true;
    message.metadata.response_code = code;
    message.add_queries(query.queries.iter().cloned());
    message
}

fn error(query: &Message, code: ResponseCode) -> Vec<u8> {
    encode(&response(query, code))
}

fn encode(message: &Message) -> Vec<u8> {
    // A header, at most one question and one A record always encode; if hickory ever refused,
    // a bare header with the id still tells the client something went wrong.
    message.to_vec().unwrap_or_else(|_| {
        let mut bytes = vec![0u8; HEADER_LEN];
        bytes[..2].copy_from_slice(&message.metadata.id.to_be_bytes());
        bytes[2] = 0x80;
        bytes[3] = 0x82;
        bytes
    })
}

#[cfg(test)]
mod tests;
