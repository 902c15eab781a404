//! What the guest agent told us about the guest, read leniently from its answers (pure): a
//! field an agent version lacks is left out, never an error, and nothing the guest sends is
//! trusted beyond its type.

use serde::Serialize;
use serde_json::Value;

/// The guest as its agent describes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct GuestFacts {
    /// `guest-info`'s version of qemu-ga.
    pub agent_version: Option<String>,
    pub os: Option<Os>,
    pub hostname: Option<String>,
    pub interfaces: Vec<Interface>,
    pub filesystems: Vec<Filesystem>,
    pub users: Vec<User>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct Os {
    /// `NAME` of os-release, e.g. `Debian GNU/Linux`.
    pub name: Option<String>,
    pub id: Option<String>,
    pub version: Option<String>,
    pub pretty_name: Option<String>,
    pub kernel: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Interface {
    pub name: String,
    pub mac: Option<String>,
    /// `address/prefix`, IPv4 and IPv6.
    pub addresses: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Filesystem {
    pub mountpoint: String,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub used_bytes: Option<u64>,
    pub total_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct User {
    pub name: String,
    pub domain: Option<String>,
    /// Seconds since the epoch, as the agent reports it.
    pub login_time: Option<f64>,
}

fn text(value: &Value, key: &str) -> Option<String> {
    value.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn list(value: &Value) -> &[Value] {
    value.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// `guest-info`.
pub(crate) fn agent_version(info: &Value) -> Option<String> {
    text(info, "version")
}

/// `guest-get-osinfo`.
pub(crate) fn os(info: &Value) -> Os {
    Os {
        name: text(info, "name"),
        id: text(info, "id"),
        version: text(info, "version-id").or_else(|| text(info, "version")),
        pretty_name: text(info, "pretty-name"),
        kernel: text(info, "kernel-release"),
    }
}

/// `guest-get-host-name`.
pub(crate) fn hostname(answer: &Value) -> Option<String> {
    text(answer, "host-name")
}

/// `guest-network-get-interfaces`.
pub(crate) fn interfaces(answer: &Value) -> Vec<Interface> {
    list(answer)
        .iter()
        .filter_map(|interface| {
            Some(Interface {
                name: text(interface, "name")?,
                mac: text(interface, "hardware-address"),
                addresses: list(interface.get("ip-addresses").unwrap_or(&Value::Null))
                    .iter()
                    .filter_map(|address| {
                        let ip = text(address, "ip-address")?;
                        Some(match address.get("prefix").and_then(Value::as_u64) {
                            Some(prefix) => format!("{ip}/{prefix}"),
                            None => ip,
                        })
                    })
                    .collect(),
            })
        })
        .collect()
}

/// `guest-get-fsinfo`.
pub(crate) fn filesystems(answer: &Value) -> Vec<Filesystem> {
    list(answer)
        .iter()
        .filter_map(|fs| {
            Some(Filesystem {
                mountpoint: text(fs, "mountpoint")?,
                kind: text(fs, "type"),
                used_bytes: fs.get("used-bytes").and_then(Value::as_u64),
                total_bytes: fs.get("total-bytes").and_then(Value::as_u64),
            })
        })
        .collect()
}

/// `guest-get-users`.
pub(crate) fn users(answer: &Value) -> Vec<User> {
    list(answer)
        .iter()
        .filter_map(|user| {
            Some(User {
                name: text(user, "user")?,
                domain: text(user, "domain"),
                login_time: user.get("login-time").and_then(Value::as_f64),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn answers_of_qemu_ga_7_2_are_read() {
        let os = os(&json!({
            "id": "debian", "name": "Debian GNU/Linux", "pretty-name": "Debian GNU/Linux 12 (bookworm)",
            "version": "12 (bookworm)", "version-id": "12", "kernel-release": "6.1.0-57-amd64",
            "kernel-version": "#1 SMP", "machine": "x86_64"
        }));
        assert_eq!(os.name.as_deref(), Some("Debian GNU/Linux"));
        assert_eq!(os.version.as_deref(), Some("12"));
        assert_eq!(os.kernel.as_deref(), Some("6.1.0-57-amd64"));
        let interfaces = interfaces(&json!([
            {"name": "lo", "hardware-address": "00:00:00:00:00:00",
             "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": "127.0.0.1", "prefix": 8}]},
            {"name": "eth0", "hardware-address": "52:54:00:12:34:56",
             "ip-addresses": [
                {"ip-address-type": "ipv4", "ip-address": "192.168.254.2", "prefix": 30},
                {"ip-address-type": "ipv6", "ip-address": "fe80::1", "prefix": 64}]}
        ]));
        assert_eq!(interfaces[1].name, "eth0");
        assert_eq!(interfaces[1].addresses, ["192.168.254.2/30", "fe80::1/64"]);
        let filesystems = filesystems(&json!([
            {"name": "vda", "mountpoint": "/", "type": "ext4", "used-bytes": 1024, "total-bytes": 4096, "disk": []}
        ]));
        assert_eq!(filesystems[0].mountpoint, "/");
        assert_eq!(filesystems[0].used_bytes, Some(1024));
        let users = users(&json!([{"user": "debian", "login-time": 1700000000.5}]));
        assert_eq!(users[0].name, "debian");
        assert_eq!(
            hostname(&json!({"host-name": "vm-0"})).as_deref(),
            Some("vm-0")
        );
        assert_eq!(
            agent_version(&json!({"version": "7.2.0", "supported_commands": []})).as_deref(),
            Some("7.2.0")
        );
    }

    #[test]
    fn odd_answers_give_what_is_there_and_never_fail() {
        assert_eq!(interfaces(&json!({"not": "a list"})), []);
        assert_eq!(
            interfaces(&json!([{"no-name": 1}, {"name": "eth0"}]))[0]
                .addresses
                .len(),
            0
        );
        assert_eq!(filesystems(&json!([{"mountpoint": 3}])), []);
        assert_eq!(users(&json!(null)), []);
        assert_eq!(os(&json!("x")), Os::default());
    }
}
