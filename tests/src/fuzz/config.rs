//! Configuration files: each parser takes text and must answer with a value or an error that
//! names what is wrong, never a panic.

use std::path::Path;

use broker::access::AccessConfig;
use gateway::file::GatewayFile;
use hub::config::HubFile;
use simulators::scenario::Scenario;

/// `gateway.toml`: parsed and validated (relative paths resolve under a base that is not used).
pub fn gateway_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz/gateway.toml");
    if let Err(err) = GatewayFile::parse(text, path, Path::new("fuzz")) {
        assert!(err.to_string().contains("gateway.toml"), "{err}");
    }
}

/// `hub.toml`: parsed, then validated into the runtime configuration. The keys that name other
/// files or environment variables are cleared: their readers are not what is fuzzed here, and
/// the fuzzer must not wander the file system.
pub fn hub_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz/hub.toml");
    match HubFile::parse(path, text) {
        Ok(mut file) => {
            file.hub.catalogue_dir = None;
            file.broker.access_file = None;
            file.broker.password_env = None;
            if let Err(err) = file.into_config(path) {
                assert!(err.to_string().contains("hub.toml"), "{err}");
            }
        }
        Err(err) => assert!(err.to_string().contains("hub.toml"), "{err}"),
    }
}

/// The broker's access file, and the Mosquitto ACL generated from it: whatever the names and
/// labs, the ACL holds exactly one `user` block per user and no line a name could have smuggled
/// in (an ACL line is a grant).
pub fn access_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match AccessConfig::parse(text) {
        Ok(access) => {
            let acl = broker::access::mosquitto::mosquitto_acl(&access);
            let mut user_lines = 0;
            for line in acl.lines() {
                if let Some(name) = line.strip_prefix("user ") {
                    assert!(
                        access.user(name).is_some(),
                        "ACL names a known user: {line:?}"
                    );
                    user_lines += 1;
                } else if let Some(filter) = line
                    .strip_prefix("topic write ")
                    .or_else(|| line.strip_prefix("topic read "))
                {
                    assert!(
                        !filter.is_empty() && !filter.contains(char::is_whitespace),
                        "{line:?}"
                    );
                } else {
                    assert!(
                        line.is_empty() || line.starts_with('#'),
                        "stray ACL line {line:?}"
                    );
                }
            }
            assert_eq!(user_lines, access.users().count());
            for user in access.users() {
                let _ = (
                    user.may_publish("spBv1.0/a/NDATA/b"),
                    user.may_subscribe("#"),
                );
            }
        }
        Err(err) => assert!(!err.to_string().is_empty()),
    }
}

/// Simulator scenario files.
pub fn scenario_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(err) = Scenario::parse(text, "fuzz-scenario") {
        assert!(err.to_string().contains("fuzz-scenario"), "{err}");
    }
}
