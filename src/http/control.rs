//! `POST /freeze` and `POST /thaw`: a freeze is an outage, so nobody on the pod network may
//! trigger one. Admitted: a request from the pod's loopback (`kubectl port-forward`, a sidecar,
//! `kubectl exec … curl localhost`) that no browser made (no `Origin` header: a web page open
//! in the operator's browser cannot post through the port-forward), or any request with
//! `Authorization: Bearer TOKEN` matching `CONTROL_TOKEN_FILE` (compared in constant time).
//! Everything else is 403.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, Extensions, HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{json_response, AppState};
use crate::qemu::agent::control::{act, answer, Action};

/// Whether a request may freeze or thaw (pure).
pub(crate) fn admits(peer: Option<SocketAddr>, headers: &HeaderMap, token: Option<&str>) -> bool {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let (Some(given), Some(token)) = (bearer, token) {
        return same_secret(given.trim(), token);
    }
    peer.is_some_and(|p| p.ip().to_canonical().is_loopback())
        && !headers.contains_key(header::ORIGIN)
}

/// Compares the digests, every byte: the time taken says nothing about the token.
fn same_secret(given: &str, token: &str) -> bool {
    let (a, b) = (
        Sha256::digest(given.as_bytes()),
        Sha256::digest(token.as_bytes()),
    );
    a.iter()
        .zip(b.iter())
        .fold(0u8, |diff, (x, y)| diff | (x ^ y))
        == 0
}

async fn control(
    state: &AppState,
    extensions: &Extensions,
    headers: &HeaderMap,
    action: Action,
) -> Response {
    let peer = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| *peer);
    if !admits(peer, headers, state.control_token.as_deref()) {
        tracing::warn!(
            ?peer,
            ?action,
            "freeze/thaw refused: not from the pod's loopback and no valid token"
        );
        return json_response(
            StatusCode::FORBIDDEN,
            &json!({ "error": "freeze and thaw answer only on the pod's loopback (kubectl port-forward or exec) or with the CONTROL_TOKEN_FILE token" }),
        );
    }
    let Some(link) = state.status.guest() else {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "error": "the VM is not running" }),
        );
    };
    let result = act(&link.guest.freezer, action).await;
    let code = if result.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::BAD_GATEWAY
    };
    json_response(code, &answer(&result))
}

pub(crate) async fn freeze(
    State(state): State<AppState>,
    extensions: Extensions,
    headers: HeaderMap,
) -> Response {
    control(&state, &extensions, &headers, Action::Freeze).await
}

// --- issue 22: POST /backup ---
/// `POST /backup[?mode=full|incremental|auto][&to=/abs/dir]`: the same admission as a
/// freeze (a backup freezes the guest). The copy outlives any HTTP deadline, so this starts it
/// in PID 1 and answers 202; its end is in the log and the `kvm_manager_backup_*` metrics.
pub(crate) async fn backup(
    State(state): State<AppState>,
    extensions: Extensions,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let peer = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| *peer);
    if !admits(peer, &headers, state.control_token.as_deref()) {
        tracing::warn!(
            ?peer,
            "backup refused: not from the pod's loopback and no valid token"
        );
        return json_response(
            StatusCode::FORBIDDEN,
            &json!({ "error": "backups start only from the pod's loopback (kubectl port-forward or exec) or with the CONTROL_TOKEN_FILE token" }),
        );
    }
    let Some(backups) = state.status.backups() else {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "error": "the VM is not running" }),
        );
    };
    let Some((dir, want)) =
        backup_request(uri.query().unwrap_or(""), backups.default_dir.as_deref())
    else {
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({ "error": "give ?mode=full|incremental|auto and, without BACKUP_DIR, &to=/absolute/dir" }),
        );
    };
    if backups.busy() {
        return json_response(
            StatusCode::CONFLICT,
            &json!({ "error": "a backup is already running" }),
        );
    }
    let mode = crate::backup::socket::mode_word(want);
    let answer = json!({ "started": true, "to": dir, "mode": mode });
    tokio::spawn(async move {
        // The outcome is logged and counted by the job itself.
        let _ = backups.run(&dir, want, None, std::future::pending()).await;
    });
    json_response(StatusCode::ACCEPTED, &answer)
}

/// The directory and the kind of a `POST /backup` (pure).
fn backup_request(
    query: &str,
    default_dir: Option<&std::path::Path>,
) -> Option<(std::path::PathBuf, crate::backup::plan::Want)> {
    use crate::backup::plan::Want;
    let mut want = Want::Auto { full_every: None };
    let mut dir = default_dir.map(std::path::Path::to_path_buf);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=')? {
            ("mode", "full") => want = Want::Full,
            ("mode", "incremental") => want = Want::Incremental,
            ("mode", "auto") => want = Want::Auto { full_every: None },
            ("to", path) if path.starts_with('/') => dir = Some(path.into()),
            _ => return None,
        }
    }
    dir.map(|dir| (dir, want))
}
// --- end issue 22 ---

pub(crate) async fn thaw(
    State(state): State<AppState>,
    extensions: Extensions,
    headers: HeaderMap,
) -> Response {
    control(&state, &extensions, &headers, Action::Thaw).await
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(header::HeaderName, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(name.clone(), HeaderValue::from_static(value));
        }
        map
    }

    const TOKEN: &str = "0123456789abcdef0123";

    #[test]
    fn loopback_without_a_browser_is_admitted_the_pod_network_is_not() {
        let local: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:5000".parse().expect("addr");
        let pod: SocketAddr = "10.0.0.7:5000".parse().expect("addr");
        assert!(admits(Some(local), &headers(&[]), None));
        assert!(admits(Some(mapped), &headers(&[]), Some(TOKEN)));
        assert!(!admits(Some(pod), &headers(&[]), None));
        assert!(!admits(Some(pod), &headers(&[]), Some(TOKEN)));
        assert!(!admits(None, &headers(&[]), None));
        // A web page posting through the operator's port-forward.
        assert!(!admits(
            Some(local),
            &headers(&[(header::ORIGIN, "http://evil.example")]),
            None
        ));
    }

    #[test]
    fn a_backup_request_names_its_kind_and_an_absolute_directory() {
        use crate::backup::plan::Want;
        let default = std::path::Path::new("/backup");
        let auto = Want::Auto { full_every: None };
        assert_eq!(
            backup_request("", Some(default)),
            Some((default.to_path_buf(), auto))
        );
        assert_eq!(
            backup_request("mode=full&to=/other", Some(default)),
            Some(("/other".into(), Want::Full))
        );
        assert_eq!(backup_request("mode=incremental", None), None);
        assert_eq!(backup_request("to=relative", Some(default)), None);
        assert_eq!(backup_request("mode=sideways", Some(default)), None);
    }

    #[test]
    fn the_token_admits_from_anywhere_and_a_wrong_one_nowhere() {
        let pod: SocketAddr = "10.0.0.7:5000".parse().expect("addr");
        let good = headers(&[(header::AUTHORIZATION, "Bearer 0123456789abcdef0123")]);
        let bad = headers(&[(header::AUTHORIZATION, "Bearer 0123456789abcdef0124")]);
        assert!(admits(Some(pod), &good, Some(TOKEN)));
        assert!(!admits(Some(pod), &bad, Some(TOKEN)));
        // Without a configured token, a bearer header is no key.
        assert!(!admits(Some(pod), &good, None));
        let local: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        assert!(
            !admits(Some(local), &bad, Some(TOKEN)),
            "a wrong token is refused even on loopback"
        );
    }
}
